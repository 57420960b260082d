"""Text generation with the native runtime: samplers and a streaming loop.

Sampling order (as llama.cpp's default chain): repetition penalty on the last
``repeat_last_n`` tokens → top-k → top-p → temperature; temperature 0 is greedy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .runtime import ContextParams, Model


@dataclass(frozen=True)
class SamplerParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    seed: int | None = None


def sample(logits: np.ndarray, params: SamplerParams, history: list[int], rng: np.random.Generator) -> int:
    """One token id from logits (vocab,)."""
    x = logits.astype(np.float64, copy=True)
    if params.repeat_penalty != 1.0 and history:
        recent = np.unique(np.asarray(history[-params.repeat_last_n:]))
        vals = x[recent]
        x[recent] = np.where(vals > 0, vals / params.repeat_penalty, vals * params.repeat_penalty)
    if params.temperature <= 0:
        return int(np.argmax(x))
    if 0 < params.top_k < x.size:
        keep = np.argpartition(-x, params.top_k - 1)[: params.top_k]
    else:
        keep = np.arange(x.size)
    order = keep[np.argsort(-x[keep], kind="stable")]
    z = x[order] / params.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if params.top_p < 1.0:
        cut = int(np.searchsorted(np.cumsum(p), params.top_p) + 1)
        order, p = order[:cut], p[:cut] / p[:cut].sum()
    return int(order[rng.choice(p.size, p=p)])


def generate_tokens(model: Model, prompt: list[int], max_tokens: int, sampler: SamplerParams = SamplerParams(),
                    ctx_params: ContextParams | None = None, stop_at_eos: bool = True) -> Iterator[int]:
    """Yield generated token ids one by one."""
    n_ctx = (ctx_params or ContextParams()).n_ctx
    ctx = model.context(ctx_params or ContextParams(n_ctx=min(n_ctx, len(prompt) + max_tokens)))
    rng = np.random.default_rng(sampler.seed)
    spec = model.source.tokenizer_spec()
    stops = {t for t in (spec.eos_id, spec.eot_id) if t is not None}
    history = list(prompt)
    logits = ctx.eval(prompt)
    for _ in range(max_tokens):
        tok = sample(logits, sampler, history, rng)
        if stop_at_eos and tok in stops:
            return
        yield tok
        history.append(tok)
        if ctx.n_past >= ctx.params.n_ctx:
            return
        logits = ctx.eval([tok])


def generate(model: Model, prompt: str, max_tokens: int = 128, sampler: SamplerParams = SamplerParams(),
             ctx_params: ContextParams | None = None) -> Iterator[str]:
    """Yield text pieces as they are generated (whole UTF-8 characters only)."""
    ids: list[int] = []
    shown = ""
    for tok in generate_tokens(model, model.tokenize(prompt), max_tokens, sampler, ctx_params):
        ids.append(tok)
        text = model.detokenize(ids)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            continue
        yield text[len(shown):]
        shown = text
