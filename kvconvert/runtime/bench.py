"""Speed of the native runtime: prefill tokens/s, decode tokens/s at several
context depths, KV bytes per token and peak memory.

Decode at depth d: the cache is filled with d tokens (prefill, untimed), then
``n_decode`` single-token evaluations are timed; depths are visited in
increasing order on one context: the decoded tokens are the stream's next
tokens, so they stay and the next fill carries on after them (a 4k/8k/16k run
prefills 16k tokens, not 28k). Nothing is rewound but to 0 — a recent window
or a sliding-window layer can go back only a few positions. Tokens are random ids (speed
does not depend on them), drawn from a fixed seed. ``timed_depths`` takes any engine as two
callables, so bench/peer.py and bench/long_context.py time llama.cpp with the same loop.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from ..base.progress import ProgressFn, check_cancel
from .engine import ContextParams, Model


@dataclass
class DecodeRow:
    depth: int
    tokens_per_s: float
    fill_tokens_per_s: float = 0.0  # prefill (512-token batches) from the previous depth to this one; 0: none


@dataclass
class BenchResult:
    model: str
    n_threads: int
    type_k: str
    type_v: str
    kv_bytes_per_token: int
    prefill_tokens: int
    prefill_tokens_per_s: float
    decode: list[DecodeRow] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    n_ctx: int = 0
    kv_bytes: int = 0  # the KV cache of the n_ctx context: sliding-window layers hold only about their window
    backend: str = "cpu"  # what ran it (Context.backend)

    def to_dict(self) -> dict:
        return asdict(self)


FILL_CHUNK = 512


def timed_depths(eval_tokens: Callable[[list[int]], object], truncate: Callable[[int], object], tokens: list[int],
                 depths: Iterable[int], n_prefill: int, n_decode: int, progress: ProgressFn | None = None,
                 cancel: threading.Event | None = None) -> tuple[float, list[DecodeRow]]:
    """Prefill tok/s from an empty context and decode tok/s at each depth of any engine given as
    callables: ``eval_tokens(ids)`` appends to its context, ``truncate(n)`` keeps its first n
    positions. ``tokens`` (at least max(depths) + n_decode, and n_prefill + 16) is the token
    stream; depths are visited in increasing order on one fill (see the module docstring), so
    two engines given the same stream do the same work."""
    # (depth, first token to fill from): the decoded tokens are tokens[d:d + n_decode] of the stream,
    # so they stay and the next fill carries on after them; depths closer than n_decode start from empty
    plan, at = [], 0
    for d in sorted(depths):
        plan.append((d, at if d >= at else 0))
        at = d + n_decode
    total, done = n_prefill + sum(d - a for d, a in plan) + n_decode * len(plan), 0

    def advance(n: int, what: str) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total, what)

    eval_tokens(tokens[:16])  # warm up: page in the weights, start the threads
    truncate(0)
    t0 = time.perf_counter()
    eval_tokens(tokens[16:16 + n_prefill])
    prefill = n_prefill / (time.perf_counter() - t0)
    advance(n_prefill, "prefill")
    rows = []
    for d, filled in plan:
        if filled == 0:
            truncate(0)
        t0, fill = time.perf_counter(), 0.0
        for i in range(filled, d, FILL_CHUNK):  # chunks keep the progress bar moving
            check_cancel(cancel)
            eval_tokens(tokens[i:min(i + FILL_CHUNK, d)])
            advance(min(i + FILL_CHUNK, d) - i, f"fill to {d}")
        if d > filled:
            fill = (d - filled) / (time.perf_counter() - t0)
        check_cancel(cancel)
        t0 = time.perf_counter()
        for t in tokens[d:d + n_decode]:
            eval_tokens([t])
        rows.append(DecodeRow(d, n_decode / (time.perf_counter() - t0), fill))
        advance(n_decode, f"decode @ {d}")
    return prefill, rows


def random_tokens(vocab_size: int, n: int) -> list[int]:
    """A fixed stream of random ids (speed does not depend on them)."""
    return [int(t) for t in np.random.default_rng(0).integers(0, min(vocab_size, 32000), n)]


def bench(model: str | os.PathLike | Model, *, depths: tuple[int, ...] = (0, 512, 4096), n_prefill: int = 512,
          n_decode: int = 32, type_k: str = "auto", type_v: str = "auto", n_threads: int = 0,
          n_sink: int | None = None, n_recent: int | None = None, progress: ProgressFn | None = None,
          cancel: threading.Event | None = None) -> BenchResult:
    m = model if isinstance(model, Model) else Model(model)
    params = ContextParams(n_ctx=max(max(depths) + n_decode, n_prefill + 16), n_batch=512, type_k=type_k,
                           type_v=type_v, n_threads=n_threads, n_sink=n_sink, n_recent=n_recent)
    ctx = m.context(params)
    tokens = random_tokens(m.args.vocab_size, max(max(depths) + n_decode, n_prefill + 16))
    prefill, rows = timed_depths(ctx.eval, ctx.reset, tokens, depths, n_prefill, n_decode, progress, cancel)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchResult(str(m.path), params.resolved_threads(), ctx.params.type_k, ctx.params.type_v,
                       ctx.kv_bytes_per_token, n_prefill, prefill, rows, rss, params.n_ctx, ctx.kv_bytes,
                       ctx.backend)
