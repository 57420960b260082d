"""The quantization kernels of the native runtime against gguf-py and their twins.

Tolerances (stated once, used below):
  * dequantize, scalar and SIMD: bit-exact vs gguf.quants.dequantize.
  * quantize, scalar and SIMD: byte-exact vs gguf.quants.quantize (Q8_0, Q4_0,
    Q4_1, Q5_0, Q5_1, BF16, F16) or vs the numpy ports of ggml's *_ref below (Q8_1, Q8_K).
  * scalar vec_dot: |got - exact| <= 1e-5 * sum|w_i a_i|, exact = float64 dot of
    the dequantized operands (Q4_1 uses the fp16 `s` field of Q8_1, as ggml does).
  * SIMD vec_dot: integer parts exact (operands with power-of-two scales give
    results identical to numpy's integer dot); otherwise |simd - scalar| <=
    1e-6 * sum|w_i a_i| (only the float summation order differs; the worst seen
    over 20 rows x k up to 19456 per type was 1.2e-7).
  * gemm: identical to a loop over vec_dot of the same impl; on x86 the integer
    types' vec_dot and gemm (tiles and AVX-512's packed panels) identical to the
    scalar reference.
"""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

_kvc = pytest.importorskip("kvconvert._kvc", reason="native runtime not built (pip install -e .)")
ffi, lib = _kvc.ffi, _kvc.lib

OK, ERR_INVALID, ERR_UNSUPPORTED = 0, 1, 3
AUTO, SCALAR, AVX2, AVX512, NEON = 0, 1, 2, 3, 4
IMPL_NAMES = {SCALAR: "scalar", AVX2: "avx2", AVX512: "avx512", NEON: "neon"}
SIMD = [i for i in (AVX2, AVX512, NEON) if lib.kvc_cpu_impls() & (1 << i)]

# type -> (block size, bytes per block, vec_dot type)
TYPES = {
    Q.F32: (1, 4, Q.F32), Q.F16: (1, 2, Q.F32), Q.BF16: (1, 2, Q.F32),
    Q.Q8_0: (32, 34, Q.Q8_0), Q.Q4_0: (32, 18, Q.Q8_0), Q.Q4_1: (32, 20, Q.Q8_1),
    Q.Q5_0: (32, 22, Q.Q8_0), Q.Q4_K: (256, 144, Q.Q8_K), Q.Q6_K: (256, 210, Q.Q8_K),
    Q.Q5_K: (256, 176, Q.Q8_K), Q.Q5_1: (32, 24, Q.Q8_1),
}
WEIGHTS = list(TYPES)
QUANTIZED = [t for t in WEIGHTS if TYPES[t][0] > 1]
ACTIVATION_SIZES = {Q.F32: (1, 4), Q.Q8_0: (32, 34), Q.Q8_1: (32, 36), Q.Q8_K: (256, 292)}


def impls_for_simd():
    return pytest.mark.parametrize("impl", SIMD, ids=[IMPL_NAMES[i] for i in SIMD]) if SIMD else pytest.mark.skip(
        reason="no SIMD impl on this CPU")


def ptr(a: np.ndarray, offset: int = 0):
    return ffi.cast("uint8_t *", ffi.from_buffer(a)) + offset


def fptr(a: np.ndarray):
    return ffi.cast("float *", ffi.from_buffer(a))


def row_bytes(t, n):
    bs, ts = (TYPES[t][:2] if t in TYPES else ACTIVATION_SIZES[t])
    return n // bs * ts


# ---------------- calling the kernels ----------------

def quantize(t, x: np.ndarray, impl=SCALAR) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.zeros(row_bytes(t, x.size), np.uint8)
    assert lib.kvc_quantize_row(int(t), impl, fptr(x), ptr(y), x.size) == OK
    return y


def dequantize(t, data: np.ndarray, n: int, impl=SCALAR) -> np.ndarray:
    y = np.zeros(n, np.float32)
    assert lib.kvc_dequantize_row(int(t), impl, ptr(data), fptr(y), n) == OK
    return y


def vec_dot(t, w: np.ndarray, a: np.ndarray, n: int, impl=SCALAR, offset=0) -> float:
    out = ffi.new("float *")
    assert lib.kvc_vec_dot(int(t), impl, n, ptr(w, offset), ptr(a, offset), out) == OK
    return out[0]


# ---------------- random operands ----------------

def fp16_bytes(v) -> np.ndarray:
    return np.asarray(v, np.float16).reshape(-1, 1).view(np.uint8)


def random_weights(t, rows: int, k: int, rng, unit_scales=False) -> np.ndarray:
    """(rows, row_bytes) uint8 of valid blocks of type t. unit_scales: every float
    scale is 1 (power-of-two scales keep the float math exact)."""
    if t in (Q.F32, Q.F16, Q.BF16):
        x = rng.integers(-8, 8, (rows, k)).astype(np.float32) if unit_scales else rng.standard_normal((rows, k), np.float32)
        return np.ascontiguousarray(gguf.quants.quantize(x, t)).view(np.uint8).reshape(rows, -1)
    bs, ts, _ = TYPES[t]
    nb = rows * k // bs
    if t in (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1) and not unit_scales:
        x = rng.standard_normal((rows, k), np.float32) * rng.uniform(0.01, 2.0, (rows, 1)).astype(np.float32)
        if t in (Q.Q4_1, Q.Q5_1):
            x += rng.uniform(-1, 1, (rows, 1)).astype(np.float32)
        return gguf.quants.quantize(x, t).reshape(rows, -1)
    blocks = rng.integers(0, 256, (nb, ts), dtype=np.uint8)  # every bit pattern of the quants is valid
    if t == Q.Q8_0 or t == Q.Q4_0 or t == Q.Q5_0:
        blocks[:, 0:2] = fp16_bytes(np.ones(nb))
    elif t in (Q.Q4_1, Q.Q5_1):
        blocks[:, 0:4] = fp16_bytes(np.ones((nb, 2))).reshape(nb, 4)
    elif t in (Q.Q4_K, Q.Q5_K):
        d = np.ones((nb, 2)) if unit_scales else rng.uniform(1e-4, 4e-3, (nb, 2))
        blocks[:, 0:4] = fp16_bytes(d).reshape(nb, 4)
    elif t == Q.Q6_K:
        blocks[:, 208:210] = fp16_bytes(np.ones(nb) if unit_scales else rng.uniform(1e-4, 4e-3, nb))
    return blocks.reshape(rows, -1)


def random_activations(t, rows: int, k: int, rng, impl=SCALAR, small=False) -> np.ndarray:
    """Activations quantized by our own quantizer (so Q8 values are in -127..127)."""
    x = rng.standard_normal((rows, k), np.float32)
    if small:  # power-of-two scales: Q8_0/Q8_1 d = 1 (amax 127), Q8_K d = 1 (max -127), small quants
        x = rng.integers(-6, 7, (rows, k)).astype(np.float32)
        bs = ACTIVATION_SIZES[t][0]
        x.reshape(-1, bs)[:, 0] = 127.0 if t != Q.Q8_K else -127.0
    return np.stack([quantize(t, row, impl) for row in x]) if t != Q.F32 else x.view(np.uint8)


# ---------------- numpy ports of ggml's reference quantizers gguf-py lacks ----------------

def np_quantize_q8_1(x: np.ndarray) -> np.ndarray:
    blocks = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    q = gguf.quants.np_roundf(blocks * inv).astype(np.int8)
    s = (q.astype(np.int32).sum(axis=1, keepdims=True).astype(np.float32) * d)
    return np.concatenate([fp16_bytes(d), fp16_bytes(s), q.view(np.uint8)], axis=1).reshape(-1)


def np_quantize_q8_K(x: np.ndarray) -> np.ndarray:
    out = []
    for b in x.reshape(-1, 256).astype(np.float32):
        mx = b[np.argmax(np.abs(b))]
        if mx == 0:
            out.append(np.zeros(292, np.uint8))
            continue
        iscale = np.float32(-127) / mx
        q = np.minimum(np.rint(iscale * b), 127).astype(np.int8)  # rint: half to even, like nearest_int
        bsums = q.reshape(16, 16).astype(np.int16).sum(axis=1).astype(np.int16)
        out.append(np.concatenate([np.float32(1 / iscale).reshape(1).view(np.uint8), q.view(np.uint8),
                                   bsums.view(np.uint8)]))
    return np.concatenate(out)


def np_dequantize(t, data: np.ndarray, n: int) -> np.ndarray:
    data = np.ascontiguousarray(data).reshape(-1)
    if t == Q.Q8_K:
        b = data.reshape(-1, 292)
        return (b[:, :4].copy().view(np.float32) * b[:, 4:260].view(np.int8).astype(np.float32)).reshape(-1)
    if t == Q.Q8_1:
        b = data.reshape(-1, 36)
        return (b[:, :2].copy().view(np.float16).astype(np.float32) * b[:, 4:].view(np.int8)).reshape(-1)
    return gguf.quants.dequantize(data, t).reshape(-1)[:n].astype(np.float32)


def edge_inputs(n: int, rng) -> list[np.ndarray]:
    """Inputs that hit rounding ties, zero blocks, negative maxima and tiny/huge scales."""
    ties = (rng.integers(-254, 255, n) / 2).astype(np.float32)  # x.5 values
    ties[::32] = 127.0
    zeros = np.zeros(n, np.float32)
    neg = rng.standard_normal(n).astype(np.float32)
    neg[::16] = -10.0
    tiny = (rng.standard_normal(n) * 1e-6).astype(np.float32)
    huge = (rng.standard_normal(n) * 3e4).astype(np.float32)
    mixed = np.where(np.arange(n) % 64 < 32, 0.0, rng.standard_normal(n)).astype(np.float32)
    return [ties, zeros, neg, tiny, huge, mixed]


# ---------------- (0) type info, features ----------------

@pytest.mark.parametrize("t", WEIGHTS + [Q.Q8_1, Q.Q8_K], ids=lambda t: t.name)
def test_type_info(t):
    bs, ts, vd = (ffi.new("int *") for _ in range(3))
    assert lib.kvc_type_info(int(t), bs, ts, vd) == OK
    # gguf-py still lists Q8_1's old fp32 layout (40 bytes); ggml's is d, s as fp16 (36)
    assert (bs[0], ts[0]) == ((32, 36) if t == Q.Q8_1 else gguf.GGML_QUANT_SIZES[t])
    assert vd[0] == (int(TYPES[t][2]) if t in TYPES else -1)


def test_cpu_impls():
    m = lib.kvc_cpu_impls()
    assert m & (1 << SCALAR) and not m & (1 << AUTO)
    assert m & (1 << lib.kvc_cpu_best_impl())


# ---------------- (1) dequantize ----------------

@pytest.mark.parametrize("t", WEIGHTS, ids=lambda t: t.name)
def test_dequantize_scalar_matches_gguf_bit_exact(t):
    rng = np.random.default_rng(1)
    k = 1024
    w = random_weights(t, 4, k, rng)
    if t in (Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.Q4_1, Q.Q5_1):  # also raw random quants (Q8_0: includes -128)
        w = np.concatenate([w, random_weights(t, 2, k, rng, unit_scales=True)])
    for row in w:
        got = dequantize(t, row, k)
        want = np_dequantize(t, row, k)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("t", [Q.Q8_K, Q.Q8_1], ids=lambda t: t.name)
def test_dequantize_activation_types(t):
    x = np.random.default_rng(2).standard_normal(512).astype(np.float32)
    q = quantize(t, x)
    assert np.array_equal(dequantize(t, q, 512), np_dequantize(t, q, 512))


@impls_for_simd()
@pytest.mark.parametrize("t", WEIGHTS + [Q.Q8_K], ids=lambda t: t.name)
def test_dequantize_simd_matches_scalar(t, impl):
    rng = np.random.default_rng(3)
    k = 512 + (7 if TYPES.get(t, (256,))[0] == 1 else 0)  # float types: a tail that is not a multiple of 8/16
    data = random_weights(t, 1, k, rng)[0] if t in TYPES else quantize(t, rng.standard_normal(k))
    got = dequantize(t, data, k, impl)
    assert np.array_equal(got.view(np.uint32), dequantize(t, data, k).view(np.uint32))


# ---------------- (2) quantize ----------------

GGUF_QUANTIZERS = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.BF16, Q.F16, Q.F32]
ALL_QUANTIZERS = GGUF_QUANTIZERS + [Q.Q8_1, Q.Q8_K]


def reference_quantize(t, x):
    if t == Q.Q8_1:
        return np_quantize_q8_1(x)
    if t == Q.Q8_K:
        return np_quantize_q8_K(x)
    return np.ascontiguousarray(gguf.quants.quantize(x, t)).view(np.uint8).reshape(-1)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the fp16 overflow inputs
@pytest.mark.parametrize("t", ALL_QUANTIZERS, ids=lambda t: t.name)
def test_quantize_scalar_matches_reference(t):
    rng = np.random.default_rng(4)
    n = 1024
    for x in [rng.standard_normal(n).astype(np.float32)] + edge_inputs(n, rng):
        assert np.array_equal(quantize(t, x), reference_quantize(t, x))


@impls_for_simd()
@pytest.mark.parametrize("t", ALL_QUANTIZERS, ids=lambda t: t.name)
def test_quantize_simd_matches_scalar(t, impl):
    rng = np.random.default_rng(5)
    n = 1024 + (13 if t in (Q.F16, Q.BF16, Q.F32) else 0)
    inputs = [rng.standard_normal(n).astype(np.float32)] + edge_inputs(n, rng)
    if t == Q.BF16:  # NaN, inf and rounding carries
        special = inputs[0].copy()
        special[:6] = [np.nan, -np.inf, np.inf, 3.4e38, -0.0, 1.0 + 2**-8]
        inputs.append(special)
    for x in inputs:
        assert np.array_equal(quantize(t, x, impl), quantize(t, x))


# ---------------- (3) scalar vec_dot vs float64 ----------------

def exact_dot(t, w_row, a_row, k):
    wd = np_dequantize(t, w_row, k).astype(np.float64)
    at = TYPES[t][2]
    ad = (a_row.view(np.float32) if at == Q.F32 else np_dequantize(at, a_row, k)).astype(np.float64)
    prods = wd * ad
    exact, scale = prods.sum(), np.abs(prods).sum()
    if t in (Q.Q4_1, Q.Q5_1):  # ggml's Q4_1/Q5_1 x Q8_1 use s = fp16(d * sum(q)), not the exact sum
        a = a_row.reshape(-1, 36)
        s = a[:, 2:4].copy().view(np.float16).astype(np.float64).reshape(-1)
        qsum = a[:, 4:].view(np.int8).astype(np.float64).sum(axis=1)
        da = a[:, 0:2].copy().view(np.float16).astype(np.float64).reshape(-1)
        m = w_row.reshape(-1, TYPES[t][1])[:, 2:4].copy().view(np.float16).astype(np.float64).reshape(-1)
        exact += (m * (s - da * qsum)).sum()
    return exact, scale


@pytest.mark.parametrize("t", WEIGHTS, ids=lambda t: t.name)
def test_vec_dot_scalar_vs_float64(t):
    rng = np.random.default_rng(6)
    k = 2048 + (5 if TYPES[t][0] == 1 else 0)
    w = random_weights(t, 4, k, rng)
    a = random_activations(TYPES[t][2], 4, k, rng)
    for wr, ar in zip(w, a):
        exact, scale = exact_dot(t, wr, ar, k)
        assert abs(vec_dot(t, wr, ar, k) - exact) <= 1e-5 * scale


# ---------------- (4) SIMD vec_dot vs scalar ----------------

@impls_for_simd()
@pytest.mark.parametrize("t", WEIGHTS, ids=lambda t: t.name)
def test_vec_dot_simd_integer_parts_exact(t, impl):
    """Unit scales and small quants: every float op is exact, so SIMD == scalar == int dot."""
    rng = np.random.default_rng(7)
    k = 1024 + (3 if TYPES[t][0] == 1 else 0)
    w = random_weights(t, 3, k, rng, unit_scales=True)
    a = random_activations(TYPES[t][2], 3, k, rng, small=True)
    for wr, ar in zip(w, a):
        exact, _ = exact_dot(t, wr, ar, k)
        assert vec_dot(t, wr, ar, k) == exact
        assert vec_dot(t, wr, ar, k, impl) == exact


@impls_for_simd()
@pytest.mark.parametrize("t", WEIGHTS, ids=lambda t: t.name)
def test_vec_dot_simd_vs_scalar(t, impl):
    rng = np.random.default_rng(8)
    for k in sorted({TYPES[t][0], 256, 4864} | ({1, 7, 15, 17, 33, 900} if TYPES[t][0] == 1 else set())):
        if k % TYPES[t][0]:
            continue
        w = random_weights(t, 3, k, rng)
        a = random_activations(TYPES[t][2], 3, k, rng)
        for wr, ar in zip(w, a):
            _, scale = exact_dot(t, wr, ar, k)
            assert abs(vec_dot(t, wr, ar, k, impl) - vec_dot(t, wr, ar, k)) <= 1e-6 * scale


@impls_for_simd()
def test_vec_dot_q8_0_weight_minus_128(impl):
    """GGUF files may hold -128 in Q8_0 weights (ggml never writes it); still exact."""
    k = 256
    w = random_weights(Q.Q8_0, 1, k, np.random.default_rng(9), unit_scales=True)
    w.reshape(-1, 34)[:, 2:] = 0x80  # every quant -128
    a = random_activations(Q.Q8_0, 1, k, np.random.default_rng(10), small=True)
    exact, _ = exact_dot(Q.Q8_0, w[0], a[0], k)
    assert vec_dot(Q.Q8_0, w[0], a[0], k, impl) == vec_dot(Q.Q8_0, w[0], a[0], k) == exact


# ---------------- (5) gemm ----------------

def gemm(t, impl, m, n_tok, k, w, a, out, ldo, w_off=0, a_off=0, out_off=0):
    return lib.kvc_gemm(int(t), impl, m, n_tok, k, ptr(w, w_off), ptr(a, a_off), fptr(out) + out_off, ldo)


def gemm_unaligned(t, impl, m, n_tok, k, wb, ab, ldo) -> np.ndarray:
    """gemm on copies of wb and ab that start 1 byte into a buffer (unaligned), into an
    output that also starts 1 float in and is NaN-filled: (n_tok, ldo), the padding kept."""
    wu = np.zeros(wb.size + 1, np.uint8)
    wu[1:] = wb
    au = np.zeros(ab.size + 1, np.uint8)
    au[1:] = ab
    out = np.full(n_tok * ldo + 1, np.nan, np.float32)
    assert gemm(t, impl, m, n_tok, k, wu, au, out, ldo, 1, 1, 1) == OK
    return out[1:].reshape(n_tok, ldo)


@pytest.mark.parametrize("impl", [SCALAR] + SIMD, ids=[IMPL_NAMES[i] for i in [SCALAR] + SIMD])
@pytest.mark.parametrize("t", WEIGHTS, ids=lambda t: t.name)
def test_gemm_equals_vec_dot_loop(t, impl):
    rng = np.random.default_rng(11)
    bs = TYPES[t][0]
    at = TYPES[t][2]
    for m, k in [(1, 2 * max(bs, 32)), (7, max(bs, 32) + (3 if bs == 1 else 0)), (13, 3 * max(bs, 32) - (5 if bs == 1 else 0))]:
        w = random_weights(t, m, k, rng)
        wb, wrow = w.reshape(-1), row_bytes(t, k)
        for n_tok in range(1, 8):
            a = random_activations(at, n_tok, k, rng, impl=SCALAR)
            ab, arow = a.reshape(-1), row_bytes(at, k)
            ldo = m + 3
            got = gemm_unaligned(t, impl, m, n_tok, k, wb, ab, ldo)
            want = np.array([[vec_dot(t, wb[r * wrow:(r + 1) * wrow], ab[i * arow:(i + 1) * arow], k, impl)
                              for r in range(m)] for i in range(n_tok)], np.float32)
            assert np.array_equal(got[:, :m], want), (m, n_tok, k)
            assert np.isnan(got[:, m:]).all()  # the ldo padding is untouched


PANEL_MIN_TOK = 8  # native/src/cpu/gemm_panel.h: KVC_PANEL_MIN_TOK
X86 = [i for i in SIMD if i in (AVX2, AVX512)]


@pytest.mark.skipif(not X86, reason="the x86 integer kernels")
@pytest.mark.parametrize("impl", X86, ids=[IMPL_NAMES[i] for i in X86])
@pytest.mark.parametrize("t", [Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.Q4_1, Q.Q4_K, Q.Q6_K], ids=lambda t: t.name)
def test_x86_integer_products_equal_scalar_reference(t, impl):
    """The x86 integer kernels sum every block exactly and take the scalar reference's
    float steps in its order, so vec_dot, the gemm tiles (1..7 tokens) and AVX-512's
    packed panels (n_tok >= PANEL_MIN_TOK) are all bit-identical to the scalar
    reference: a row's result does not depend on the batch it is computed in (a prompt
    split differently, batched decode). Covers partial panels (m % 16), short last
    token tiles, unaligned operands, Q8_0's -128 quant."""
    rng = np.random.default_rng(12)
    at, bs = TYPES[t][2], max(TYPES[t][0], 32)
    cases = [(16, 2, PANEL_MIN_TOK), (37, 3, 13), (5, 1, 9), (50, 28 if bs == 32 else 4, 21),
             (7, 3, 1), (19, 2, 3), (33, 28 if bs == 32 else 4, 7)]
    for m, nb, n_tok in cases:
        k = nb * bs
        w = random_weights(t, m, k, rng)
        if t == Q.Q8_0:
            w.reshape(-1, 34)[::7, 2:5] = 0x80
        wb, wrow = w.reshape(-1), row_bytes(t, k)
        a = random_activations(at, n_tok, k, rng, impl=SCALAR)
        ab, arow = a.reshape(-1), row_bytes(at, k)
        ldo = m + 5
        got = gemm_unaligned(t, impl, m, n_tok, k, wb, ab, ldo)
        want = np.full(n_tok * ldo, np.nan, np.float32)
        assert gemm(t, SCALAR, m, n_tok, k, wb, ab, want, ldo) == OK
        want = want.reshape(n_tok, ldo)
        assert np.array_equal(got[:, :m], want[:, :m]), (m, n_tok, k)
        assert np.isnan(got[:, m:]).all()  # the ldo padding is untouched
        for r in (0, m - 1):  # vec_dot: the 1 x 1 tile
            assert vec_dot(t, wb[r * wrow:(r + 1) * wrow], ab[:arow], k, impl) == want[0, r]


def test_gemm_empty_and_zero_k():
    out = np.full(8, 7.0, np.float32)
    w = np.zeros(64, np.uint8)
    assert gemm(Q.Q8_0, AUTO, 0, 3, 32, w, w, out, 4) == OK
    assert gemm(Q.Q8_0, AUTO, 2, 0, 32, w, w, out, 4) == OK
    assert (out == 7.0).all()
    assert gemm(Q.Q8_0, AUTO, 2, 2, 0, w, w, out, 4) == OK
    assert (out.reshape(2, 4)[:, :2] == 0).all() and (out.reshape(2, 4)[:, 2:] == 7).all()


# ---------------- (6) bad arguments ----------------

def test_bad_arguments_return_status():
    x = np.zeros(512, np.float32)
    y = np.zeros(4096, np.uint8)
    o = ffi.new("float *")
    fx, py = fptr(x), ptr(y)
    for bad_type in (-1, 4, 5, 10, 11, 16, 29, 31, 1000):
        assert lib.kvc_type_info(bad_type, ffi.NULL, ffi.NULL, ffi.NULL) == ERR_INVALID
        assert lib.kvc_quantize_row(bad_type, AUTO, fx, py, 32) == ERR_INVALID
        assert lib.kvc_dequantize_row(bad_type, AUTO, py, fx, 32) == ERR_INVALID
        assert lib.kvc_vec_dot(bad_type, AUTO, 32, py, py, o) == ERR_INVALID
        assert gemm(bad_type, AUTO, 1, 1, 32, y, y, x, 1) == ERR_INVALID
    # n not a multiple of the block
    assert lib.kvc_quantize_row(int(Q.Q8_0), AUTO, fx, py, 33) == ERR_INVALID
    assert lib.kvc_dequantize_row(int(Q.Q4_K), AUTO, py, fx, 128) == ERR_INVALID
    assert lib.kvc_vec_dot(int(Q.Q4_0), AUTO, 48, py, py, o) == ERR_INVALID
    assert gemm(Q.Q6_K, AUTO, 1, 1, 255, y, y, x, 1) == ERR_INVALID
    assert lib.kvc_quantize_row(int(Q.Q8_0), AUTO, fx, py, -32) == ERR_INVALID
    # negative sizes, ldo < m, NULL pointers
    assert gemm(Q.Q8_0, AUTO, -1, 1, 32, y, y, x, 1) == ERR_INVALID
    assert gemm(Q.Q8_0, AUTO, 4, 2, 32, y, y, x, 3) == ERR_INVALID
    assert lib.kvc_vec_dot(int(Q.Q8_0), AUTO, 32, ffi.NULL, py, o) == ERR_INVALID
    assert lib.kvc_vec_dot(int(Q.Q8_0), AUTO, 32, py, py, ffi.NULL) == ERR_INVALID
    assert lib.kvc_quantize_row(int(Q.Q8_0), AUTO, ffi.NULL, py, 32) == ERR_INVALID
    # unknown impl values; impls this CPU lacks
    for bad_impl in (-1, 5, 99):
        assert lib.kvc_vec_dot(int(Q.Q8_0), bad_impl, 32, py, py, o) == ERR_INVALID
        assert lib.kvc_quantize_row(int(Q.Q8_0), bad_impl, fx, py, 32) == ERR_INVALID
    for missing in (i for i in (AVX2, AVX512, NEON) if not lib.kvc_cpu_impls() & (1 << i)):
        assert lib.kvc_vec_dot(int(Q.Q8_0), missing, 32, py, py, o) == ERR_UNSUPPORTED
        assert lib.kvc_quantize_row(int(Q.Q8_0), missing, fx, py, 32) == ERR_UNSUPPORTED
        assert gemm(Q.Q8_0, missing, 1, 1, 32, y, y, x, 1) == ERR_UNSUPPORTED
    # operations a type does not have (the k-quant quantizers are tested in test_kquant.py)
    assert lib.kvc_vec_dot(int(Q.Q8_K), AUTO, 256, py, py, o) == ERR_UNSUPPORTED
    assert lib.kvc_vec_dot(int(Q.Q8_1), AUTO, 32, py, py, o) == ERR_UNSUPPORTED
    # n = 0 is a valid empty call
    assert lib.kvc_vec_dot(int(Q.Q4_0), AUTO, 0, py, py, o) == OK and o[0] == 0.0
