"""Weight quantization by the native runtime's quantizers (``kvc_quantize_row``).

The C quantizers of Q8_0, Q4_0, Q5_0 and the k-quants Q4_K, Q5_K, Q6_K write
the bytes ggml's reference quantizers write (native/src/quants_ref.c,
native/src/quantize_k_ref.c); rows are split over threads (cffi releases the GIL
during the call).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._native import check, ffi, lib

# GGML type ids (= kvc_type ids) the C runtime quantizes
NATIVE_QUANTIZERS = frozenset({8, 2, 6, 12, 13, 14})  # Q8_0, Q4_0, Q5_0, Q4_K, Q5_K, Q6_K


def row_bytes(qtype: int, n: int) -> int:
    bs, ts = ffi().new("int *"), ffi().new("int *")
    check(lib().kvc_type_info(int(qtype), bs, ts, ffi().NULL), "kvc_type_info")
    if n % bs[0]:
        raise ValueError(f"row length {n} is not a multiple of the type's block size {bs[0]}")
    return n // bs[0] * ts[0]


def quantize(x: np.ndarray, qtype: int, threads: int | None = None, impl: int = 0) -> np.ndarray:
    """x (..., n) float → uint8 (..., row bytes) of GGML type ``qtype`` (impl 0: the best this CPU runs)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    rb = row_bytes(qtype, n)
    out = np.empty((rows.shape[0], rb), np.uint8)
    f, L = ffi(), lib()

    def run(r0: int, r1: int) -> None:
        if r1 > r0:
            src = f.cast("float *", f.from_buffer(rows[r0:r1]))
            dst = f.cast("void *", f.from_buffer(out[r0:r1]))
            check(L.kvc_quantize_row(int(qtype), impl, src, dst, (r1 - r0) * n), "kvc_quantize_row")

    threads = threads or min(os.cpu_count() or 1, 8)
    if threads <= 1 or rows.shape[0] < 2 * threads or x.size < (1 << 18):
        run(0, rows.shape[0])
    else:
        cuts = np.linspace(0, rows.shape[0], threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, cuts[:-1], cuts[1:]))
    return out.reshape(*x.shape[:-1], rb)
