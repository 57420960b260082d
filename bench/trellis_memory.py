"""Would a longer trellis memory pay? Unit-vector MSE of trellis codes by memory bits (issue 19, direction q).
A benchmark, not a test.

    python bench/trellis_memory.py --bits 3,4 --memory 4,6,8

For each (bits, memory) a table is trained as the shipped ones are (kvcache/trellis.py train_table:
Lloyd iterations on Gaussian groups, assignments by the tail-biting Viterbi encoder), then fresh
64-wide Gaussian groups are coded with it and the squared error per coordinate is reported after
the least-squares scale the cache stores, next to the shipped memory-6 table, the Lloyd–Max code of
the same bits and the Gaussian rate–distortion bound 2^(−2b). The encoder's work per group grows as
2^(bits + memory) states; memory 8 at 6 bits takes minutes here.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kvconvert.kvcache import trellis, turboquant as tq


def mse(u: np.ndarray, y: np.ndarray) -> float:
    """Per-coordinate squared error of u (N, m) against y (N, m) after each group's least-squares scale."""
    g = (u * y).sum(1) / (y * y).sum(1)
    return float(((u - g[:, None] * y) ** 2).mean())


def lloyd_max(u: np.ndarray, bits: int) -> np.ndarray:
    """The scalar code of the same bits for unit-variance coordinates (the cache's codebook, scaled by √m)."""
    m = u.shape[1]
    codes = np.searchsorted(tq.boundaries(m, bits), u / np.sqrt(m), side="left")
    return tq.codebook(m, bits).astype(np.float64)[codes] * np.sqrt(m)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", default="3,4", help="comma list of code bits")
    p.add_argument("--memory", default="4,6,8", help="comma list of memory bits")
    p.add_argument("--groups", type=int, default=1024, help="Gaussian groups to train on and to score")
    p.add_argument("--iters", type=int, default=5, help="Lloyd iterations per table")
    args = p.parse_args()
    u = np.random.default_rng(7).standard_normal((args.groups, trellis.TRAIN_N))
    print("| bits | code | MSE | vs shipped |\n|---|---|---|---|")
    for bits in (int(b) for b in args.bits.split(",")):
        shipped = mse(u, trellis.table(bits)[trellis.encode_states(u, bits)])
        print(f"| {bits} | Gaussian bound 2^(−2b) | {2.0 ** (-2 * bits):.5f} | |")
        print(f"| {bits} | Lloyd–Max | {mse(u, lloyd_max(u, bits)):.5f} | |")
        print(f"| {bits} | trellis, memory {trellis.MEMORY} (shipped table) | {shipped:.5f} | |", flush=True)
        for mem in (int(m) for m in args.memory.split(",")):
            t0 = time.time()
            tbl = trellis.train_table(bits, memory=mem, n_vec=args.groups, iters=args.iters)
            e = mse(u, tbl.astype(np.float32)[trellis.encode_states(u, bits, tbl)])
            print(f"| {bits} | trellis, memory {mem} (trained here, {time.time() - t0:.0f} s) | {e:.5f} | "
                  f"{100 * (e / shipped - 1):+.0f}% |", flush=True)


if __name__ == "__main__":
    main()
