"""Perplexity, KL divergence and top-1 agreement of a model and cache config
on a text, the way llama.cpp's perplexity tool computes them (see metrics.py).

``save_logits`` writes the scored positions' log-probabilities to a versioned
file; a later run with ``kld_base`` pointing at it reports KLD and top-1
agreement against that base (typically the f16-cache run of the same model).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import metrics
from ..base.atomic import atomic_path, refuse_overwrite
from ..base.errors import InputError
from ..base.progress import ProgressFn, check_cancel
from ..kvcache.kvmeta import recent_bits
from ..kvcache.types import TQ
from .engine import ContextParams, Model, check_logits

LOGITS_MAGIC = b"KVCLOGP1"  # version 1: JSON header, then float16 log-probs (positions, vocab)


@dataclass
class EvalResult:
    model: str
    text: str
    text_sha256: str
    n_ctx: int
    n_chunks: int
    n_scored: int
    type_k: str
    type_v: str
    ppl: float
    ppl_err: float
    kld: float | None = None
    kld_err: float | None = None
    top1: float | None = None
    kv_bytes_per_token: int = 0
    # recent exact window of the TurboQuant caches (ContextParams.n_recent) and the bits per value
    # it adds to each TurboQuant cache at this n_ctx: its n_recent f16 rows spread over n_ctx tokens
    n_recent: int = 0
    recent_bpv: float = 0.0
    float_products: bool = False  # the weight products ran with unrounded activations
    quantized_weights: bool = False  # the model's products round activations unless float_products

    def to_dict(self) -> dict:
        return asdict(self)


def _base_header(f, header: dict) -> None:
    """The base-logits file's header: magic, JSON length and JSON, padded to 64 bytes (the
    (positions, vocab) float16 log-probs follow, written chunk by chunk as they are computed)."""
    blob = json.dumps(header).encode()
    f.write(LOGITS_MAGIC + struct.pack("<Q", len(blob)) + blob)
    f.write(b"\0" * (-f.tell() % 64))


def read_base(path: Path) -> tuple[dict, np.ndarray]:
    """Header and a memory map of the (positions, vocab) float16 log-probs."""
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
            if magic != LOGITS_MAGIC:
                raise InputError(f"{path}: not a kvconvert base-logits file (make one with --save-logits)")
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        offset = 16 + n + (-(16 + n) % 64)
        shape = (header["n_positions"], header["n_vocab"])
        data = np.memmap(path, dtype=np.float16, mode="r", offset=offset, shape=shape)
    except (OSError, ValueError, KeyError, struct.error) as e:
        raise InputError(f"{path}: unreadable or truncated base-logits file ({e}); recreate it with --save-logits") from None
    return header, data


def evaluate(model: str | os.PathLike | Model, text: str, *, text_name: str = "text", n_ctx: int = 512,
             n_chunks: int | None = None, type_k: str = "auto", type_v: str = "auto", n_threads: int = 0,
             n_sink: int | None = None, n_recent: int | None = None, float_products: bool = False,
             save_logits: str | os.PathLike | None = None, kld_base: str | os.PathLike | None = None,
             token_ids=None, progress: ProgressFn | None = None,
             cancel: threading.Event | None = None) -> EvalResult:
    """PPL (and KLD/top-1 against ``kld_base``) of ``model`` on ``text`` in chunks of n_ctx tokens.

    token_ids: evaluate these token ids (without BOS) instead of tokenizing ``text``; ``text``
    then only names and identifies them (its hash goes into saved logits). float_products: the
    weight products with unrounded activations (ContextParams.float_products; CPU only)."""
    m = model if isinstance(model, Model) else Model(model)
    refuse_overwrite(save_logits, [m.path, None if isinstance(model, Model) else model, kld_base],
                     what="--save-logits path")
    tokens = m.tokenize(text, add_bos=False) if token_ids is None else [int(t) for t in token_ids]
    spec = m.source.tokenizer_spec()
    bos = spec.bos_id if spec.effective_add_bos() else None
    try:
        chunks = metrics.chunks(tokens, n_ctx, n_chunks, bos=bos)
    except ValueError as e:
        raise InputError(f"{text_name}: {e}") from None
    text_hash = hashlib.sha256(text.encode() if token_ids is None else np.asarray(tokens, np.int64).tobytes()).hexdigest()
    base_header, base = (None, None)
    if kld_base is not None:
        base_header, base = read_base(Path(kld_base))
        want = {"n_ctx": n_ctx, "n_chunks": len(chunks), "text_sha256": text_hash, "n_vocab": m.args.vocab_size}
        bad = [k for k, v in want.items() if base_header.get(k) != v]
        if bad:
            raise InputError(f"{kld_base}: made with other settings ({', '.join(bad)} differ); "
                             "use the same text, --ctx and --chunks")
    ctx = m.context(ContextParams(n_ctx=n_ctx, n_batch=min(n_ctx, 512), type_k=type_k, type_v=type_v,
                                  n_threads=n_threads, n_sink=n_sink, n_recent=n_recent,
                                  float_products=float_products))
    nll, klds, top1 = [], [], []
    first = metrics.first_scored(n_ctx)
    with contextlib.ExitStack() as stack:
        out = None  # the base being saved: streamed, so memory stays one chunk's log-probs
        if save_logits is not None:
            out = open(stack.enter_context(atomic_path(Path(save_logits))), "wb")
            stack.enter_context(out)
            _base_header(out, {"n_ctx": n_ctx, "n_chunks": len(chunks), "text_sha256": text_hash,
                               "n_vocab": m.args.vocab_size, "n_positions": sum(len(c) - first - 1 for c in chunks),
                               "model": str(m.path), "type_k": ctx.params.type_k, "type_v": ctx.params.type_v,
                               "float_products": float_products})
        _score_chunks(ctx, chunks, first, text_name, nll, klds, top1, out, base, kld_base, progress, cancel)
        s = metrics.score(np.concatenate(nll))
        if not s.mean_nll < 709.0 or math.isinf(s.ppl_err):  # exp() would overflow (NaN fails the test too)
            raise InputError(f"{m.path}: perplexity on {text_name} overflows (mean negative log-likelihood "
                             f"{s.mean_nll:.1f}); the model's weights are likely corrupt or do not match its "
                             "tokenizer")  # (inside: a base being saved is removed, not kept)
    result = EvalResult(str(m.path), text_name, text_hash, n_ctx, len(chunks), s.n, ctx.params.type_k, ctx.params.type_v, s.ppl,
                        s.ppl_err, kv_bytes_per_token=ctx.kv_bytes_per_token, float_products=float_products,
                        quantized_weights=m.quantized_weights)
    if TQ in (ctx.params.type_k.kind, ctx.params.type_v.kind):
        result.n_recent = ctx.params.n_recent or 0
        result.recent_bpv = recent_bits(result.n_recent, n_ctx)
    if klds:
        k = metrics.score(np.concatenate(klds))
        result.kld, result.kld_err = k.mean_nll, k.stderr_nll
        result.top1 = float(np.concatenate(top1).mean())
    return result


def _score_chunks(ctx, chunks, first: int, text_name: str, nll: list, klds: list, top1: list, out, base, kld_base,
                  progress: ProgressFn | None, cancel: threading.Event | None) -> None:
    """Evaluate each chunk: its NLL into nll; its scored positions' log-probs as float16 onto the open
    base file ``out`` (if any); KLD and top-1 against ``base`` (a read_base map, if any)."""
    pos = 0
    for i, chunk in enumerate(chunks):
        check_cancel(cancel)
        ctx.reset()
        logits = check_logits(ctx.eval(chunk, all_logits=True), ctx, f"in chunk {i + 1} of {text_name}")
        nll.append(metrics.chunk_nll(logits, chunk))
        if out is not None or base is not None:
            lp = metrics.log_probs(logits[first:-1])
            if out is not None:
                out.write(lp.astype(np.float16).tobytes())
            if base is not None:
                b = np.asarray(base[pos:pos + lp.shape[0]], dtype=np.float64)
                if not np.isfinite(b.sum()):
                    raise InputError(f"{kld_base}: holds NaN or infinite log-probs (damaged?); recreate it with "
                                     "--save-logits")
                klds.append(metrics.kld(b, logits[first:-1]))
                top1.append(b.argmax(-1) == lp.argmax(-1))
                pos += lp.shape[0]
        if progress:
            progress(i + 1, len(chunks), f"chunk {i + 1}/{len(chunks)}")
