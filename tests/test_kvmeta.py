"""KV-cache metadata in the GGUF: written by the converter, used by the runtime
by default, still loadable by llama.cpp."""

from __future__ import annotations

import numpy as np
import pytest

from kvconvert import convert
from kvconvert.kvcache.kvmeta import CacheMeta
from kvconvert.kvcache.turboquant import KConfig

runtime = pytest.importorskip("kvconvert.runtime.engine")
pytest.importorskip("kvconvert._kvc", reason="native runtime not built (pip install -e .)")
TOKENS = [5, 17, 250, 3, 99, 42, 7, 300, 11, 12, 13, 200, 64, 1, 2, 77]


def test_runtime_uses_file_cache_metadata(tiny_models, tmp_path):
    from kvconvert.models.source import load_model

    src = load_model(tiny_models["qwen2-hd64"])
    a = src.args
    rng = np.random.default_rng(0)
    configs = [KConfig(d=64, n_hi=16, hi_bits=6, lo_bits=3, qjl_lo=True), KConfig(d=64, lo_bits=5)]
    meta = CacheMeta(k_type="tq", v_type="tq", k_configs=configs, v_configs=[KConfig(d=64, lo_bits=4)] * 2,
                     k_perm=np.stack([rng.permutation(64) for _ in range(a.num_hidden_layers)]),
                     k_mean=rng.standard_normal((a.num_hidden_layers, a.num_key_value_heads, 64)).astype(np.float32),
                     center_pairs=0, seed=1234, n_sink=3)
    out = tmp_path / "m.gguf"
    convert(src, out, weights="f32", kv_meta=meta)
    model = runtime.Model(out)
    back = model.cache_meta
    assert back.k_configs == configs and back.seed == 1234 and back.n_sink == 3
    np.testing.assert_array_equal(back.k_perm, meta.k_perm)
    np.testing.assert_array_equal(back.k_mean, meta.k_mean)
    auto = model.context(n_ctx=32)
    explicit = model.context(runtime.ContextParams(
        n_ctx=32, type_k="tq", type_v="tq", tq_k_layers=tuple(configs), tq_v_layers=tuple(meta.v_configs),
        tq_seed=1234, k_center=True, k_mean=meta.k_mean, k_perm=meta.k_perm, n_sink=3))
    assert auto.params.n_sink == 3
    plain = model.context(n_ctx=32, type_k="f16", type_v="f16")
    per_layer = [c.bits_per_value() * 64 / 8 + 4.25 * 64 / 8 for c in configs]
    assert auto.kv_bytes_per_token == a.num_key_value_heads * sum(per_layer)
    got, want = auto.eval(TOKENS, all_logits=True), explicit.eval(TOKENS, all_logits=True)
    np.testing.assert_array_equal(got, want)  # same configs, permutation, means and seed
    # a different permutation changes the codes, so the metadata really is used
    shuffled = model.context(runtime.ContextParams(
        n_ctx=32, type_k="tq", type_v="tq", tq_k_layers=tuple(configs), tq_v_layers=tuple(meta.v_configs),
        tq_seed=1234, k_center=True, k_mean=meta.k_mean, k_perm=meta.k_perm[:, ::-1].copy()))
    assert not np.array_equal(shuffled.eval(TOKENS, all_logits=True), got)
    assert not np.array_equal(model.context(n_ctx=32, n_sink=0).eval(TOKENS, all_logits=True), got)  # sinks used
    ref = plain.eval(TOKENS, all_logits=True)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.3
    # the file still loads in llama.cpp (unknown kvconvert.* keys are ignored)
    from tests import oracle_llama_cpp as oracle

    cpp = oracle.logits(oracle.load(out, n_ctx=32), TOKENS)
    assert np.linalg.norm(cpp - ref) / np.linalg.norm(ref) < 2e-3


def test_scale8_metadata_round_trip(tiny_models, tmp_path):
    """8-bit scales travel per layer and side (kvconvert.k_cache/v_cache.scale8_base), the runtime
    uses the file's grid (another grid gives other logits), its rows are 1 byte per group shorter,
    a side may keep fp16 scales in some layers, and a base out of range is refused."""
    from kvconvert.base.errors import InputError
    from kvconvert.formats.gguf_keys import Keys

    k = [KConfig(d=64, n_hi=16, hi_bits=6, lo_bits=3, scale_base=-20), KConfig(d=64, lo_bits=5, scale_base=-10)]
    fp16_one = [k[0], KConfig(d=64, lo_bits=5)]  # a side may mix: layer 1 keeps its fp16 scales
    v = [KConfig(d=64, lo_bits=4, scale_base=-96)] * 2
    out = tmp_path / "s8.gguf"
    convert(tiny_models["qwen2-hd64"], out, weights="f32", kv_meta=CacheMeta(k_type="tq", v_type="tq", k_configs=k,
                                                                              v_configs=v, seed=7))
    model = runtime.Model(out)
    assert model.cache_meta.k_configs == k and model.cache_meta.v_configs == v
    a = model.args
    ctx = model.context(n_ctx=32)
    # per KV head and token: K (1 + 12) + (1 + 18) split, 1 + 40; V 1 + 32 twice
    assert ctx.kv_bytes_per_token == a.num_key_value_heads * 139
    assert ctx.kv_bytes_per_token == a.num_key_value_heads * sum(c.bits_per_value() * 64 / 8 for c in k + v)
    got = ctx.eval(TOKENS, all_logits=True)
    # the grid is the set 2^(j/32) cut to 255 steps: another base changes the codes only where it cuts
    # (a shift of a few steps relabels the same values); 200 steps lower clips the K scales
    other = [c.with_scale_base(c.scale_base - 200) for c in k]
    moved = model.context(runtime.ContextParams(n_ctx=32, type_k="tq", type_v="tq", tq_k_layers=tuple(other),
                                                tq_v_layers=tuple(v), tq_seed=7, k_center=True))
    assert not np.array_equal(moved.eval(TOKENS, all_logits=True), got)
    mixed = tmp_path / "mixed.gguf"
    convert(tiny_models["qwen2-hd64"], mixed, weights="f32", kv_meta=CacheMeta(k_type="tq", k_configs=fp16_one))
    m2 = runtime.Model(mixed)
    assert m2.cache_meta.k_configs == fp16_one
    assert m2.context(n_ctx=32).kv_bytes_per_token == a.num_key_value_heads * (32 + 42 + 2 * 64 * 2)  # V f16
    plain = model.context(n_ctx=32, type_k="f16", type_v="f16").eval(TOKENS, all_logits=True)
    assert np.linalg.norm(got - plain) / np.linalg.norm(plain) < 0.3
    bad = tmp_path / "bad.gguf"
    meta = CacheMeta(k_type="tq", k_configs=k)
    convert(tiny_models["qwen2-hd64"], bad, weights="f32", kv_meta=meta)
    data = bytearray(bad.read_bytes())
    key = Keys.KCache.SCALE8_BASE.encode()
    i = data.index(key) + len(key) + 4 + 4 + 8  # value type, array item type, count: the first base (i32)
    data[i:i + 4] = np.int32(5000).tobytes()
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="scale8_base"):
        runtime.Model(bad).context(n_ctx=16)


def test_per_side_scale_metadata(tiny_models, tmp_path):
    """K and V may use different TurboQuant scales: kvconvert.v_cache.scale is written only when V's
    differs from K's (a file without it: V uses k_cache.scale, as files written before the key), the
    runtime encodes each side with its own (the logits differ from V on K's scale), and a side that
    mixes scales is refused at write time."""
    import gguf

    from kvconvert.formats.gguf_keys import Keys

    k = [KConfig(d=64, lo_bits=3, scale="proj")] * 2
    v_ls, v_proj = [KConfig(d=64, lo_bits=2)] * 2, [KConfig(d=64, lo_bits=2, scale="proj")] * 2
    files = {}
    for name, v in (("split", v_ls), ("same", v_proj)):
        files[name] = tmp_path / f"{name}.gguf"
        convert(tiny_models["qwen2-hd64"], files[name], weights="f32",
                kv_meta=CacheMeta(k_type="tq", v_type="tq", k_configs=k, v_configs=v, seed=3))
        back = runtime.Model(files[name]).cache_meta
        assert back.k_configs == k and back.v_configs == v, name
    keys = {n: set(gguf.GGUFReader(f).fields) for n, f in files.items()}
    assert Keys.VCache.SCALE in keys["split"] and Keys.VCache.SCALE not in keys["same"]
    logits = {n: runtime.Model(f).context(n_ctx=32).eval(TOKENS, all_logits=True) for n, f in files.items()}
    assert not np.array_equal(logits["split"], logits["same"])
    with pytest.raises(ValueError, match="mix TurboQuant scales"):
        convert(tiny_models["qwen2-hd64"], tmp_path / "mixed.gguf", weights="f32",
                kv_meta=CacheMeta(k_type="tq", k_configs=[k[0], KConfig(d=64, lo_bits=3)]))
    assert not (tmp_path / "mixed.gguf").exists()


def test_bad_cache_metadata(tiny_models, tmp_path):
    from kvconvert.base.errors import InputError

    meta = CacheMeta(k_type="tq", k_configs=[KConfig(d=64)] * 2, k_perm=np.zeros((2, 64), np.int32))
    out = tmp_path / "bad.gguf"
    convert(tiny_models["qwen2-hd64"], out, weights="f32", kv_meta=meta)
    with pytest.raises(InputError, match="bad.gguf.*not a permutation"):
        runtime.Model(out).context(n_ctx=16)


def test_sink_default_without_metadata(tiny_ggufs):
    """A file without kvconvert metadata: TurboQuant caches keep DEFAULT_SINK positions
    exact unless told otherwise; n_sink=0 turns it off."""
    from kvconvert.kvcache.kvmeta import DEFAULT_SINK

    model = runtime.Model(tiny_ggufs["llama-hd64-tied"])
    assert model.cache_meta is None
    assert model.context(n_ctx=16, type_k="tq4").params.n_sink == DEFAULT_SINK == 1
    assert model.context(n_ctx=16, type_k="tq4", n_sink=0).params.n_sink == 0
