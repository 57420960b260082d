"""Micro-benchmark of the matvec (decode) kernels: GB/s of weights streamed per
type and implementation, single thread, through kvc_gemm with n_tok = 1.

    python bench/kernels.py [--reps 50] [--cold-mb 768] [--types q4_0,q8_0] [--prefill 64]

Shapes are Qwen2.5-0.5B's FFN: 4864 x 896 (gate/up: 4864 rows of 896) for the
32-element block types, and 896 x 4864 (down) for every type (the K-quants
need rows that are a multiple of 256). "hot" repeats one matrix (it mostly sits
in L2/L3); "cold" cycles through copies totalling --cold-mb, more than the
last-level cache, which is what decode sees on a real model. The first line
prints the copy bandwidth numpy reaches (read + write) as a yardstick.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from tests.test_kernels import (  # noqa: E402
    IMPL_NAMES, SCALAR, SIMD, TYPES, gemm as kvc_gemm, random_activations, random_weights,
)


def gemm(t, impl, m, n_tok, k, w, a, out):
    st = kvc_gemm(t, impl, m, n_tok, k, w, a, out, m)
    assert st == 0, st


def time_it(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def copy_bandwidth() -> float:
    src = np.ones(256 << 20, np.uint8)
    dst = np.empty_like(src)
    dt = time_it(lambda: np.copyto(dst, src), 3)
    return 2 * src.nbytes / dt / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--cold-mb", type=int, default=768)
    ap.add_argument("--types", default="", help="comma-separated subset, e.g. q4_0,q4_k")
    ap.add_argument("--prefill", type=int, default=0, help="also time a gemm with this many tokens (GFLOP/s)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    types = [t for t in TYPES if not args.types or t.name.lower() in args.types.lower().split(",")]
    impls = [SCALAR] + SIMD
    print(f"numpy copy bandwidth (read+write): {copy_bandwidth():.1f} GB/s; impls: "
          + ", ".join(IMPL_NAMES[i] for i in impls))
    hdr = f"{'type':6} {'shape':>9} {'MB':>6} " + " ".join(f"{IMPL_NAMES[i] + ' hot':>11} {IMPL_NAMES[i] + ' cold':>11}"
                                                     for i in impls)
    if args.prefill:
        hdr += " " + " ".join(f"{IMPL_NAMES[i] + ' GF/s':>11}" for i in impls)
    print(hdr + "   (GB/s of weights; prefill: GFLOP/s)")
    for t in types:
        bs = TYPES[t][0]
        for m, k in [(4864, 896), (896, 4864)]:
            if k % bs:
                continue
            w = random_weights(t, m, k, rng).reshape(-1)
            a = random_activations(TYPES[t][2], max(1, args.prefill), k, rng).reshape(-1)
            out = np.zeros(max(1, args.prefill) * m, np.float32)
            copies = max(1, (args.cold_mb << 20) // w.nbytes)
            cold = np.tile(w, copies).reshape(copies, -1)
            row = [f"{t.name:6} {m:>4}x{k:<4} {w.nbytes / 1e6:6.2f}"]
            gfs = []
            for impl in impls:
                reps = max(2, args.reps // (20 if impl == SCALAR else 1))
                hot = time_it(lambda: gemm(t, impl, m, 1, k, w, a, out), reps)
                it = iter(range(1 << 62))
                cold_t = time_it(lambda: gemm(t, impl, m, 1, k, cold[next(it) % copies], a, out), reps)
                row.append(f"{w.nbytes / hot / 1e9:11.1f} {w.nbytes / cold_t / 1e9:11.1f}")
                if args.prefill:
                    dt = time_it(lambda: gemm(t, impl, m, args.prefill, k, w, a, out), max(1, reps // 10))
                    gfs.append(f"{2 * m * k * args.prefill / dt / 1e9:11.1f}")
            print(" ".join(row + gfs), flush=True)
            del cold


if __name__ == "__main__":
    main()
