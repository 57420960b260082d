"""Bitshift-trellis codes for a rotated group: the numpy reference (an experiment; docs/design.md §4).

Same bits as TurboQuant's scalar codes, stored the same way (one b-bit symbol per coordinate),
but a coordinate's value depends on its symbol *and the previous ones*: with M memory bits,
coordinate i reads the state

    s_i = (last L = b + M bits of the cyclic bit stream up to and including symbol i)
        = Σ_j symbol_{i−j} · 2^(b·j)  mod 2^L          (indices mod n: the stream is a ring)

and decodes to table[s_i], one of 2^L values (unit variance: the table is for u = y/‖y‖·√m).
Each symbol only picks b new bits, but which 2^b values it can reach depends on the path, so a
Viterbi search over the 2^L states finds the sequence of values closest to the whole group: a
trellis-coded quantizer. The ring ("tail-biting": the first states are continued from the
last symbols) costs no side bits; the encoder finds it in two passes (the group rolled by n/2
fixes the M wrap bits, then a constrained pass; as QTIP, arXiv 2406.11235, §3).

Decoding is a table lookup per coordinate (the state is a shift of the packed symbols), so the
scores and value sums of a cache kernel stay one pass over the codes; encoding is a Viterbi
pass of n steps × 2^L states per group, twice.

The tables are trained once (Lloyd iterations on Gaussian samples, assignments by the encoder)
and shipped in ``data/trellis_tables.npz``; ``python -m kvconvert.kvcache.trellis`` rewrites it.
On unit vectors of a 64-wide group (least-squares scale, as the cache stores them) the shipped
tables' MSE is 28% (2 bits), 34% (3) and 37–38% (4–6 bits) below the Lloyd–Max codes' (MEMORY = 6).
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

DATA_FILE = Path(__file__).resolve().parent / "data" / "trellis_tables.npz"
FILE_VERSION = 1
MEMORY = 6  # state bits beyond a symbol's own: 2^(b + 6) states, 64 of them reachable per symbol
BITS = tuple(range(1, 7))
MAX_M = 256  # channels of a group (the C encoder's stack buffers: tq.h TQ_TRELLIS_MAX_M)
TRAIN_SEED, TRAIN_VECTORS, TRAIN_ITERS, TRAIN_N = 20261207, 2048, 6, 64


def _viterbi(u: np.ndarray, tbl: np.ndarray, bits: int, wrap: np.ndarray | None = None) -> np.ndarray:
    """Least-squares state path (N, n) of u (N, n) through the trellis of tbl (2^L,).

    wrap (N,) ints < 2^M: the path must start in a state whose top M bits are wrap and end in one
    whose low M bits are wrap (a closed ring); None: free ends."""
    N, n = u.shape
    L = tbl.size.bit_length() - 1
    M, S = L - bits, tbl.size
    states = np.arange(S)
    inf = u.dtype.type(np.inf)  # the search runs in u's dtype (encode_states: float32)
    cost = (u[:, :1] - tbl[None, :]) ** 2
    if wrap is not None:
        cost = np.where((states[None, :] >> bits) == wrap[:, None], cost, inf)
    back = np.empty((n, N, 1 << M), dtype=np.int32)  # best predecessor per (step, low-M context)
    for i in range(1, n):
        c = cost.reshape(N, 1 << bits, 1 << M)  # predecessor = (dropped top bits t, kept low M bits)
        t = np.argmin(c, axis=1)  # first minimum: ties go to the smaller state
        best = np.take_along_axis(c, t[:, None, :], axis=1)[:, 0, :]
        back[i] = (t << M) | np.arange(1 << M)[None, :]
        cost = np.repeat(best, 1 << bits, axis=1) + (u[:, i:i + 1] - tbl[None, :]) ** 2
    if wrap is not None:
        cost = np.where((states[None, :] & ((1 << M) - 1)) == wrap[:, None], cost, inf)
    path = np.empty((N, n), dtype=np.int64)
    path[:, -1] = np.argmin(cost, axis=1)
    rows = np.arange(N)
    for i in range(n - 1, 0, -1):
        path[:, i - 1] = back[i][rows, path[:, i] >> bits]
    return path


def encode_states(u: np.ndarray, bits: int, tbl: np.ndarray | None = None) -> np.ndarray:
    """Tail-biting state path (N, n) for unit-variance coordinates u (N, n), n >= 2. The search runs
    in float32 on float32 u and table values: the arithmetic of tq_ref.c's tq_viterbi_ref, so both
    find the same paths (and its SIMD twins, at twice the states per vector of a float64 search)."""
    u = np.asarray(u, dtype=np.float32)
    tbl = np.asarray(table(bits) if tbl is None else tbl, dtype=np.float32)
    N, n = u.shape
    L = tbl.size.bit_length() - 1
    if n * bits < L:
        raise ValueError(f"a group of {n} × {bits} bits is shorter than a state ({L} bits)")
    h, M = n // 2, L - bits
    rolled = _viterbi(np.roll(u, -h, axis=1), tbl, bits)
    wrap = rolled[:, n - 1 - h] & ((1 << M) - 1)  # the state at the ring's seam, from the rolled pass
    return _viterbi(u, tbl, bits, wrap)


def symbols(path: np.ndarray, bits: int) -> np.ndarray:
    """The b-bit symbol each coordinate stores: its state's low bits."""
    return (path & ((1 << bits) - 1)).astype(np.uint8)


def states(sym: np.ndarray, bits: int) -> np.ndarray:
    """Decoder side: each coordinate's state from the stored symbols (..., n), read as a ring."""
    L = bits + MEMORY
    s = np.zeros(sym.shape, dtype=np.int64)  # (tq.h tq_trellis_values)
    for j in range(-(-L // bits)):  # the symbols a state spans, newest first
        s |= np.roll(sym.astype(np.int64), j, axis=-1) << (bits * j)
    return s & ((1 << L) - 1)


def decode(sym: np.ndarray, bits: int) -> np.ndarray:
    """Unit-variance coordinates (..., n) float32 of stored symbols."""
    return table(bits)[states(sym, bits)]


def train_table(bits: int, memory: int = MEMORY, seed: int = TRAIN_SEED, n_vec: int = TRAIN_VECTORS,
                iters: int = TRAIN_ITERS, n: int = TRAIN_N) -> np.ndarray:
    """Lloyd iterations: start from Gaussian quantiles in a random order, encode fresh Gaussian
    groups, move each table value to the mean of the coordinates that chose its state."""
    from statistics import NormalDist
    rng = np.random.default_rng(seed + bits)
    S = 1 << (bits + memory)
    inv = NormalDist().inv_cdf
    tbl = np.array([inv((i + 0.5) / S) for i in rng.permutation(S)])
    for _ in range(iters):
        u = rng.standard_normal((n_vec, n))
        path = encode_states(u, bits, tbl)
        sums = np.bincount(path.ravel(), weights=u.ravel(), minlength=S)
        cnt = np.bincount(path.ravel(), minlength=S)
        tbl = np.where(cnt > 0, sums / np.maximum(cnt, 1), tbl)
    return tbl


@lru_cache(maxsize=None)
def _tables() -> dict[int, np.ndarray]:
    if not DATA_FILE.exists():
        raise FileNotFoundError(f"{DATA_FILE} is missing; `python -m kvconvert.kvcache.trellis` regenerates it")
    with np.load(DATA_FILE) as z:
        if int(z["version"]) != FILE_VERSION or int(z["memory"]) != MEMORY:
            raise ValueError(f"{DATA_FILE}: version/memory mismatch; regenerate it")
        return {b: z[f"b{b}"].astype(np.float32) for b in BITS}


def table(bits: int) -> np.ndarray:
    """The shipped table for b bits: (2^(b + MEMORY),) float32, read-only."""
    if bits not in BITS:
        raise ValueError(f"no trellis table for {bits} bits (have {BITS[0]}..{BITS[-1]})")
    t = _tables()[bits]
    t.flags.writeable = False
    return t


def main() -> int:
    out = {f"b{b}": train_table(b).astype(np.float32) for b in BITS}
    tmp = DATA_FILE.with_suffix(".tmp.npz")
    np.savez(tmp, version=FILE_VERSION, memory=MEMORY, **out)
    tmp.replace(DATA_FILE)
    sizes = ", ".join(f"{b} bits: {out['b%d' % b].size}" for b in BITS)
    print(f"wrote {DATA_FILE} ({sizes} values)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
