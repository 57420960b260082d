"""How far decode is from the memory-bandwidth limit (issue 21): bytes each decoded
token must read — every weight once (the token embedding: one row, unless the output
shares it) plus the whole KV cache at that depth — times the measured tok/s gives the
achieved GB/s, set against a measured read and copy bandwidth of this machine with the
same number of threads. A benchmark, not a test: run it by hand on a quiet machine.

    python bench/peer.py -t 2 -r 3 --save peer.json     # the decode speeds (both engines)
    python bench/bandwidth.py peer.json [--threads 2]

The speeds come from bench/peer.py's JSON (kvconvert and llama-bench on the same GGUF,
threads and depths), so one quiet run serves both tables. KV bytes per token: kvconvert's
from a context of the same cache types (Context.kv_bytes_per_token: codes, scales, sinks
excluded), llama.cpp's from its block sizes (f16 2 bytes, q8_0 34 and q4_0 18 bytes per
32 values: ggml-common.h's block_q8_0/block_q4_0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvconvert.formats.gguf_io import open_gguf

LLAMA_KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                  "q5_0": 22 / 32, "q5_1": 24 / 32}  # bytes per cached value


@dataclass(frozen=True)
class Bandwidth:
    read: float  # GB/s, bytes read
    copy: float  # GB/s, bytes read + written


def machine_bandwidth(threads: int, mib_per_thread: int = 512, reps: int = 7) -> Bandwidth:
    """Best of reps, each thread on its own buffers, far larger than the caches. Read: the
    runtime's own f32 dot kernel (kvc_vec_dot, SIMD; two FMAs a cycle need more bytes than
    memory gives, so it measures the read bandwidth decode can reach). Copy: memcpy (numpy
    copyto). Both release the GIL, so the threads really run at once."""
    from kvconvert.runtime._native import ffi, lib

    n = (mib_per_thread << 20) // 4 // 2  # two buffers of n floats per thread
    a = [np.ones(n, np.float32) for _ in range(threads)]
    b = [np.ones(n, np.float32) for _ in range(threads)]
    outs = [ffi().new("float *") for _ in range(threads)]

    def dot(i: int) -> None:
        lib().kvc_vec_dot(0, 0, n, ffi().from_buffer(a[i]), ffi().from_buffer(b[i]), outs[i])  # KVC_TYPE_F32, auto

    def best(work, moved: int) -> float:
        out = 0.0
        for _ in range(reps):
            ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            out = max(out, moved * threads * n * 4 / (time.perf_counter() - t0) / 1e9)
        return out

    return Bandwidth(best(dot, 2), best(lambda i: np.copyto(b[i], a[i]), 2))


def weight_bytes_per_token(path: str) -> int:
    """Bytes of weights a decoded token reads: all tensors once, the token embedding as one row
    unless the output layer is the same matrix (tied)."""
    g = open_gguf(path)
    by_name = {t.name: t for t in g.tensors}
    total = sum(t.n_bytes for t in g.tensors)
    emb = by_name.get("token_embd.weight")
    if emb is not None and "output.weight" in by_name:
        rows = int(emb.shape[1])
        total -= emb.n_bytes - emb.n_bytes // rows
    return total


def kv_bytes_per_token(path: str, engine: str, k: str, v: str) -> float:
    from kvconvert.runtime.engine import ContextParams, Model

    m = Model(path)
    if engine == "kvconvert":
        ctx = m.context(ContextParams(n_ctx=64, n_batch=16, type_k=k, type_v=v, n_threads=1))
        return float(ctx.kv_bytes_per_token)
    a = m.args
    per_value = a.num_hidden_layers * a.num_key_value_heads * a.head_dim
    return per_value * (LLAMA_KV_BYTES[k] + LLAMA_KV_BYTES[v])


def asked_types(run: dict) -> tuple[str, str]:
    """The cache types to build a context of: a file's own caches (peer.py's auto, auto@PATH; recorded
    resolved, e.g. tq/tq, whose per-layer configs only the file has) as peer.py asked for them."""
    c = run["cache"]
    if not c.get("own"):
        return c["k"], c["v"]
    spec = run.get("spec") or "auto/auto"
    k, _, v = ("auto/auto" if spec.startswith("auto@") else spec).partition("/")
    return k, v


def table(peer: dict, bw: Bandwidth, threads: int) -> str:
    model = peer["model"]
    w = weight_bytes_per_token(model)
    rows = ["| engine | cache | depth | decode tok/s | MB read / token (weights + KV) | achieved GB/s "
            "| of read bandwidth | of copy bandwidth |", "|---|---|---|---|---|---|---|---|"]
    kv_cache: dict[tuple, float] = {}
    weights = {model: w}
    for run in peer["runs"]:
        c = run["cache"]
        path = run.get("model") or model  # peer.py's auto@PATH runs time another file
        key = (path, run["engine"], *asked_types(run))
        if key not in kv_cache:
            kv_cache[key] = kv_bytes_per_token(*key)
        if path not in weights:
            weights[path] = weight_bytes_per_token(path)
        wt = weights[path]
        label = f"{c['k']}/{c['v']}" + (" FA" if c.get("fa") else "")
        label += f" ({Path(path).stem})" if path != model else ""
        for depth, speed in sorted(run["decode"].items(), key=lambda kv: int(kv[0])):
            d = int(depth)
            per_token = wt + kv_cache[key] * d
            gbs = per_token * speed["mean"] / 1e9
            rows.append(f"| {run['engine']} | {label} | {d} | {speed['mean']:.1f} | {per_token / 1e6:.0f} "
                        f"({wt / 1e6:.0f} + {kv_cache[key] * d / 1e6:.0f}) | {gbs:.1f} | {gbs / bw.read:.0%} "
                        f"| {gbs / bw.copy:.0%} |")
    head = (f"{Path(model).name}, {threads} threads; machine bandwidth with {threads} threads: "
            f"read {bw.read:.1f} GB/s, copy {bw.copy:.1f} GB/s (bytes read + written); "
            f"weights read per token {w / 1e6:.0f} MB")
    return head + "\n\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("peer_json", help="bench/peer.py --save output")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads of the bandwidth test (default: the run's)")
    args = p.parse_args(argv)
    peer = json.loads(Path(args.peer_json).read_text())
    threads = args.threads or int(peer.get("threads") or os.cpu_count() or 1)
    bws = [machine_bandwidth(threads) for _ in range(2)]
    bw = Bandwidth(statistics.fmean(b.read for b in bws), statistics.fmean(b.copy for b in bws))
    print(table(peer, bw, threads))


if __name__ == "__main__":
    main()
