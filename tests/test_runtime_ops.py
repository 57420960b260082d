"""Vector ops of the forward pass (native/src/vec.c, cpu/vec_avx2.c): scalar
twin against numpy, SIMD against the scalar twin."""

from __future__ import annotations

import numpy as np
import pytest

kvc = pytest.importorskip("kvconvert._kvc", reason="native runtime not built (pip install -e .)")
ffi, lib = kvc.ffi, kvc.lib
SCALAR, AVX2 = 1, 2
SIZES = [1, 7, 8, 9, 64, 100, 4099]


def fp(a: np.ndarray):
    return ffi.cast("float *", ffi.from_buffer(a))


def simd_impls() -> list[int]:
    return [i for i in (AVX2, 3) if lib.kvc_cpu_impls() & (1 << i)]


def run(op, impl, *arrays, **kw):
    outs = [np.array(a, dtype=np.float32, copy=True) for a in arrays]
    assert op(impl, *kw.get("pre", ()), *[fp(o) for o in outs], *kw.get("post", ())) == 0
    return outs


@pytest.mark.parametrize("n", SIZES)
def test_softmax(n):
    x = (np.random.default_rng(n).standard_normal(n) * 20).astype(np.float32)
    x[0] = -1e30  # a masked-out score
    (ref,) = run(lambda i, p: lib.kvc_op_softmax(i, n, p), SCALAR, x)
    e = np.exp(x.astype(np.float64) - x.max())
    np.testing.assert_allclose(ref, e / e.sum(), rtol=2e-6, atol=1e-12)  # polynomial exp: < 1e-7 relative
    for impl in simd_impls():
        (got,) = run(lambda i, p: lib.kvc_op_softmax(i, n, p), impl, x)
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-12)  # only the sum's order differs


@pytest.mark.parametrize("n", SIZES)
def test_rms_norm_and_silu(n):
    rng = np.random.default_rng(n)
    x, w = rng.standard_normal(n).astype(np.float32) * 3, rng.standard_normal(n).astype(np.float32)
    out = np.empty(n, np.float32)
    assert lib.kvc_op_rms_norm(SCALAR, n, fp(x), fp(w), 1e-6, fp(out)) == 0
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(out, x64 / np.sqrt((x64**2).mean() + 1e-6) * w, rtol=1e-5, atol=1e-6)
    g, u = rng.standard_normal(n).astype(np.float32) * 8, rng.standard_normal(n).astype(np.float32)
    s = np.empty(n, np.float32)
    assert lib.kvc_op_silu_mul(SCALAR, n, fp(g), fp(u), fp(s)) == 0
    g64 = g.astype(np.float64)
    np.testing.assert_allclose(s, g64 / (1 + np.exp(-g64)) * u, rtol=1e-5, atol=1e-7)
    for impl in simd_impls():
        o2, s2 = np.empty(n, np.float32), np.empty(n, np.float32)
        assert lib.kvc_op_rms_norm(impl, n, fp(x), fp(w), 1e-6, fp(o2)) == 0
        assert lib.kvc_op_silu_mul(impl, n, fp(g), fp(u), fp(s2)) == 0
        np.testing.assert_allclose(o2, out, rtol=1e-6)  # the sum of squares' order differs
        np.testing.assert_array_equal(s2, s)  # element-wise: same formula, same FMAs: bit-exact


@pytest.mark.parametrize("n", SIZES)
def test_gelu_mul(n):
    """GeGLU's gelu(g) * u (tanh approximation, scalar only) against float64 numpy: rtol 1e-5 + atol 1e-6,
    in place too."""
    rng = np.random.default_rng(n)
    g, u = rng.standard_normal(n).astype(np.float32) * 6, rng.standard_normal(n).astype(np.float32)
    s = np.empty(n, np.float32)
    assert lib.kvc_op_gelu_mul(SCALAR, n, fp(g), fp(u), fp(s)) == 0
    g64 = g.astype(np.float64)
    want = 0.5 * g64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (g64 + 0.044715 * g64**3))) * u
    np.testing.assert_allclose(s, want, rtol=1e-5, atol=1e-6)  # tanhf near ±1 for |g| ≫ 1: absolute error
    (inplace,) = run(lambda i, p: lib.kvc_op_gelu_mul(i, n, p, fp(u), p), SCALAR, g)
    np.testing.assert_array_equal(inplace, s)
    assert lib.kvc_op_gelu_mul(AVX2, n, fp(g), fp(u), fp(s)) != 0  # no SIMD variant: refused, not faked


@pytest.mark.parametrize("n", SIZES)
def test_axpy_bit_exact(n):
    rng = np.random.default_rng(n)
    x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    y_ref = y.copy()
    assert lib.kvc_op_axpy(SCALAR, n, 0.37, fp(x), fp(y_ref)) == 0
    np.testing.assert_allclose(y_ref, y + np.float32(0.37) * x, rtol=1e-6, atol=1e-7)
    for impl in simd_impls():
        y2 = y.copy()
        assert lib.kvc_op_axpy(impl, n, 0.37, fp(x), fp(y2)) == 0
        np.testing.assert_array_equal(y2, y_ref)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("r", [1, 2, 7, 64])
def test_axpy_rows_bit_exact(n, r):
    """y += sum_k a[k] x[k] (the K-centering correction of kv_cache.c): the scalar twin against float64
    numpy (rtol 1e-6 of the sum of |terms|), every SIMD variant bit-exact against the twin (one fused
    multiply-add per row, rows in order, per element)."""
    rng = np.random.default_rng(1000 * r + n)
    a = (rng.standard_normal(r) * 30).astype(np.float32)  # Qwen-like mean coefficients: large
    x = rng.uniform(-1, 1, (r, n)).astype(np.float32)  # cos / sin rows
    y = (rng.standard_normal(n) * 10).astype(np.float32)
    y_ref = y.copy()
    assert lib.kvc_op_axpy_rows(SCALAR, n, r, fp(a), fp(x), fp(y_ref)) == 0
    terms = a.astype(np.float64)[:, None] * x
    bound = 1e-6 * (np.abs(terms).sum(0) + np.abs(y))
    assert np.all(np.abs(y_ref - (y + terms.sum(0))) <= bound)
    for impl in simd_impls():
        y2 = y.copy()
        assert lib.kvc_op_axpy_rows(impl, n, r, fp(a), fp(x), fp(y2)) == 0
        np.testing.assert_array_equal(y2, y_ref)


def test_bad_arguments():
    x = np.zeros(4, np.float32)
    assert lib.kvc_op_axpy_rows(SCALAR, 4, 0, fp(x), fp(x), fp(x)) == 1
    assert lib.kvc_op_softmax(SCALAR, 0, fp(x)) == 1
    assert lib.kvc_op_softmax(99, 4, fp(x)) == 3
    assert lib.kvc_op_axpy(SCALAR, 4, 1.0, ffi.NULL, fp(x)) == 1


def attn_tile_numpy(nq, D, kc, qt, k, v, lo, hi, m, l, o):
    """The formulas of native/src/attn.h in float64: (m, l, o) after one tile."""
    s = (k.astype(np.float64) @ qt[:, :nq].astype(np.float64)).T * 0.125  # (nq, kc)
    if lo is not None:
        j = np.arange(kc)
        s[(j[None, :] < lo[:, None]) | (j[None, :] >= hi[:, None])] = -np.inf
    mn = np.maximum(m[:nq], s.max(axis=1))
    p = np.exp(s - mn[:, None])
    a = np.exp(m[:nq] - mn)
    return mn, l[:nq] * a + p.sum(axis=1), o * a[:, None] + p @ v.astype(np.float64)


@pytest.mark.parametrize("nq,D,kc,masked", [(1, 64, 64, False), (7, 64, 37, True), (49, 64, 64, True),
                                            (64, 128, 64, False), (63, 80, 5, True), (17, 16, 1, False),
                                            (9, 7, 13, True)])
def test_attn_tile(nq, D, kc, masked):
    """Flash-attention tile kernel: the scalar twin against float64 numpy over two
    tiles (online softmax), every SIMD build bit-identical to the twin (same
    operations in the same order, attn.h)."""
    W = 64
    rng = np.random.default_rng(nq * 1000 + D + kc)
    qt = np.zeros((D, W), np.float32)
    qt[:, :nq] = rng.standard_normal((D, nq)) / np.sqrt(D)
    tiles = [(rng.standard_normal((kc, D)).astype(np.float32) * 2, rng.standard_normal((kc, D)).astype(np.float32))
             for _ in range(2)]
    bounds = []
    for t in range(2):  # row i sees lo..hi of each tile; every row sees at least one key over the two tiles
        if masked:
            lo = rng.integers(0, kc, nq).astype(np.int32)
            hi = np.minimum(lo + rng.integers(0 if t else 1, kc + 1, nq), kc).astype(np.int32)
            bounds.append((lo, hi))
        else:
            bounds.append((None, None))

    def run_impl(impl):
        m = np.full(W, -np.inf, np.float32)
        l, o, st = np.zeros(W, np.float32), np.zeros((nq, D), np.float32), np.zeros((kc, W), np.float32)
        for (k, v), (lo, hi) in zip(tiles, bounds):
            lp = ffi.NULL if lo is None else ffi.cast("int *", ffi.from_buffer(lo))
            hp = ffi.NULL if hi is None else ffi.cast("int *", ffi.from_buffer(hi))
            assert lib.kvc_op_attn_tile(impl, nq, D, kc, 0.125, fp(qt), fp(k), fp(v), lp, hp, fp(m), fp(l), fp(o), fp(st)) == 0
        return m[:nq], l[:nq], o

    m_ref, l_ref, o_ref = run_impl(SCALAR)
    m64, l64, o64 = np.full(nq, -np.inf), np.zeros(nq), np.zeros((nq, D))
    for (k, v), (lo, hi) in zip(tiles, bounds):
        m64, l64, o64 = attn_tile_numpy(nq, D, kc, qt, k, v, lo, hi, np.r_[m64, np.zeros(W - nq)], np.r_[l64, np.zeros(W - nq)], o64)
    np.testing.assert_allclose(m_ref, m64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(l_ref, l64, rtol=1e-5)
    np.testing.assert_allclose(o_ref / l_ref[:, None], o64 / l64[:, None], rtol=1e-4, atol=1e-5)
    for impl in simd_impls():
        m2, l2, o2 = run_impl(impl)
        np.testing.assert_array_equal(m2, m_ref)
        np.testing.assert_array_equal(l2, l_ref)
        np.testing.assert_array_equal(o2, o_ref)


def test_attn_tile_bad_arguments():
    z = np.zeros(64 * 64, np.float32)
    assert lib.kvc_op_attn_tile(SCALAR, 65, 8, 4, 1.0, fp(z), fp(z), fp(z), ffi.NULL, ffi.NULL, fp(z), fp(z), fp(z), fp(z)) == 1
    assert lib.kvc_op_attn_tile(SCALAR, 4, 8, 0, 1.0, fp(z), fp(z), fp(z), ffi.NULL, ffi.NULL, fp(z), fp(z), fp(z), fp(z)) == 1
    assert lib.kvc_op_attn_tile(99, 4, 8, 4, 1.0, fp(z), fp(z), fp(z), ffi.NULL, ffi.NULL, fp(z), fp(z), fp(z), fp(z)) == 1
