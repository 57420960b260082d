"""numpy's BLAS threads beside kvconvert's own.

kvconvert runs its own threads — the C runtime's pool, the search's layer workers, the
server's loop — and numpy's BLAS (OpenBLAS in the numpy wheels) starts one worker per core
on top of them. The two oversubscribe the cores, and idle BLAS workers spin while they wait:
on a 2-core machine the search of SmolLM2-135M took 55 s with BLAS's threads and 27 s with
one (the same profile). ``one_blas_thread()`` limits BLAS to one thread for a block, unless
the user chose a count (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS or MKL_NUM_THREADS set).
The limit is process-wide (BLAS has no per-thread setting).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

USER_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    if any(os.environ.get(v) for v in USER_VARS):
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
