"""The calibrated K basis (kvcache/kbasis.py, issue 19 direction j): TurboQuant K coded as k·A after
the permutation, queries scored as q·A⁻ᵀ.

Checked: the basis fit (ordering, float16 values, the pair keeps every score); the runtime against
the numpy twin of test_recent_window (keys k̂ = rt(k·A)·A⁻¹) with and without the recent window;
an identity basis is bit-identical to none; the file metadata and the profile JSON round-trip and
refuse a singular or malformed basis; Metal refuses a basis (auto runs the CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kvconvert.base.errors import InputError
from kvconvert.kvcache import kbasis

from .test_recent_window import TOKENS, rel, twin_logits

runtime = pytest.importorskip("kvconvert.runtime.engine")
pytest.importorskip("kvconvert._kvc", reason="native runtime not built (pip install -e .)")


def random_bases(L: int, Hk: int, d: int, seed: int = 3, cond: float = 8.0) -> np.ndarray:
    """Well-conditioned non-orthogonal bases U·diag(s)·Vᵀ, s spanning cond, on float16 values."""
    rng = np.random.default_rng(seed)
    out = np.empty((L, Hk, d, d))
    for l in range(L):
        for h in range(Hk):
            u, _ = np.linalg.qr(rng.standard_normal((d, d)))
            v, _ = np.linalg.qr(rng.standard_normal((d, d)))
            out[l, h] = (u * np.geomspace(1, 1 / cond, d)) @ v.T
    return out.astype(np.float16).astype(np.float64)


def test_fit_basis_orders_weighted_energy_and_keeps_scores():
    """fit_basis on anisotropic queries and keys: float16 values; the key energy weighted by the
    queries' second moment (C_q^{1/2} in the basis' column space) decreases column by column; and
    ⟨q·A⁻ᵀ, k·A⟩ = ⟨q, k⟩ to 1e-9 relative (float64)."""
    rng = np.random.default_rng(0)
    d = 16
    mix = rng.standard_normal((d, d)) * np.geomspace(4, 0.1, d)
    q, k = rng.standard_normal((4000, d)) @ mix, rng.standard_normal((3000, d)) @ mix.T
    a = kbasis.fit_basis(q, k)
    np.testing.assert_array_equal(a, a.astype(np.float16).astype(np.float64))
    kp = k @ a
    energy = (kp ** 2).mean(0)
    assert energy[0] > 10 * energy[-1]
    qb = q @ kbasis.query_basis(a)
    np.testing.assert_allclose((qb[:50] * kp[:50]).sum(-1), (q[:50] * k[:50]).sum(-1), rtol=1e-9, atol=1e-9)
    assert kbasis.problem(a[None, None]) is None
    sing = a.copy()
    sing[:, 0] = sing[:, 1]
    assert "ill-conditioned" in kbasis.problem(sing[None, None])
    assert "non-finite" in kbasis.problem(np.full((1, 1, 2, 2), np.nan))


@pytest.mark.parametrize("name", ["qwen2-hd64", "llama-hd128-bias-rope3"])
def test_basis_matches_numpy_twin(tiny_ggufs, name):
    """Random well-conditioned bases against the numpy twin (keys rt(k·A)·A⁻¹): equal within float
    rounding (the runtime applies A and A⁻ᵀ in float32; bound 2e-4 as the window's twin), with a
    window of 0 and 5, and far from the run without a basis (the basis is really applied)."""
    path = tiny_ggufs[name]
    model = runtime.Model(path)
    a = model.args
    seed = 4321
    bases = random_bases(a.num_hidden_layers, a.num_key_value_heads, a.head_dim)
    kw = dict(n_ctx=64, n_batch=7, type_k="tq3", type_v="tq2", k_center=False, n_sink=0, tq_seed=seed, n_threads=2)
    for w in (0, 5):
        got = model.context(n_recent=w, k_basis=bases, **kw).eval(TOKENS, all_logits=True)
        want = twin_logits(path, TOKENS, w, "tq3", "tq2", seed, k_basis=bases)
        plain = model.context(n_recent=w, **kw).eval(TOKENS, all_logits=True)
        assert rel(got, want) <= 2e-4, (name, w, rel(got, want))
        assert rel(got, plain) > 10 * rel(got, want), (name, w)


@pytest.mark.parametrize("name", ["qwen2-hd64", "llama-hd128-bias-rope3", "mistral-hd64-swa8"])
def test_basis_following_rope_matches_numpy_twin(tiny_ggufs, name):
    """A basis following RoPE (blocks of 6 and 16 positions; batches of 7 straddle blocks, the
    sliding-window model's first visible key moves): the runtime, which turns the queries scoring each
    block, against the numpy twin, which turns the keys (kbasis.read_back with block starts) — equal
    within the 2e-4 bound above, and far from the same basis fixed (the turn is really applied)."""
    path = tiny_ggufs[name]
    model = runtime.Model(path)
    a = model.args
    seed = 99
    bases = random_bases(a.num_hidden_layers, a.num_key_value_heads, a.head_dim, seed=5)
    kw = dict(n_ctx=64, n_batch=7, type_k="tq3", type_v="tq2", k_center=False, n_sink=0, tq_seed=seed, n_threads=2,
              k_basis=bases)
    fixed = model.context(n_recent=0, **kw).eval(TOKENS, all_logits=True)
    for block, w in ((6, 0), (16, 5)):
        got = model.context(n_recent=w, k_basis_block=block, **kw).eval(TOKENS, all_logits=True)
        want = twin_logits(path, TOKENS, w, "tq3", "tq2", seed, k_basis=bases, k_basis_block=block)
        assert rel(got, want) <= 2e-4, (name, block, w, rel(got, want))
        if w == 0:
            assert rel(got, fixed) > 10 * rel(got, want), (name, block)


def test_identity_basis_is_bit_identical(tiny_ggufs):
    """An identity basis (with a permutation, sinks and centering) gives the same bits as none:
    the basis product of the identity is exact in float32."""
    model = runtime.Model(tiny_ggufs["qwen2-hd64"])
    a = model.args
    L, Hk, d = a.num_hidden_layers, a.num_key_value_heads, a.head_dim
    perm = np.stack([np.random.default_rng(l).permutation(d) for l in range(L)]).astype(np.int32)
    kw = dict(n_ctx=64, n_batch=5, type_k="tq:split=16,hi=4,lo=2", type_v="tq3", n_sink=2, k_perm=perm)
    got = model.context(k_basis=kbasis.identity(L, Hk, d), **kw).eval(TOKENS, all_logits=True)
    np.testing.assert_array_equal(got, model.context(**kw).eval(TOKENS, all_logits=True))


def test_basis_shape_is_checked(tiny_ggufs):
    model = runtime.Model(tiny_ggufs["qwen2-hd64"])
    with pytest.raises(InputError, match="K basis has shape"):
        model.context(n_ctx=32, type_k="tq3", k_basis=np.eye(4)[None, None])


def test_metadata_round_trip_and_refusals(tmp_path):
    """CacheMeta writes the bases as kvconvert.k_cache.basis and reads them back; a singular one, or
    one on a file without a TurboQuant K cache, is one InputError naming the key."""
    import gguf

    from kvconvert.formats.gguf_io import open_gguf as open_reader
    from kvconvert.formats.gguf_keys import Keys
    from kvconvert.kvcache import turboquant as tq
    from kvconvert.kvcache.kvmeta import CacheMeta

    class Dims:
        num_hidden_layers, num_key_value_heads, head_dim = 2, 1, 8

    def write(meta: CacheMeta, block: int | None = None) -> Path:
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        meta.add_to_gguf(w)
        if block is not None:  # the key alone, as a broken writer might leave it
            w.add_uint32(Keys.KCache.BASIS_BLOCK, block)
        w.add_tensor("x", np.zeros(4, np.float32))
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file()
        w.close()
        return path

    bases = random_bases(2, 1, 8)
    cfgs = [tq.KConfig(d=8, lo_bits=3, hi_bits=3)] * 2
    back = CacheMeta.from_gguf(open_reader(write(CacheMeta(k_configs=cfgs, k_basis=bases))), Dims)
    np.testing.assert_array_equal(back.k_basis, bases.astype(np.float32))
    bad = bases.copy()
    bad[1, 0, :, 2] = 0
    with pytest.raises(InputError, match=Keys.KCache.BASIS.replace(".", r"\.")):
        CacheMeta.from_gguf(open_reader(write(CacheMeta(k_configs=cfgs, k_basis=bad))), Dims)
    with pytest.raises(InputError, match="TurboQuant K caches only"):
        CacheMeta.from_gguf(open_reader(write(CacheMeta(k_type="f16", k_basis=bases))), Dims)
    back = CacheMeta.from_gguf(open_reader(write(CacheMeta(k_configs=cfgs, k_basis=bases, k_basis_block=512))), Dims)
    assert back.k_basis_block == 512
    assert CacheMeta.from_gguf(open_reader(write(CacheMeta(k_configs=cfgs, k_basis=bases))), Dims).k_basis_block == 0
    with pytest.raises(InputError, match=Keys.KCache.BASIS_BLOCK.replace(".", r"\.") + " without"):
        CacheMeta.from_gguf(open_reader(write(CacheMeta(k_configs=cfgs), block=512)), Dims)


def test_profile_json_round_trip_and_refusals():
    from kvconvert.conversion.profile import ModelShape, Transforms

    shape = ModelShape("m", "llama", 2, 2, 1, 8)
    bases = random_bases(2, 1, 8)
    obj = Transforms(k_basis=bases).to_json()
    assert obj["k_basis"]["dtype"] == "float16"
    np.testing.assert_array_equal(Transforms.from_json(obj, shape).k_basis, bases)
    for broken, msg in ((dict(obj["k_basis"], base64="AAAA"), "expected 128"), ([[1.0]], "must be"),
                        ({"dtype": "float16", "base64": kbasis.to_text(np.zeros((2, 1, 8, 8)))}, "ill-conditioned")):
        with pytest.raises(ValueError, match=msg):
            Transforms.from_json(dict(obj, k_basis=broken), shape)
    assert Transforms.from_json(dict(obj, k_basis_block=512), shape).k_basis_block == 512
    assert Transforms(k_basis=bases, k_basis_block=256).to_json()["k_basis_block"] == 256
    for block, msg in ((-1, "integer in"), (True, "integer in"), (2.5, "integer in")):
        with pytest.raises(ValueError, match=msg):
            Transforms.from_json(dict(obj, k_basis_block=block), shape)
    with pytest.raises(ValueError, match="needs transforms.k_basis"):
        Transforms.from_json({"k_basis_block": 64}, shape)


def test_metal_refuses_a_basis():
    """host.h refuses a K basis with KVC_ERR_UNSUPPORTED so auto runs the context on the CPU
    (checked in the source: no Metal device here)."""
    src = (Path(__file__).resolve().parents[1] / "native" / "src" / "metal" / "host.h").read_text()
    assert "p->tq_k[l].basis" in src and "a calibrated K basis runs on the CPU backend only" in src
