"""Text generation with the native runtime: samplers, a streaming loop, and
batched generation of several independent sequences.

Sampling order (as llama.cpp's default chain): repetition penalty on the last
``repeat_last_n`` tokens → top-k → top-p → temperature; temperature 0 is greedy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .engine import Context, ContextParams, Model, check_logits, eval_multi


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


def _stop_ids(model: Model) -> set[int]:
    spec = model.source.tokenizer_spec()
    return {t for t in (spec.eos_id, spec.eot_id) if t is not None}


def generate_tokens(model: Model, prompt: list[int], max_tokens: int, sampler: SamplerParams = SamplerParams(),
                    ctx_params: ContextParams | None = None, stop_at_eos: bool = True) -> Iterator[int]:
    """Yield generated token ids one by one."""
    n_ctx = (ctx_params or ContextParams()).n_ctx
    ctx = model.context(ctx_params or ContextParams(n_ctx=min(n_ctx, len(prompt) + max_tokens)))
    rng = np.random.default_rng(sampler.seed)
    stops = _stop_ids(model)
    history = list(prompt)
    logits = check_logits(ctx.eval(prompt), ctx, "for the prompt")
    for _ in range(max_tokens):
        tok = sample(logits, sampler, history, rng)
        if stop_at_eos and tok in stops:
            return
        yield tok
        history.append(tok)
        if ctx.n_past >= ctx.params.n_ctx:
            return
        logits = check_logits(ctx.eval([tok]), ctx, f"at position {ctx.n_past}")


@dataclass
class _Running:
    ctx: Context
    sampler: SamplerParams
    rng: np.random.Generator
    history: list[int]
    logits: np.ndarray  # (vocab,) for the next token
    limit: int
    made: int = 0


class BatchDecoder:
    """Independent sequences decoding together (continuous batching).

    ``add`` prefills a prompt in a context of its own; ``step`` samples one token for
    every running sequence and evaluates them all as one ``runtime.eval_multi`` batch (in
    groups of at most the lead context's n_batch), so the weights are read once per step
    for all of them. Each sequence has its own sampler (seed, hence random stream) and
    history, and stops at EOS (``stop_at_eos``; the EOS token is not returned), after its
    max_new_tokens, or when its context is full. Stopped sequences drop out of the batch
    and new ones may be added between steps. A sequence gets what ``generate_tokens``
    gives it alone with the same sampler and context parameters, since the batched
    products round like the single-token ones (the kernels' GEMM equals their matvec bit
    for bit; tests/test_batch_decode.py)."""

    def __init__(self, model: Model, ctx_params: ContextParams | None = None, stop_at_eos: bool = True):
        self.model, self.ctx_params = model, ctx_params
        self._stops = _stop_ids(model) if stop_at_eos else set()
        self._running: dict[int, _Running] = {}
        self._done: list[int] = []  # finished before their first step (max_new_tokens <= 0)
        self._next_id = 0

    @property
    def n_running(self) -> int:
        return len(self._running)

    def add(self, prompt: list[int], max_new_tokens: int, sampler: SamplerParams = SamplerParams()) -> int:
        """Prefill a new sequence; returns its id (0, 1, ... in order of adding). Contexts
        get ``ctx_params``, else n_ctx = prompt + max_new_tokens and n_batch 64."""
        if len(prompt) == 0:
            raise ValueError("a prompt needs at least one token")
        sid, self._next_id = self._next_id, self._next_id + 1
        if max_new_tokens <= 0:
            self._done.append(sid)
            return sid
        params = self.ctx_params or ContextParams(n_ctx=min(ContextParams.n_ctx, len(prompt) + max_new_tokens),
                                                  n_batch=max(len(prompt), 64))
        ctx = self.model.context(params)
        logits = check_logits(ctx.eval(prompt), ctx, "for a prompt")
        self._running[sid] = _Running(ctx, sampler, np.random.default_rng(sampler.seed), list(prompt), logits,
                                      max_new_tokens)
        return sid

    def step(self) -> tuple[list[tuple[int, int]], list[int]]:
        """One token for every running sequence: ([(id, token)], ids that finished)."""
        out: list[tuple[int, int]] = []
        finished, self._done = self._done, []
        go: list[tuple[_Running, int]] = []  # sequences still running after this token
        for sid, s in self._running.items():
            tok = sample(s.logits, s.sampler, s.history, s.rng)
            if tok in self._stops:
                finished.append(sid)
                continue
            out.append((sid, tok))
            s.history.append(tok)
            s.made += 1
            if s.made < s.limit and s.ctx.n_past < s.ctx.params.n_ctx:
                go.append((s, tok))
            else:
                finished.append(sid)
        for sid in finished:
            self._running.pop(sid, None)  # frees the context
        j = 0
        while j < len(go):
            lead = go[j][0].ctx.params
            group = go[j:j + max(1, min(lead.n_batch, lead.n_ctx))]
            for (s, _), row in zip(group, eval_multi([s.ctx for s, _ in group], [t for _, t in group])):
                s.logits = check_logits(row, s.ctx, f"at position {s.ctx.n_past}")
            j += len(group)
        return out, finished


def generate_batch(model: Model, prompts: Sequence[list[int]], max_new_tokens: int | Sequence[int],
                   samplers: SamplerParams | Sequence[SamplerParams] = SamplerParams(),
                   ctx_params: ContextParams | None = None, stop_at_eos: bool = True) -> Iterator[tuple[int, int]]:
    """Generate from several prompts at once (a BatchDecoder running all of them);
    yields (prompt index, token id) as tokens are sampled, one step at a time."""
    n = len(prompts)
    limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    samps = [samplers] * n if isinstance(samplers, SamplerParams) else list(samplers)
    if len(limits) != n or len(samps) != n:
        raise ValueError(f"{n} prompts need as many max_new_tokens and samplers "
                         f"(got {len(limits)} and {len(samps)})")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    dec = BatchDecoder(model, ctx_params, stop_at_eos)
    for p, k, s in zip(prompts, limits, samps):
        dec.add(p, k, s)
    while dec.n_running:
        yield from dec.step()[0]


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
