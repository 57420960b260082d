"""bench/trellis_memory.py's helpers (issue 19, direction q): the Lloyd–Max reference it compares
against reproduces Max's (1960) Gaussian distortions, and its scale-fitted MSE ranks a trained trellis
below the scalar code of the same bits. Small tables only; the benchmark itself is not run here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))  # only while importing (see test_bench_longctx.py)
try:
    import trellis_memory as tmem  # noqa: E402
finally:
    sys.path.remove(str(BENCH))

from kvconvert.kvcache import trellis  # noqa: E402


@pytest.mark.parametrize("bits, max1960", [(2, 0.1175), (3, 0.03454)])
def test_lloyd_max_reference_matches_the_gaussian_tables(bits, max1960):
    # a 64-wide unit vector's coordinates are close to Gaussian, and the least-squares scale can only
    # lower the error: within 6% below Max's optimum for the Gaussian, never above it by more than 2%
    u = np.random.default_rng(1).standard_normal((4000, 64))
    e = tmem.mse(u, tmem.lloyd_max(u, bits))
    assert 0.94 * max1960 < e < 1.02 * max1960


def test_mse_is_zero_for_a_scaled_copy_and_positive_otherwise():
    u = np.random.default_rng(2).standard_normal((8, 64))
    assert tmem.mse(u, 3.0 * u) == pytest.approx(0.0, abs=1e-12)
    assert tmem.mse(u, np.sign(u)) > 0.05


def test_a_trained_trellis_beats_the_scalar_code_of_the_same_bits():
    rng = np.random.default_rng(3)
    u = rng.standard_normal((256, trellis.TRAIN_N))
    tbl = trellis.train_table(2, memory=4, n_vec=256, iters=3)
    e_tr = tmem.mse(u, tbl.astype(np.float32)[trellis.encode_states(u, 2, tbl)])
    assert e_tr < 0.95 * tmem.mse(u, tmem.lloyd_max(u, 2))
