"""TurboQuant in C against its numpy twin (kvconvert/kvcache/turboquant.py): identical
codes, scales and QJL bits; scores and decodes within float32 rounding; the
block (query tokens × GQA group, causal) kernels against the scalar twin; and the
TurboQuant/centering paths of the runtime on tiny models."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kvconvert import convert
from kvconvert.kvcache import turboquant as tq
from kvconvert.kvcache.types import is_tq
from kvconvert.runtime.engine import SCALE_MODES

kvc = pytest.importorskip("kvconvert._kvc", reason="native runtime not built (pip install -e .)")
ffi, lib = kvc.ffi, kvc.lib
SEED, LAYER = 0x6B7663, 3


def fp(a):
    return ffi.cast("float *", ffi.from_buffer(a))


def impls():
    return [i for i in (1, 2, 3) if lib.kvc_cpu_impls() & (1 << i)]


def s8(base):
    """(scale8, scale_base) arguments of the C entry points for a KConfig.scale_base"""
    return int(base is not None), base or 0


def c_encode(x, m, bits, qjl, scale_mode, group, base=None):
    cb = np.ascontiguousarray(tq.codebook(m, bits), dtype=np.float32)
    rb = lib.kvc_tq_row_bytes(m, bits, int(qjl), s8(base)[0])
    rows = np.zeros((x.shape[0], rb), np.uint8)
    assert lib.kvc_tq_encode(1, m, bits, int(qjl), 0, *s8(base), scale_mode, fp(cb), SEED, LAYER, group, fp(x),
                             x.shape[0], ffi.from_buffer(rows)) == 0
    return cb, rows


def unpack(rows, m, bits, qjl, base=None):
    """Row bytes -> (scale: fp16, or the 8-bit step | rnorm fp16 | None, codes, qjl bits | None), per the
    layout in tq.h."""
    off = 2 if base is None else 1
    scale = rows[:, 0:2].copy().view(np.float16)[:, 0] if base is None else rows[:, 0].copy()
    rnorm = None
    if qjl:
        rnorm = rows[:, off:off + 2].copy().view(np.float16)[:, 0]
        off += 2
    nbytes = (m * bits + 7) // 8
    bitstream = np.unpackbits(rows[:, off:off + nbytes], axis=1, bitorder="little")
    idx = np.arange(m)[:, None] * bits + np.arange(bits)[None, :]
    codes = (bitstream[:, idx] * (1 << np.arange(bits))).sum(-1)
    signs = None
    if qjl:
        signs = np.unpackbits(rows[:, off + nbytes:off + nbytes + (m + 7) // 8], axis=1, bitorder="little")[:, :m]
    return scale, rnorm, codes, signs


CASES = [(m, b, q) for m in (32, 64, 96, 128) for b in (1, 2, 3, 4, 5, 8) for q in (False, True)] + [(64, 10, False)]


@pytest.mark.parametrize("m,bits,qjl", CASES)
@pytest.mark.parametrize("scale", tq.SCALES)
@pytest.mark.parametrize("base", [None, 40], ids=["fp16", "s8"])
def test_c_encode_equals_numpy(m, bits, qjl, scale, base):
    """Identical codes, scales and QJL bits; 8-bit scales: the grid of base 40 spans
    2^1.3 .. 2^9.2, so most of the 0.1..50-scaled rows (norms ~0.6..560) land inside it, the
    smallest ones on its lowest step, and the zero row on step 0."""
    rng = np.random.default_rng(m * 100 + bits)
    x = (rng.standard_normal((200, m)) * rng.uniform(0.1, 50, (200, 1))).astype(np.float32)
    x[0] = 0  # a zero vector
    x[1, : m // 2] += 40  # a strong outlier half
    _, rows = c_encode(x, m, bits, qjl, SCALE_MODES[scale], group=1, base=base)
    enc = tq.encode_group(x, tq.GroupConfig(m, bits, qjl), SEED, LAYER, 1, scale=scale, scale_base=base)
    s, rn, codes, signs = unpack(rows, m, bits, qjl, base)
    np.testing.assert_array_equal(codes, enc.codes)
    if base is None:
        np.testing.assert_array_equal(s.view(np.uint16), np.asarray(enc.scale, np.float16).view(np.uint16))
    else:
        assert s[0] == 0 and (s[1:] > 0).all()
        np.testing.assert_array_equal(tq.scale8_values(base)[s], enc.scale)
    if qjl:
        np.testing.assert_array_equal(signs.astype(bool), enc.qjl_bits)
        np.testing.assert_array_equal(rn.view(np.uint16), np.asarray(enc.rnorm, np.float16).view(np.uint16))


@pytest.mark.parametrize("m,bits,qjl", [(64, 4, False), (64, 3, True), (128, 4, True), (96, 2, False), (64, 8, False),
                                        (32, 6, False)])
@pytest.mark.parametrize("base", [None, -63], ids=["fp16", "s8"])
def test_c_scores_and_decode_match_numpy(m, bits, qjl, base):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((300, m)).astype(np.float32) * 3
    q = rng.standard_normal(m).astype(np.float32)
    cb, rows = c_encode(x, m, bits, qjl, 1, group=0, base=base)
    cfg = tq.KConfig(d=m, n_hi=0, lo_bits=bits, qjl_lo=qjl, scale_base=base)
    encs = tq.encode(x, cfg, SEED, LAYER)
    want = tq.scores(q, encs, cfg, SEED, LAYER).reshape(-1)
    dec_want = tq.decode(encs, cfg, SEED, LAYER, qjl=False)
    scale = np.abs(q).sum() * np.abs(x).max()
    for impl in impls():
        out = np.empty(300, np.float32)
        assert lib.kvc_tq_score(impl, m, bits, int(qjl), 0, *s8(base), fp(cb), SEED, LAYER, 0, fp(q),
                                ffi.from_buffer(rows), 300, fp(out)) == 0
        assert np.abs(out - want).max() <= 1e-5 * scale  # float32 summation order only
        dec = np.empty((300, m), np.float32)
        assert lib.kvc_tq_decode(impl, m, bits, int(qjl), 0, *s8(base), fp(cb), SEED, LAYER, 0,
                                 ffi.from_buffer(rows), 300, fp(dec)) == 0
        np.testing.assert_allclose(dec, dec_want, rtol=1e-5, atol=1e-5 * np.abs(x).max())


def test_bad_tq_arguments():
    cb = np.ascontiguousarray(tq.codebook(64, 4), dtype=np.float32)
    x = np.zeros((1, 64), np.float32)
    rows = np.zeros((1, 64), np.uint8)
    assert lib.kvc_tq_row_bytes(64, 11, 0, 0) == -1
    assert lib.kvc_tq_row_bytes(64, 4, 0, 0) == 34 and lib.kvc_tq_row_bytes(64, 4, 0, 1) == 33
    assert lib.kvc_tq_row_bytes(64, 3, 1, 1) == 1 + 2 + 24 + 8
    assert lib.kvc_tq_encode(1, 64, 4, 0, 0, 0, 0, 5, fp(cb), 0, 0, 0, fp(x), 1, ffi.from_buffer(rows)) == 1  # scale mode
    assert lib.kvc_tq_encode(1, 60, 4, 1, 0, 0, 0, 1, fp(cb), 0, 0, 0, fp(x), 1, ffi.from_buffer(rows)) == 1  # QJL m % 8
    bad = cb[::-1].copy()
    assert lib.kvc_tq_encode(1, 64, 4, 0, 0, 0, 0, 1, fp(bad), 0, 0, 0, fp(x), 1, ffi.from_buffer(rows)) == 1  # not ascending
    for base in (-2049, 2049):  # the 8-bit grid's base out of range
        assert lib.kvc_tq_encode(1, 64, 4, 0, 0, 1, base, 1, fp(cb), 0, 0, 0, fp(x), 1, ffi.from_buffer(rows)) == 1


def test_scale8_grid():
    """The grid (numpy twin): ŝ(e) = 2^((e + base)/32) to float32 precision, step 0 is 0, the
    nearest step is chosen, and scale8_base puts SCALE8_HEADROOM × the largest scale under the top."""
    for base in (-2048, -300, -17, 0, 33, 2048):
        v = tq.scale8_values(base)
        e = np.arange(1, 256)
        np.testing.assert_allclose(v[1:], 2.0 ** ((e + base) / 32), rtol=1e-7)
        assert v[0] == 0 and np.all(np.diff(v) > 0)
        s = np.exp(np.random.default_rng(base + 4096).uniform(np.log(v[1]), np.log(v[255]), 1000))
        got = v[tq.scale8_quantize(s, base)]
        best = v[np.abs(s[:, None] - v[None, :]).argmin(1)]
        np.testing.assert_array_equal(got, best)
        assert np.abs(got / s - 1).max() <= 2 ** (1 / 64) - 1 + 1e-6  # half a step
    assert tq.scale8_quantize([0.0, -1.0, np.nan], 0).tolist() == [0, 0, 0]
    for top in (1e-3, 0.7, 13.0, 900.0):
        v = tq.scale8_values(tq.scale8_base(top))
        assert v[255] >= tq.SCALE8_HEADROOM * top > v[255] / 2 ** (1 / 32)


# ---- block kernels: nq queries (tokens × GQA group) per decoded row, causal ----

# kvc_tq_block_test is exported by the library but is not in the C ABI (kvc.h): load it with ctypes
_P, _I = ctypes.c_void_p, ctypes.c_int
_block_test = ctypes.CDLL(kvc.__file__).kvc_tq_block_test
_block_test.restype = _I
_block_test.argtypes = [_I] * 7 + [_P, _P, ctypes.c_ulonglong, _I, _I, _I, _I, _P, _I, _P, _I, _I, _I, _P, _P, _P]


def c_block(impl, cfg, keys, q, grp, n0, p):
    """Scores (nq, n) (NaN where a query does not see the key) and unrotated V
    accumulators (nq, d) of the C kernels, for query r seeing keys 0 .. n0 + r // grp - 1."""
    status, scores, acc = c_block_status(impl, cfg, keys, q, grp, n0, p, cfg.trellis)
    assert status == 0
    return scores, acc


def c_block_status(impl, cfg, keys, q, grp, n0, p, trellis):
    """c_block's call with the layer's trellis setting given apart: (status, scores, acc)."""
    cbs = [np.ascontiguousarray(tq.group_codebook(g), np.float32) for g in cfg.groups()]
    cb_hi, cb_lo = (cbs[0], cbs[1]) if cfg.n_hi else (None, cbs[0])
    keys, q, p = (np.ascontiguousarray(x, np.float32) for x in (keys, q, p))
    (nq, d), n = q.shape, keys.shape[0]
    scores = np.full((nq, n), np.nan, np.float32)
    acc = np.empty((nq, d), np.float32)
    ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
    status = _block_test(impl, d, cfg.n_hi, cfg.hi_bits, cfg.lo_bits, int(cfg.qjl_hi), int(cfg.qjl_lo), ptr(cb_hi),
                         ptr(cb_lo), SEED, LAYER, *s8(cfg.scale_base), trellis, ptr(keys), n, ptr(q), nq, grp, n0,
                         ptr(p), ptr(scores), ptr(acc))
    return status, scores, acc


def test_a_trellis_layer_no_group_can_hold_is_refused():
    """tq_layout_init gives trellis codes to the groups that can hold them (1..6 bits) and refuses a
    layer where none can, or with QJL (turboquant.KConfig refuses the same configs)."""
    rng = np.random.default_rng(0)
    keys, q = rng.standard_normal((4, 64)).astype(np.float32), rng.standard_normal((2, 64)).astype(np.float32)
    p = np.full((2, 4), 0.25, np.float32)
    ok = tq.KConfig(64, n_hi=8, hi_bits=7, lo_bits=5, trellis=6)
    assert c_block_status(1, ok, keys, q, 1, 3, p, 6)[0] == 0
    for cfg in [tq.KConfig(64, n_hi=8, hi_bits=8, lo_bits=7), tq.KConfig(64, n_hi=8, hi_bits=7, lo_bits=5, qjl_hi=True),
                tq.KConfig(64, lo_bits=7)]:
        assert c_block_status(1, cfg, keys, q, 1, 3, p, 6)[0] != 0, cfg.spec()


BLOCK_LAYOUTS = [tq.KConfig(64, lo_bits=4), tq.KConfig(96, lo_bits=2), tq.KConfig(40, lo_bits=3),
                 tq.KConfig(36, lo_bits=3),  # d % 8 != 0: the SIMD kernels fall back to the scalar twins
                 tq.KConfig(128, n_hi=32, hi_bits=8, lo_bits=3, qjl_hi=True),
                 tq.KConfig(128, n_hi=64, hi_bits=6, lo_bits=4, qjl_hi=True, qjl_lo=True),
                 # every code width's lookup in AVX-512 (1..4 one register, 5 two, 6 four, 7-8 gather,
                 # 9-10 read one by one) and groups of m % 16 == 8 (a half last vector, QJL on it)
                 tq.KConfig(64, lo_bits=5), tq.KConfig(48, lo_bits=1),
                 tq.KConfig(64, n_hi=8, hi_bits=8, lo_bits=6, qjl_hi=True),
                 tq.KConfig(72, n_hi=24, hi_bits=7, lo_bits=2, qjl_lo=True),
                 tq.KConfig(48, n_hi=16, hi_bits=10, lo_bits=4), tq.KConfig(40, n_hi=24, hi_bits=9, lo_bits=5),
                 # 8-bit scales: odd row sizes (1 + 32 + 1 + 24 bytes), a QJL norm after a 1-byte scale
                 tq.KConfig(64, n_hi=16, hi_bits=8, lo_bits=4, scale_base=-63),
                 tq.KConfig(64, n_hi=32, hi_bits=5, lo_bits=3, qjl_hi=True, scale_base=-63),
                 tq.KConfig(40, lo_bits=3, scale_base=-63),
                 # trellis codes (the SIMD tables fall back to the scalar kernels): a ring that wraps
                 # inside one byte (1 bit), a split with 8-bit scales, 6-bit states of 12 bits
                 tq.KConfig(64, lo_bits=3, trellis=6), tq.KConfig(16, lo_bits=1, trellis=6),
                 tq.KConfig(64, n_hi=16, hi_bits=5, lo_bits=2, scale_base=-63, trellis=6),
                 tq.KConfig(40, n_hi=8, hi_bits=6, lo_bits=4, trellis=6),
                 # a layer with a Lloyd–Max hi group (7, 8 bits) beside a trellis lo group
                 tq.KConfig(64, n_hi=8, hi_bits=7, lo_bits=5, trellis=6),
                 tq.KConfig(64, n_hi=16, hi_bits=8, lo_bits=6, scale_base=-63, trellis=6)]
# (queries per token, tokens, keys seen by the first token): single queries and tokens,
# blocks starting at key 0, row counts that are and are not multiples of 8 and 16, tiles
# (8 keys in AVX2, 16 in AVX-512) that straddle the causal edge
BLOCK_SHAPES = [(1, 1, 1), (6, 1, 100), (6, 8, 1), (6, 8, 13), (3, 5, 37), (1, 48, 1), (2, 24, 9), (7, 3, 64),
                (4, 9, 8), (3, 12, 10)]


@pytest.mark.parametrize("cfg", BLOCK_LAYOUTS, ids=lambda c: f"d{c.d}-{c.spec()}")
@pytest.mark.parametrize("grp,nt,n0", BLOCK_SHAPES)
def test_block_kernels(cfg, grp, nt, n0):
    """Every implementation against the scalar twin and numpy (float32 summation order:
    1e-5 of the largest possible term sum), keys past a query's causal limit never
    scored (their entries stay NaN) nor accumulated (their weights are NaN), and a
    block gives exactly what its tokens give one at a time."""
    rng = np.random.default_rng(grp * 1000 + nt * 10 + n0)
    nq, n, d = grp * nt, n0 + nt - 1, cfg.d
    keys = (rng.standard_normal((n, d)) * rng.uniform(0.5, 4, (n, 1))).astype(np.float32)
    q = rng.standard_normal((nq, d)).astype(np.float32)
    vis = n0 + np.arange(nq) // grp  # keys each query sees
    seen = np.arange(n)[None, :] < vis[:, None]
    p = rng.uniform(0, 1, (nq, n)).astype(np.float32)
    p = np.where(seen, p / np.where(seen, p, 0).sum(1, keepdims=True), np.nan).astype(np.float32)

    encs = tq.encode(keys, cfg, SEED, LAYER)
    want = tq.scores(q, encs, cfg, SEED, LAYER)
    dec = tq.decode(encs, cfg, SEED, LAYER, qjl=False).astype(np.float64)
    want_acc = np.nan_to_num(p.astype(np.float64)) @ dec
    s_tol = 1e-5 * np.abs(q).sum(1, keepdims=True) * np.abs(keys).max()
    a_tol = 1e-5 * np.abs(dec).max()

    ref, ref_acc = c_block(1, cfg, keys, q, grp, n0, p)
    for impl in impls():
        got, acc = c_block(impl, cfg, keys, q, grp, n0, p)
        assert np.array_equal(np.isnan(got), ~seen), impl  # scored exactly the visible keys
        assert np.all(np.abs(got - ref)[seen] <= np.broadcast_to(s_tol, seen.shape)[seen]), impl
        assert np.all(np.abs(got - want)[seen] <= np.broadcast_to(s_tol, seen.shape)[seen]), impl
        assert np.isfinite(acc).all() and np.abs(acc - ref_acc).max() <= a_tol, impl
        assert np.abs(acc - want_acc).max() <= a_tol, impl
        for t in range(nt):  # token by token, as decode sees them
            rows = slice(t * grp, (t + 1) * grp)
            one, one_acc = c_block(impl, cfg, keys[:n0 + t], q[rows], grp, n0 + t, p[rows, :n0 + t])
            np.testing.assert_array_equal(one, got[rows, :n0 + t])
            np.testing.assert_array_equal(one_acc, acc[rows])


def test_auto_dispatch_avx512_unless_forced(tmp_path):
    """AUTO (what the runtime calls) runs the AVX-512 kernels on a CPU with them and the
    AVX2 ones under KVC_FORCE_IMPL=avx2 (read once per process, hence subprocesses);
    the two are told apart by their float summation order (bitwise different scores)."""
    if not lib.kvc_cpu_impls() & (1 << 3):
        pytest.skip("CPU without AVX-512")
    rng = np.random.default_rng(3)
    keys, q = rng.standard_normal((41, 64)).astype(np.float32), rng.standard_normal((14, 64)).astype(np.float32)
    p = np.full((14, 41), 0.02, np.float32)
    np.savez(tmp_path / "in.npz", keys=keys, q=q, p=p)
    want = {impl: c_block(impl, tq.KConfig(64, lo_bits=4), keys, q, 7, 40, p) for impl in (2, 3)}
    assert not np.array_equal(want[2][0], want[3][0], equal_nan=True)
    code = ("import sys, numpy as np; from tests.test_tq_native import c_block, tq; d = np.load(sys.argv[1]); "
            "s, a = c_block(0, tq.KConfig(64, lo_bits=4), d['keys'], d['q'], 7, 40, d['p']); np.savez(sys.argv[2], s=s, a=a)")
    for force, impl in ((None, 3), ("avx2", 2)):
        env = {k: v for k, v in os.environ.items() if k != "KVC_FORCE_IMPL"} | ({"KVC_FORCE_IMPL": force} if force else {})
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], env=env,
                       cwd=Path(__file__).resolve().parent.parent, check=True, timeout=300)
        out = np.load(tmp_path / "out.npz")
        np.testing.assert_array_equal(out["s"], want[impl][0], err_msg=str(force))
        np.testing.assert_array_equal(out["a"], want[impl][1], err_msg=str(force))


# ---- the runtime's TurboQuant and centering paths on tiny models ----

runtime = pytest.importorskip("kvconvert.runtime.engine")
TOKENS = [5, 17, 250, 3, 99, 42, 7, 300, 11, 12, 13, 200, 64, 1, 2, 77, 123, 8, 9, 10, 31, 32, 33, 34]


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_centering_is_exact(tiny_ggufs):
    """With an f32 cache, K centering (first-batch or given mean, any number of
    pairs) changes scores only by float rounding: the positional correction is exact."""
    for name, path in tiny_ggufs.items():
        model = runtime.Model(path)
        base = model.context(n_ctx=64, type_k="f32", type_v="f32", k_center=False).eval(TOKENS, all_logits=True)
        a = model.args
        mean = np.random.default_rng(0).standard_normal((a.num_hidden_layers, a.num_key_value_heads, a.head_dim)) * 5
        for kw in ({"k_center_pairs": 0}, {"k_center_pairs": 3}, {"k_center_pairs": 0, "k_mean": mean}):
            ctx = model.context(n_ctx=64, type_k="f32", type_v="f32", k_center=True, n_batch=7, **kw)
            got = np.concatenate([ctx.eval(TOKENS[:10], all_logits=True), ctx.eval(TOKENS[10:], all_logits=True)])
            assert rel(got, base) <= 1e-5, (name, kw, rel(got, base))


def test_tq_caches_approach_exact_with_bits(tiny_ggufs):
    """Logit error falls with bits: tq8 K+V within 2% of the f32 cache on every
    tiny model (measured 0.8-1.0%), and tq8 is 5x better than tq4."""
    for name, path in tiny_ggufs.items():
        model = runtime.Model(path)
        exact = model.context(n_ctx=64, type_k="f32", type_v="f32").eval(TOKENS, all_logits=True)
        e8 = rel(model.context(n_ctx=64, type_k="tq8", type_v="tq8").eval(TOKENS, all_logits=True), exact)
        e4 = rel(model.context(n_ctx=64, type_k="tq4", type_v="tq4").eval(TOKENS, all_logits=True), exact)
        assert e8 <= 0.02 and e8 * 5 <= e4, (name, e8, e4)


def test_tq_split_and_qjl_run(tiny_ggufs):
    model = runtime.Model(tiny_ggufs["qwen2-hd128-bf16"])
    exact = model.context(n_ctx=64, type_k="f32", type_v="f32").eval(TOKENS, all_logits=True)
    for spec in ("tq:split=32,hi=8,lo=3,qjl=hi", "tq:split=64,hi=6,lo=4,qjl=both", "tq3:qjl=lo"):
        ctx = model.context(n_ctx=64, type_k=spec, type_v="f16")
        assert rel(ctx.eval(TOKENS, all_logits=True), exact) < 0.3
        cfg = tq.KConfig.parse(spec, 128)
        assert ctx.kv_bytes_per_token == model.args.num_hidden_layers * model.args.num_key_value_heads * (
            cfg.bits_per_value() * 128 / 8 + 128 * 2)


def test_bad_tq_spec(tiny_ggufs):
    from kvconvert.base.errors import InputError

    model = runtime.Model(tiny_ggufs["qwen2-hd64"])
    with pytest.raises(InputError, match="unknown option"):
        model.context(n_ctx=16, type_k="tq:foo=1")
    with pytest.raises(InputError, match="unknown cache type"):
        model.context(n_ctx=16, type_k="q3_k")


def test_cli_tq_override(capsys, tiny_ggufs, tmp_path):
    """--ctk/--ctv take TurboQuant specs; tq8 is near the f16 base, tq2 further."""
    import json

    from kvconvert.cli import main
    from tests.tiny import CORPUS

    text = tmp_path / "t.txt"
    text.write_text(" ".join(CORPUS * 6))
    base = tmp_path / "base.logp"
    common = [str(tiny_ggufs["qwen2-hd64"]), "--text", str(text), "--ctx", "32", "--chunks", "2", "--json"]
    assert main(["eval", *common, "--save-logits", str(base)]) == 0
    capsys.readouterr()
    kld = {}
    for spec in ("tq8", "tq2"):
        assert main(["eval", *common, "--kld-base", str(base), "--ctk", spec, "--ctv", spec]) == 0
        kld[spec] = json.loads(capsys.readouterr().out)["kld"]
    assert kld["tq8"] < 0.01 and kld["tq2"] > 5 * kld["tq8"]
    with pytest.raises(SystemExit) as exc:  # argparse rejects it with usage and the reason
        main(["eval", *common, "--ctk", "q3_k"])
    assert exc.value.code == 2 and "unknown cache type" in capsys.readouterr().err


@pytest.mark.parametrize("spec_k,spec_v,n_sink", [("tq4", "tq4", 0), ("tq4", "tq4", 3),
                                                  ("tq:split=32,hi=8,lo=3,qjl=hi", "tq3", 1), ("tq4", "f16", 2),
                                                  ("f16", "tq4", 5), ("f16", "f16", 0), ("q8_0", "q4_0", 0),
                                                  ("q4_0", "f32", 0)])
def test_tq_prefill_equals_token_by_token(tiny_ggufs, spec_k, spec_v, n_sink):
    """Attention scores a block of query tokens per cached row read (TurboQuant: decoded); the
    logits of a 24-token prefill in one batch equal those of the same tokens fed one
    at a time (decode's path), with 1 or 2 threads and batches of 5, with K centering
    (a given mean), a K channel permutation, V centering and attention sinks kept
    exactly (some sinks inside a block, some before it). Measured: identical bits
    (a score does not depend on the block it is computed in); tolerance 1e-6."""
    for name, path in tiny_ggufs.items():
        model = runtime.Model(path)
        a = model.args
        rng = np.random.default_rng(5)
        kw = dict(n_ctx=64, type_k=spec_k, type_v=spec_v, k_center=True, n_sink=n_sink,
                  k_mean=rng.standard_normal((a.num_hidden_layers, a.num_key_value_heads, a.head_dim)) * 5,
                  v_mean=rng.standard_normal((a.num_hidden_layers, a.num_key_value_heads, a.head_dim)))
        if is_tq(spec_k):
            kw["k_perm"] = np.stack([rng.permutation(a.head_dim) for _ in range(a.num_hidden_layers)])
        batch = model.context(n_threads=2, **kw).eval(TOKENS, all_logits=True)
        ctx = model.context(n_threads=2, **kw)
        one = np.concatenate([ctx.eval([t], all_logits=True) for t in TOKENS])
        assert rel(one, batch) <= 1e-6, (name, rel(one, batch))
        assert rel(model.context(n_threads=1, **kw).eval(TOKENS, all_logits=True), batch) <= 1e-6, name
        ctx = model.context(n_threads=2, n_batch=5, **kw)
        parts = np.concatenate([ctx.eval(TOKENS[:13], all_logits=True), ctx.eval(TOKENS[13:], all_logits=True)])
        assert rel(parts, batch) <= 1e-6, name
        if is_tq(spec_k) or is_tq(spec_v):
            exact = model.context(n_ctx=64, type_k="f32", type_v="f32").eval(TOKENS, all_logits=True)
            assert rel(batch, exact) > 1e-3, name  # the cache really is TurboQuant


def test_sinks_are_exact(tiny_ggufs):
    """Attention sinks: positions < n_sink keep an f16 copy of their key (scores) and
    of their value's coding error (values). With every position a sink, a 2-bit
    TurboQuant K+V cache is as exact as an f16 cache (measured rel. logit error
    1.6-2.6e-4 vs f16's 2.7-3.9e-4; bound 1e-3), while without sinks it is off by
    ~45%. With 4 sinks the first 4 tokens' logits are bit-identical to the all-sink
    run (a fixed K mean: the first-batch mean would depend on the later tokens)."""
    for name, path in tiny_ggufs.items():
        model = runtime.Model(path)
        a = model.args
        rng = np.random.default_rng(9)
        shape = (a.num_hidden_layers, a.num_key_value_heads, a.head_dim)
        kw = dict(n_ctx=64, type_k="tq2", type_v="tq2", k_mean=rng.standard_normal(shape) * 3,
                  v_mean=rng.standard_normal(shape))
        exact = model.context(n_ctx=64, type_k="f32", type_v="f32").eval(TOKENS, all_logits=True)
        every = model.context(n_sink=len(TOKENS), **kw).eval(TOKENS, all_logits=True)
        four = model.context(n_sink=4, n_batch=6, **kw).eval(TOKENS, all_logits=True)
        none = model.context(n_sink=0, **kw).eval(TOKENS, all_logits=True)
        assert rel(every, exact) <= 1e-3, (name, rel(every, exact))
        assert rel(none, exact) > 0.1, name
        assert np.array_equal(four[:4], every[:4]), name
        assert rel(four, exact) < rel(none, exact), name


def test_bad_sink_count(tiny_ggufs):
    model = runtime.Model(tiny_ggufs["qwen2-hd64"])
    with pytest.raises(runtime.NativeError, match="n_sink must be 0..64"):
        model.context(n_ctx=128, type_k="tq4", n_sink=65)
