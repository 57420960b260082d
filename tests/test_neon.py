"""The aarch64 NEON kernels (native/src/cpu/*neon*.c) against their scalar twins,
on any machine: kernels and twins are cross-compiled with zig into one bare
static image (tests/neon/driver.c supplies the few libc functions) and run in
the Unicorn CPU emulator (tests/neon/emu.py: an ARMv8 "max" CPU, NEON and
dotprod). KVC_NEON_CC=aarch64-linux-gnu-gcc compiles with that GCC instead.

Tolerances (stated once, used below):
  * quantize, dequantize: bit-exact vs the scalar twins (as tests/test_kernels.py).
  * vec_dot of the quantized types (Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K), both the
    baseline (*_neon) and the dotprod (*_neondot) build: bit-exact vs the scalar
    twins (exact integer block sums, then the twins' float operations in their
    order), including Q8_0 weights of -128.
  * vec_dot of F32, F16, BF16: |neon - scalar| <= 1e-6 * sum|w_i a_i| (summation
    order only; the x86 SIMD kernels' tolerance in test_kernels.py).
  * gemm: identical to a loop over vec_dot of the same build.
  * vector ops (as test_runtime_ops.py): softmax and rms_norm rtol 1e-6 (the
    sums' order); silu_mul, axpy, scale and axpy_rows bit-exact.
  * TurboQuant score: |neon - scalar| <= 1e-5 * (sum|qr| * max|c s| + sum|w| *
    max|rnorm| * qjl_c) (test_tq_native.py's float32 summation-order bound for
    random rows; c: centroids, s: group scales); accumulate: <= 1e-5 * max|c s|
    (weights sum to 1 per query). Keys past a query's causal limit are neither
    scored nor accumulated, and a block of tokens scores and accumulates exactly
    as its tokens one at a time; groups not a multiple of 8 use the twins (exact).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

try:  # the test extra installs both; a missing one must fail the run, not skip it
    import unicorn  # noqa: F401
    import ziglang  # noqa: F401
except ImportError as e:
    raise ImportError(f"tests/test_neon.py needs `{e.name}`: pip install -e '.[test]'") from e

from tests.neon.emu import HERE, NATIVE, Machine, build_image  # noqa: E402

SRC = NATIVE / "src"
NEON_FILES = ["quants_neon.c", "quants_neon_dot.c", "quants_neon_dotprod.c", "vec_neon.c", "tq_neon.c"]
SOURCES = ([(SRC / "cpu" / f, ["-Werror"]) for f in NEON_FILES]
           + [(SRC / f, []) for f in ("quants_ref.c", "vec_ref.c", "tq.c", "tq_ref.c")]
           + [(HERE / "driver.c", ["-ffreestanding"])])
# driver.c takes the scalar vector ops from kvc_vec_ops_for(KVC_IMPL_SCALAR); the library's
# (kernels.c) looks the impl up in cpu/dispatch.c's tables, which need pthreads: the bare
# image gets the scalar twins' table directly.
VEC_OPS_FOR = '#include "vec.h"\nconst kvc_vec_ops *kvc_vec_ops_for(int impl) { (void)impl; return &kvc_vec_ops_ref; }\n'


@pytest.fixture(scope="module")
def machine(tmp_path_factory) -> Machine:
    cc = shlex.split(os.environ.get("KVC_NEON_CC", "")) or None
    out = tmp_path_factory.mktemp("neon")
    (out / "vec_ops_for.c").write_text(VEC_OPS_FOR)
    return Machine(build_image(SOURCES + [(out / "vec_ops_for.c", [])], out, cc))


@pytest.fixture
def arm(machine) -> Machine:
    machine.reset()
    return machine


def f16_bytes(v) -> np.ndarray:
    return np.asarray(v, np.float16).reshape(-1, 1).view(np.uint8)


def f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)


# ---------------- weight types: dot products and gemm ----------------

# weight type -> (block size, block bytes, activation type)
WEIGHTS = {"q8_0": (32, 34, "q8_0"), "q4_0": (32, 18, "q8_0"), "q4_1": (32, 20, "q8_1"), "q5_0": (32, 22, "q8_0"),
           "q4_K": (256, 144, "q8_K"), "q6_K": (256, 210, "q8_K"),
           "f32": (1, 4, "f32"), "f16": (1, 2, "f32"), "bf16": (1, 2, "f32")}
ACT_BYTES = {"q8_0": (32, 34), "q8_1": (32, 36), "q8_K": (256, 292), "f32": (1, 4)}
FLOATS = ("f32", "f16", "bf16")
BUILDS = [(t, "neon") for t in WEIGHTS] + [(t, "neondot") for t in WEIGHTS if t not in FLOATS]


def row_bytes(t: str, k: int) -> int:
    bs, ts = WEIGHTS[t][:2] if t in WEIGHTS else ACT_BYTES[t]
    return k // bs * ts


def random_weights(t: str, rows: int, k: int, rng) -> np.ndarray:
    """(rows, row_bytes) of valid blocks: random quants (every bit pattern is valid,
    Q8_0's -128 included) with positive fp16 scales; float types from normals."""
    x = rng.standard_normal((rows, k)).astype(np.float32)
    if t == "f32":
        return x.view(np.uint8)
    if t == "f16":
        return x.astype(np.float16).view(np.uint8)
    if t == "bf16":
        return np.ascontiguousarray((x.view(np.uint32) >> 16).astype(np.uint16)).view(np.uint8)
    bs, ts, _ = WEIGHTS[t]
    nb = rows * k // bs
    b = rng.integers(0, 256, (nb, ts), dtype=np.uint8)
    if t == "q6_K":
        b[:, 208:210] = f16_bytes(rng.uniform(1e-4, 4e-3, nb))
    elif t == "q4_K":
        b[:, 0:4] = f16_bytes(rng.uniform(1e-4, 4e-3, (nb, 2))).reshape(nb, 4)
    else:
        b[:, 0:2] = f16_bytes(rng.uniform(0.01, 2.0, nb))
        if t == "q4_1":
            b[:, 2:4] = f16_bytes(rng.uniform(-1.0, 1.0, nb))
    return b.reshape(rows, -1)


def activations(arm: Machine, at: str, rows: int, k: int, rng) -> np.ndarray:
    """(rows, row_bytes): normals quantized by the scalar twin in the emulator."""
    x = f32(rng.standard_normal((rows, k)) * rng.uniform(0.1, 3.0, (rows, 1)))
    if at == "f32":
        return x.view(np.uint8)
    xa, ya = arm.alloc(x), arm.alloc(rows * row_bytes(at, k))
    for r in range(rows):
        arm.call(f"kvc_quantize_row_{at}_ref", xa + 4 * k * r, ya + row_bytes(at, k) * r, k)
    return arm.read(ya, np.uint8, rows * row_bytes(at, k)).reshape(rows, -1)


def dot_name(t: str, sfx: str) -> str:
    return f"kvc_vec_dot_{t}_{WEIGHTS[t][2]}_{sfx}"


def float_values(t: str, w: np.ndarray) -> np.ndarray:
    if t == "f32":
        return w.view(np.float32).astype(np.float64)
    if t == "f16":
        return w.view(np.float16).astype(np.float64)
    return (w.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("t,sfx", BUILDS, ids=lambda v: v)
def test_vec_dot_matches_scalar(arm, t, sfx):
    rng = np.random.default_rng(len(t) * 7 + len(sfx))
    bs, _, at = WEIGHTS[t]
    sizes = [1, 7, 8, 15, 17, 33, 256, 900] if bs == 1 else [bs, 2 * bs, 8 * bs]
    for k in sizes:
        w, a = random_weights(t, 3, k, rng), activations(arm, at, 3, k, rng)
        for wr, ar in zip(w, a):
            wa, aa = arm.alloc(wr, offset=1), arm.alloc(ar, offset=3)  # unaligned, as in a mmapped GGUF
            got, want = arm.callf(dot_name(t, sfx), k, wa, aa), arm.callf(dot_name(t, "ref"), k, wa, aa)
            if t in FLOATS:
                scale = np.abs(float_values(t, wr) * ar.view(np.float32)).sum()
                assert abs(float(got) - float(want)) <= 1e-6 * scale, (k, got, want)
            else:
                assert got.view(np.uint32) == want.view(np.uint32), (k, got, want)


def test_vec_dot_q8_0_weight_minus_128(arm):
    rng = np.random.default_rng(9)
    w = random_weights("q8_0", 1, 256, rng)
    w.reshape(-1, 34)[:, 2:] = 0x80  # every quant -128 (GGUF files may hold it)
    a = activations(arm, "q8_0", 1, 256, rng)
    wa, aa = arm.alloc(w), arm.alloc(a)
    want = arm.callf("kvc_vec_dot_q8_0_q8_0_ref", 256, wa, aa)
    for sfx in ("neon", "neondot"):
        assert arm.callf(f"kvc_vec_dot_q8_0_q8_0_{sfx}", 256, wa, aa) == want


@pytest.mark.parametrize("t,sfx", BUILDS, ids=lambda v: v)
def test_gemm_equals_vec_dot_loop(arm, t, sfx):
    """Decode (n_tok = 1) and prefill tiles, edge tiles, unaligned operands, ldo padding untouched."""
    rng = np.random.default_rng(11)
    bs, _, at = WEIGHTS[t]
    k = 2 * max(bs, 32) + (3 if bs == 1 else 0)
    wrow, arow = row_bytes(t, k), row_bytes(at, k)
    for m in (1, 7, 13):
        w = arm.alloc(random_weights(t, m, k, rng), offset=1)
        for n_tok in (1, 2, 3, 5):
            a = arm.alloc(activations(arm, at, n_tok, k, rng), offset=1)
            ldo = m + 3
            out = arm.alloc(np.full(n_tok * ldo, np.nan, np.float32), offset=4)
            arm.call(f"kvc_gemm_{t}_{at}_{sfx}", m, n_tok, k, w, a, out, ldo)
            got = arm.read(out, np.float32, n_tok * ldo).reshape(n_tok, ldo)
            want = np.array([[arm.callf(dot_name(t, sfx), k, w + r * wrow, a + i * arow) for r in range(m)]
                             for i in range(n_tok)], np.float32)
            assert np.array_equal(got[:, :m], want), (m, n_tok)
            assert np.isnan(got[:, m:]).all()


# ---------------- quantize / dequantize ----------------

def edge_inputs(n: int, rng) -> list[np.ndarray]:
    """Rounding ties, zero blocks, negative maxima, tiny and huge values, fp16/bf16 specials."""
    ties = (rng.integers(-254, 255, n) / 2).astype(np.float32)
    ties[::32] = 127.0
    neg = rng.standard_normal(n).astype(np.float32)
    neg[::16] = -10.0
    mixed = np.where(np.arange(n) % 64 < 32, 0.0, rng.standard_normal(n)).astype(np.float32)
    special = rng.standard_normal(n).astype(np.float32)
    special[:12] = [np.nan, -np.inf, np.inf, 3.4e38, -0.0, 1.0 + 2**-8, 65519.0, 65520.0, 2.0**-25, 3 * 2.0**-26,
                    1e-7, -6.1e-5]
    return [rng.standard_normal(n).astype(np.float32), ties, np.zeros(n, np.float32), neg,
            (rng.standard_normal(n) * 1e-6).astype(np.float32), (rng.standard_normal(n) * 3e4).astype(np.float32),
            mixed, special]


QUANTIZERS = {"q8_0": (32, 34), "q8_1": (32, 36), "q8_K": (256, 292), "f16": (1, 2), "bf16": (1, 2)}


@pytest.mark.parametrize("t", QUANTIZERS)
def test_quantize_bit_exact(arm, t):
    bs, ts = QUANTIZERS[t]
    n = 1024 + (13 if bs == 1 else 0)
    for x in edge_inputs(n, np.random.default_rng(5)):
        if bs > 1 and not np.isfinite(x).all():
            continue  # the block quantizers' inputs are finite activations
        xa, ya, yb = arm.alloc(x), arm.alloc(n // bs * ts), arm.alloc(n // bs * ts)
        arm.call(f"kvc_quantize_row_{t}_neon", xa, ya, n)
        arm.call(f"kvc_quantize_row_{t}_ref", xa, yb, n)
        assert np.array_equal(arm.read(ya, np.uint8, n // bs * ts), arm.read(yb, np.uint8, n // bs * ts))


@pytest.mark.parametrize("t", ["f16", "bf16", "q8_0", "q4_0"])
def test_dequantize_bit_exact(arm, t):
    rng = np.random.default_rng(3)
    n = 512 + (7 if t in FLOATS else 0)
    if t == "f16":  # every finite half (subnormals, ±0) and ±inf; NaNs: fcvtl quiets signalling ones
        h = rng.integers(0, 1 << 16, n, dtype=np.uint16)
        h = h[(h & 0x7C00) != 0x7C00]
        h[:4] = [0x7C00, 0xFC00, 0x0001, 0x8000]
        data, n = h.view(np.uint8), h.size
    elif t == "bf16":  # any bits: a shift
        data = rng.integers(0, 256, 2 * n, dtype=np.uint8)
    else:
        data = random_weights(t, 1, n, rng)[0]
    xa, ya, yb = arm.alloc(data, offset=1), arm.alloc(4 * n), arm.alloc(4 * n)
    arm.call(f"kvc_dequantize_row_{t}_neon", xa, ya, n)
    arm.call(f"kvc_dequantize_row_{t}_ref", xa, yb, n)
    assert np.array_equal(arm.read(ya, np.uint32, n), arm.read(yb, np.uint32, n))


# ---------------- vector ops ----------------

VEC_SIZES = [1, 7, 8, 9, 64, 100, 4099]
OPS = ["softmax", "rms_norm", "silu_mul", "axpy", "scale", "axpy_rows"]  # kvc_vec_ops field order


def exp_ties() -> np.ndarray:
    """x where float32(x * log2(e)) is exactly k + 1/2: the inputs on which exp's
    rounding of n (to nearest even, as nearbyintf) decides the result."""
    log2e, out = np.float32(1.44269504088896341), []
    for k in range(-120, 120):
        x = np.float32((k + 0.5) / float(log2e))
        for _ in range(4):
            if np.float32(x * log2e) == np.float32(k + 0.5):
                out.append(x)
            x = np.nextafter(x, np.float32(np.inf))
    return np.array(out, np.float32)


def vec_tables(arm: Machine) -> dict[str, dict[str, int]]:
    ref = arm.call("kvc_neon_test_vec_ref")
    return {name: dict(zip(OPS, (int(p) for p in arm.read(base, np.uint64, len(OPS)))))
            for name, base in (("ref", ref), ("neon", arm.symbols["kvc_vec_ops_neon"]))}


@pytest.mark.parametrize("n", VEC_SIZES)
def test_vec_ops(arm, n):
    rng = np.random.default_rng(n)
    x = f32(rng.standard_normal(n) * 20)
    x[0] = -1e30  # a masked-out score
    xr, w = f32(rng.standard_normal(n) * 3), f32(rng.standard_normal(n))
    g, u = f32(rng.standard_normal(n) * 8), f32(rng.standard_normal(n))
    ties = -exp_ties()[::-1][:n // 2]  # silu takes exp(-g)
    g[:ties.size] = ties
    res = {}
    for impl, fn in vec_tables(arm).items():
        arm.reset()
        xa, out, y = arm.alloc(x), arm.alloc(4 * n), arm.alloc(u)
        arm.call(fn["softmax"], n, xa)
        arm.call(fn["rms_norm"], n, arm.alloc(xr), arm.alloc(w), np.float32(1e-6), out)
        res[impl] = [arm.read(xa, np.float32, n), arm.read(out, np.float32, n)]
        arm.call(fn["silu_mul"], n, arm.alloc(g), arm.alloc(u), out)
        arm.call(fn["axpy"], n, np.float32(0.37), arm.alloc(g), y)
        res[impl] += [arm.read(out, np.float32, n), arm.read(y, np.float32, n)]
        arm.call(fn["scale"], n, np.float32(-1.7), y)
        res[impl].append(arm.read(y, np.float32, n))
        rows = [arm.alloc(f32(rng_rows.uniform(-1, 1, n))) for rng_rows in [np.random.default_rng(n + k)
                                                                         for k in range(7)]]
        coef = arm.alloc(f32(np.arange(7) * 9.5 - 30))
        arm.call(fn["axpy_rows"], n, 7, coef, arm.alloc(np.array(rows, np.uint64)), y)
        res[impl].append(arm.read(y, np.float32, n))
    (sm, rms, *exact), (sm0, rms0, *exact0) = res["neon"], res["ref"]
    np.testing.assert_allclose(sm, sm0, rtol=1e-6, atol=1e-12)  # only the sum's order differs
    np.testing.assert_allclose(rms, rms0, rtol=1e-6)
    for got, want in zip(exact, exact0):  # silu_mul, axpy, scale, axpy_rows
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


# ---------------- TurboQuant ----------------

# (d, n_hi, hi_bits, lo_bits, qjl_hi, qjl_lo, scale8, scale_base): uniform 4-bit (tbl, 8-key
# blocks), an 8-bit QJL split over 3 bits, 6/2 bits with QJL on both, 10-bit codes, 1 bit, groups
# of 36 + 28 channels (not multiples of 8: the scalar twins run), and 8-bit scales (odd row sizes,
# a QJL norm after a 1-byte scale)
TQ_LAYOUTS = [(128, 0, 4, 4, 0, 0, 0, 0), (128, 32, 8, 3, 1, 0, 0, 0), (96, 64, 6, 2, 1, 1, 0, 0),
              (64, 32, 10, 5, 0, 0, 0, 0), (64, 0, 1, 1, 0, 0, 0, 0), (64, 36, 4, 3, 0, 0, 0, 0),
              (64, 16, 5, 3, 1, 0, 1, -224), (40, 0, 3, 3, 0, 0, 1, -224)]
TQ_SHAPES = [(1, 1, 1), (6, 8, 13), (3, 5, 37), (1, 48, 1), (4, 9, 8)]  # (grp, tokens, n0)


class TqCase:
    """A layout built by tq_layout_init in the emulator, random rows and queries."""

    def __init__(self, arm: Machine, cfg, rng):
        d, n_hi, hb, lb = cfg[:4]
        self.arm, self.d = arm, d
        cbs = [f32(np.sort(rng.choice(np.linspace(-2, 2, 4096), 1 << b, replace=False))) for b in (hb, lb)]
        self.cb_max = max(np.abs(c).max() for c in cbs)
        self.L = arm.alloc(1024)
        info = arm.alloc(4 * 8)  # 7 ints
        assert arm.call("kvc_neon_test_tq_layout", self.L, arm.alloc(np.array(cfg, np.int32)), arm.alloc(cbs[0]),
                        arm.alloc(cbs[1]), info) == 0
        info = arm.read(info, np.int32, 7)
        self.row_bytes, self.scale8 = int(info[0]), bool(cfg[6])
        self.groups = [(int(info[1 + 3 * k]), bool(info[2 + 3 * k]), int(info[3 + 3 * k])) for k in range(2)
                       if info[1 + 3 * k] >= 0]
        sizes = [n_hi, d - n_hi] if n_hi else [d]
        self.qjl_c = max((np.sqrt(np.pi / 2 / m) for m, (_, qjl, _) in zip(sizes, self.groups) if qjl), default=0.0)

    def rows(self, n: int, rng) -> int:
        rows = rng.integers(0, 256, (n, self.row_bytes), dtype=np.uint8)
        for off, qjl, rn in self.groups:
            if not self.scale8:  # 8-bit scales: any byte is a step of the grid (base -224: ŝ ≤ 2^(31/32) < 2)
                rows[:, off:off + 2] = f16_bytes(rng.uniform(0.25, 2.0, n))
            if qjl:
                rows[:, rn:rn + 2] = f16_bytes(rng.uniform(0.0, 1.0, n))
        return self.arm.alloc(np.concatenate([rows.reshape(-1), np.zeros(8, np.uint8)]))  # slack: 3-byte code reads

    def run(self, impl: str, qr, w, p, grp, n0, rows) -> tuple[np.ndarray, np.ndarray]:
        arm, (nq, d), n = self.arm, qr.shape, p.shape[1]
        q = arm.alloc(np.array([arm.alloc(f32(qr)), arm.alloc(f32(w))], np.uint64))  # tq_query
        out = arm.alloc(np.full((nq, n), np.nan, np.float32))
        arm.call(f"tq_score_{impl}", self.L, q, nq, grp, n0, rows, out, n)
        acc = arm.alloc(np.zeros((nq, d), np.float32))
        arm.call(f"tq_accum_{impl}", self.L, arm.alloc(f32(p)), n, nq, grp, n0, rows, acc)
        return arm.read(out, np.float32, nq * n).reshape(nq, n), arm.read(acc, np.float32, nq * d).reshape(nq, d)


@pytest.mark.parametrize("cfg", TQ_LAYOUTS, ids=lambda c: "d{}-hi{}x{}-lo{}-qjl{}{}-s{}".format(*c[:7]))
@pytest.mark.parametrize("grp,nt,n0", TQ_SHAPES)
def test_tq_kernels(arm, cfg, grp, nt, n0):
    rng = np.random.default_rng(grp * 1000 + nt * 10 + n0)
    case = TqCase(arm, cfg, rng)
    d, nq, n = cfg[0], grp * nt, n0 + nt - 1
    rows = case.rows(n, rng)
    qr, w = f32(rng.standard_normal((nq, d))), f32(rng.standard_normal((nq, d)))
    seen = np.arange(n)[None, :] < (n0 + np.arange(nq) // grp)[:, None]
    p = rng.uniform(0, 1, (nq, n))
    p = f32(np.where(seen, p / np.where(seen, p, 0).sum(1, keepdims=True), np.nan))  # NaN: must not be read

    ref, ref_acc = case.run("ref", qr, w, p, grp, n0, rows)
    got, acc = case.run("neon", qr, w, p, grp, n0, rows)
    vmax = case.cb_max * 2.0  # max |centroid * scale|
    s_tol = 1e-5 * (np.abs(qr).sum(1, keepdims=True) * vmax + np.abs(w).sum(1, keepdims=True) * case.qjl_c)
    assert np.array_equal(np.isnan(got), ~seen)  # scored exactly the visible keys
    assert np.all(np.abs(got - ref)[seen] <= np.broadcast_to(s_tol, seen.shape)[seen])
    assert np.isfinite(acc).all() and np.abs(acc - ref_acc).max() <= 1e-5 * vmax
    if any(m % 8 for m in (cfg[1] or d, d - cfg[1])):
        assert np.array_equal(got[seen], ref[seen]) and np.array_equal(acc, ref_acc)  # the twins ran
    for t in range(nt):  # token by token, as decode sees them
        sl = slice(t * grp, (t + 1) * grp)
        one, one_acc = case.run("neon", qr[sl], w[sl], np.ascontiguousarray(p[sl, :n0 + t]), grp, n0 + t, rows)
        np.testing.assert_array_equal(one, got[sl, :n0 + t])
        np.testing.assert_array_equal(one_acc, acc[sl])


# ---------------- the whole runtime builds for aarch64 ----------------

def test_runtime_links_for_aarch64(tmp_path):
    """The sources the build compiles for aarch64 Linux (kvconvert/_build_native.py)
    compile with the runtime's flags and link into a shared library with no undefined
    symbols: the NEON kernel tables (cpu/dispatch.c) name only kernels that exist."""
    from kvconvert._build_native import ROOT, native_sources

    sources = native_sources("Linux", "aarch64")
    assert not any("avx" in s for s in sources) and any("neon" in s for s in sources)
    cmd = [sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-linux-gnu", "-shared", "-fPIC", "-O1",
           "-std=gnu11", "-pthread", "-fno-math-errno", "-ffp-contract=off", "-Wall", "-Wno-unused-function",
           "-I", str(NATIVE / "include"), "-I", str(SRC), "-Wl,--no-undefined", "-o", str(tmp_path / "libkvc.so"),
           *(str(ROOT / s) for s in sources), "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
