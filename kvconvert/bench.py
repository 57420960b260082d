"""Speed of the native runtime: prefill tokens/s, decode tokens/s at several
context depths, KV bytes per token and peak memory.

Decode at depth d: the cache is filled with d tokens (prefill, untimed), then
``n_decode`` single-token evaluations are timed; depths are visited in
increasing order on one context (the decoded tokens are dropped, the filled
prefix is extended), so a 4k/8k/16k run prefills 16k tokens, not 28k. Tokens are random ids (speed
does not depend on them), drawn from a fixed seed.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .progress import ProgressFn, check_cancel
from .runtime import ContextParams, Model


@dataclass
class DecodeRow:
    depth: int
    tokens_per_s: float


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

    def to_dict(self) -> dict:
        return asdict(self)


def bench(model: str | os.PathLike | Model, *, depths: tuple[int, ...] = (0, 512, 4096), n_prefill: int = 512,
          n_decode: int = 32, type_k: str = "auto", type_v: str = "auto", n_threads: int = 0,
          n_sink: int | None = None, progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> BenchResult:
    m = model if isinstance(model, Model) else Model(model)
    params = ContextParams(n_ctx=max(max(depths) + n_decode, n_prefill), n_batch=512, type_k=type_k, type_v=type_v,
                           n_threads=n_threads, n_sink=n_sink)
    ctx = m.context(params)
    rng = np.random.default_rng(0)
    vocab = min(m.args.vocab_size, 32000)
    steps, done = 1 + len(depths), 0

    ctx.eval(rng.integers(0, vocab, 16))  # warm up: page in the weights, start the threads
    ctx.reset()
    t0 = time.perf_counter()
    ctx.eval(rng.integers(0, vocab, n_prefill))
    prefill = n_prefill / (time.perf_counter() - t0)
    done += 1
    if progress:
        progress(done, steps, "prefill")
    rows = []
    filled = 0  # depths in increasing order share one fill: the decoded tokens are dropped, the prefix kept
    ctx.reset()
    for d in sorted(depths):
        check_cancel(cancel)
        ctx.reset(min(filled, d))
        if d > filled:
            ctx.eval(rng.integers(0, vocab, d - filled))
        filled = d
        toks = rng.integers(0, vocab, n_decode)
        t0 = time.perf_counter()
        for t in toks:
            ctx.eval([int(t)])
        rows.append(DecodeRow(d, n_decode / (time.perf_counter() - t0)))
        done += 1
        if progress:
            progress(done, steps, f"decode @ {d}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchResult(str(m.path), params.resolved_threads(), ctx.params.type_k, ctx.params.type_v,
                       ctx.kv_bytes_per_token, n_prefill,
                       prefill, rows, rss)
