"""HF → GGUF conversion and GGUF → HF import on tiny random models.

Every conversion is checked by logits: the reference model run on the weights
read back from the written file must reproduce the source's logits.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

from kvconvert import convert, import_gguf
from kvconvert.models.arch.base import interleave_pairs
from kvconvert.formats.gguf_io import field_value, open_gguf, tensor_map
from kvconvert.formats.gguf_keys import Keys
from kvconvert.models.source import load_model
from kvconvert.models.reference import forward

TOKENS = [5, 17, 250, 3, 99, 42, 7, 300, 11, 12, 13, 200, 64, 1, 2, 77]

# ‖Δlogits‖ / ‖logits‖ allowed per weight type on the tiny random models: f32 is
# exact; the others are about 3x the largest value measured over the four models
# (f16 7.6e-4, bf16 5.8e-3, q8_0 1.9e-2, q4_0 0.25 — random weights quantize badly).
TOLERANCE = {"f32": 1e-6, "f16": 3e-3, "bf16": 2e-2, "q8_0": 6e-2, "q4_0": 0.6}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("weights", list(TOLERANCE))
def test_convert_preserves_logits(tiny_model, tmp_path, weights):
    src = load_model(tiny_model)
    want = forward(src.args, src.weights, TOKENS)
    out = tmp_path / "m.gguf"
    r = convert(tiny_model, out, weights=weights)
    assert out.exists() and r.file_bytes == out.stat().st_size
    got_model = load_model(out)
    assert got_model.args == src.args
    got = forward(got_model.args, got_model.weights, TOKENS)
    err = rel_err(got, want)
    assert err <= TOLERANCE[weights], err
    if weights in ("q8_0", "q4_0"):
        assert err > 0  # the weights really were re-encoded
    assert not list(tmp_path.glob("*.part"))


def test_gguf_layout_and_metadata(tiny_models, tmp_path):
    """llama-arch Q/K rows are written interleaved; qwen2 rows unchanged; keys as llama.cpp expects."""
    for name, arch, permuted in (("llama-hd64-tied", "llama", True), ("qwen2-hd64", "qwen2", False)):
        src = load_model(tiny_models[name])
        out = tmp_path / f"{name}.gguf"
        convert(src, out, weights="f32")
        reader = open_gguf(out)
        tensors = tensor_map(reader)
        assert field_value(reader, "general.architecture") == arch
        assert field_value(reader, f"{arch}.block_count") == src.args.num_hidden_layers
        assert field_value(reader, f"{arch}.attention.head_count_kv") == src.args.num_key_value_heads
        assert field_value(reader, "general.file_type") == gguf.LlamaFileType.ALL_F32
        assert field_value(reader, Keys.KVConvert.SCHEMA_VERSION) == 1
        assert field_value(reader, "tokenizer.ggml.model") == "gpt2"
        assert len(field_value(reader, "tokenizer.ggml.tokens")) == src.args.vocab_size
        assert set(tensors) == {s.gguf for s in src.specs}
        assert ("output.weight" in tensors) == (not src.args.tie_word_embeddings)
        k_hf = src.weights.get("model.layers.1.self_attn.k_proj.weight")
        k_file = np.asarray(tensors["blk.1.attn_k.weight"].data)
        expect = interleave_pairs(k_hf, src.args.num_key_value_heads) if permuted else k_hf
        assert np.array_equal(k_file, expect)
        assert permuted == (not np.array_equal(k_file, k_hf))


def test_quantized_types_per_tensor(tiny_models, tmp_path):
    out = tmp_path / "q4.gguf"
    convert(tiny_models["qwen2-hd64"], out, weights="q4_0")
    types = {t.name: t.tensor_type for t in open_gguf(out).tensors}
    Q = gguf.GGMLQuantizationType
    assert types["blk.0.attn_q.weight"] == Q.Q4_0
    assert types["blk.0.attn_q.bias"] == Q.F32
    assert types["blk.0.attn_norm.weight"] == Q.F32
    assert types["token_embd.weight"] == Q.Q8_0 and types["output.weight"] == Q.Q8_0


def test_import_gguf_round_trip(tiny_model, tmp_path):
    """HF → GGUF(f32) → HF gives the same logits, config and tokenizer."""
    src = load_model(tiny_model)
    gg = tmp_path / "m.gguf"
    convert(src, gg, weights="f32")
    out = tmp_path / "hf"
    r = import_gguf(gg, out)
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= set(r.files)
    back = load_model(out)
    assert back.args == src.args
    np.testing.assert_array_equal(back.weights.get("model.layers.0.self_attn.k_proj.weight"),
                                  src.weights.get("model.layers.0.self_attn.k_proj.weight"))
    want = forward(src.args, src.weights, TOKENS)
    assert rel_err(forward(back.args, back.weights, TOKENS), want) <= 1e-6
    from tokenizers import Tokenizer

    text = "It is a truth universally acknowledged, café 1234"
    t0 = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    t1 = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert t1.encode(text).ids == t0.encode(text).ids


def test_import_shards_large_models(tiny_models, tmp_path):
    gg = tmp_path / "m.gguf"
    convert(tiny_models["qwen2-hd64"], gg, weights="f16")
    out = tmp_path / "hf"
    r = import_gguf(gg, out, dtype="bf16", shard_bytes=200_000)
    shards = [f for f in r.files if f.endswith(".safetensors")]
    assert len(shards) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    back, src = load_model(out), load_model(gg)
    assert rel_err(forward(back.args, back.weights, TOKENS), forward(src.args, src.weights, TOKENS)) <= 3e-2


def test_import_refuses_non_empty_dir(tiny_models, tmp_path):
    gg = tmp_path / "m.gguf"
    convert(tiny_models["qwen2-hd64"], gg, weights="f16")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    from kvconvert.base.errors import OutputError

    with pytest.raises(OutputError, match="not empty"):
        import_gguf(gg, out)
    assert (out / "keep.txt").read_text() == "mine"
    import_gguf(gg, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_import_gguf_default_keeps_the_source_precision(tiny_models, tmp_path):
    """dtype auto: an f16 GGUF imports to f16 safetensors exactly, an f32 one to f32, a quantized one
    to f16 with every weight within 2^-11 of its dequantized value (issue 16)."""
    from kvconvert.formats.safetensors_io import SafetensorsIndex

    src = load_model(tiny_models["qwen2-hd64"])
    name = "model.layers.0.self_attn.q_proj.weight"
    for weights, want in (("f32", "F32"), ("f16", "F16"), ("q8_0", "F16")):
        gg = convert(src, tmp_path / f"{weights}.gguf", weights=weights).output
        r = import_gguf(gg, tmp_path / weights)
        idx = SafetensorsIndex.from_dir(tmp_path / weights)
        assert idx.dtype(name) == want and r.dtype == want.lower()
        assert json.loads((tmp_path / weights / "config.json").read_text())["torch_dtype"] == \
            {"F32": "float32", "F16": "float16"}[want]
        exact = load_model(gg).weights.get(name)
        got = idx.get(name)
        if weights == "q8_0":
            assert np.all(np.abs(got - exact) <= np.abs(exact) * 2.0**-11)
            assert not np.array_equal(got, exact)  # really rounded: f32 would have been exact
        else:
            np.testing.assert_array_equal(got, exact)
