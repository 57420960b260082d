"""Issue 14: a regression corpus of bad files.

Generators derive bad inputs of every class the issue lists from the tiny
models (conftest.py): GGUFs with mutated metadata (types, ranges, non-UTF-8
strings, NaN/Inf, kvconvert.* cache metadata, schema version), Hugging Face
directories with mutated config.json fields, bad policies and profiles, bad
calibration files, and a FIFO given as a model. Each is run through the CLI
entry points that read it (in-process, ``kvconvert.cli.main``) and must give:
exit code 2, one stderr line ``kvconvert: error: ...`` naming the file (and the
key where there is one), no traceback, no partial or hidden file left, every
input byte-for-byte unchanged.

Plus a bounded fuzz test of the native loader: mutated tiny GGUFs loaded
through ``kvconvert.runtime.engine.Model`` (and evaluated when they load) in a child
process, which may raise only InputError/KVConvertError, never crash.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from kvconvert.conversion.calibrate import Calibration
from kvconvert.formats.gguf_io import open_gguf
from tests.test_no_data_loss import TEXT, calib_file, leftovers, refused, tree_hashes  # noqa: F401  (fixtures)

VT = gguf.GGUFValueType
DROP = object()


# --------------------------------------------------------------------------- generators

def write_gguf(src: Path, dst: Path, edits: dict[str, Any] | None = None,
               tensors: dict[str, np.ndarray] | None = None) -> Path:
    """Copy the GGUF src to dst with metadata edits: key -> value (same type as before), or
    (value, type) / (value, ARRAY, sub-type) to change or add it, or DROP. Strings may be bytes
    (written as they are, so they need not be UTF-8). ``tensors`` replaces tensor data (f32)."""
    edits = dict(edits or {})
    reader = open_gguf(src)
    arch = edits.pop("general.architecture", reader.fields["general.architecture"].contents())
    w = gguf.GGUFWriter(str(dst), "x")
    w.kv_data[0].clear()  # the writer's own general.architecture; ours comes next, possibly as bytes
    w.add_key_value("general.architecture", arch, VT.STRING)

    def add(key, val, types):
        if types[0] == VT.ARRAY:
            w.add_key_value(key, val, VT.ARRAY, sub_type=types[-1])
        else:
            w.add_key_value(key, val, types[0])

    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key in edits:
            e = edits.pop(key)
            if e is DROP:
                continue
            if isinstance(e, tuple):
                add(key, e[0], list(e[1:]))
            else:
                add(key, e, field.types)
        else:
            add(key, field.contents(), field.types)
    for key, e in edits.items():  # new keys
        add(key, e[0], list(e[1:]))
    for t in reader.tensors:
        if tensors and t.name in tensors:
            w.add_tensor(t.name, tensors[t.name].astype(np.float32))
        else:
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def tq_meta(L: int, extra: dict | None = None) -> dict:
    """kvconvert cache metadata of a valid TurboQuant K / f16 V file of L layers."""
    meta = {"kvconvert.k_cache.type": ("tq", VT.STRING), "kvconvert.v_cache.type": ("f16", VT.STRING),
            "kvconvert.k_cache.n_hi": ([0] * L, VT.ARRAY, VT.UINT32),
            "kvconvert.k_cache.hi_bits": ([4] * L, VT.ARRAY, VT.UINT32),
            "kvconvert.k_cache.lo_bits": ([4] * L, VT.ARRAY, VT.UINT32),
            "kvconvert.k_cache.center_pairs": (0, VT.UINT32),
            "kvconvert.rotation_seed": (7, VT.UINT64), "kvconvert.layout": ("portable", VT.STRING)}
    meta.update(extra or {})
    return meta


L, HK, D = 2, 2, 64  # the qwen2-hd64 tiny model
KMEAN_NAN = [0.0] * (L * HK * D)
KMEAN_NAN[5] = math.nan
VMEAN_INF = [0.0] * (L * HK * D)
VMEAN_INF[-1] = math.inf
BAD_UTF8 = b"qwen2\xff\xfe"

# name -> (metadata edits, key or phrase the message must name); all on the qwen2-hd64 f32 GGUF
GGUF_CASES: dict[str, tuple[dict, str]] = {
    "block_count_over_tensors": ({"qwen2.block_count": 3}, "qwen2.block_count"),
    "block_count_string": ({"qwen2.block_count": ("2", VT.STRING)}, "qwen2.block_count"),
    "head_count_zero": ({"qwen2.attention.head_count": 0}, "qwen2.attention.head_count"),
    "head_count_kv_huge": ({"qwen2.attention.head_count_kv": (1 << 40, VT.UINT64)}, "head_count_kv"),
    "embedding_length_float": ({"qwen2.embedding_length": (256.0, VT.FLOAT32)}, "qwen2.embedding_length"),
    "feed_forward_huge": ({"qwen2.feed_forward_length": (1 << 31, VT.UINT32)}, "qwen2.feed_forward_length"),
    "context_length_huge": ({"qwen2.context_length": (1 << 40, VT.UINT64)}, "qwen2.context_length"),
    "vocab_size_1e9": ({"qwen2.vocab_size": 10**9}, "qwen2.vocab_size"),
    "rms_eps_nan": ({"qwen2.attention.layer_norm_rms_epsilon": math.nan}, "layer_norm_rms_epsilon"),
    "rms_eps_zero": ({"qwen2.attention.layer_norm_rms_epsilon": 0.0}, "layer_norm_rms_epsilon"),
    "rms_eps_string": ({"qwen2.attention.layer_norm_rms_epsilon": ("tiny", VT.STRING)}, "layer_norm_rms_epsilon"),
    "rope_base_inf": ({"qwen2.rope.freq_base": math.inf}, "qwen2.rope.freq_base"),
    "rope_base_nan": ({"qwen2.rope.freq_base": math.nan}, "qwen2.rope.freq_base"),
    "rope_base_negative": ({"qwen2.rope.freq_base": -10000.0}, "qwen2.rope.freq_base"),
    "bos_negative": ({"tokenizer.ggml.bos_token_id": (-1, VT.INT32)}, "bos_token_id"),
    "arch_not_utf8": ({"general.architecture": BAD_UTF8}, "general.architecture"),
    "name_not_utf8": ({"general.name": b"tiny\xc3("}, "general.name"),
    "schema_99": ({"kvconvert.schema_version": 99}, "kvconvert.schema_version"),
    "schema_string": ({"kvconvert.schema_version": ("1", VT.STRING)}, "kvconvert.schema_version"),
    "schema_missing": ({"kvconvert.schema_version": DROP}, "kvconvert.schema_version"),
    "kvconvert_version_not_utf8": ({"kvconvert.version": b"\xff"}, "kvconvert.version"),
    "k_type_int": ({**tq_meta(L), "kvconvert.k_cache.type": (5, VT.UINT32)}, "kvconvert.k_cache.type"),
    "k_type_unknown": ({**tq_meta(L), "kvconvert.k_cache.type": ("q3_k", VT.STRING)}, "kvconvert.k_cache.type"),
    "seed_negative": ({**tq_meta(L), "kvconvert.rotation_seed": (-1, VT.INT64)}, "kvconvert.rotation_seed"),
    "center_pairs_2_31": ({**tq_meta(L), "kvconvert.k_cache.center_pairs": (1 << 31, VT.UINT32)},
                          "kvconvert.k_cache.center_pairs"),
    "layout_unknown": ({**tq_meta(L), "kvconvert.layout": ("sideways", VT.STRING)}, "kvconvert.layout"),
    "sink_tokens_1000": ({**tq_meta(L), "kvconvert.sink_tokens": (1000, VT.UINT32)}, "kvconvert.sink_tokens"),
    "profile_not_json": ({**tq_meta(L), "kvconvert.profile": ("{oops", VT.STRING)}, "kvconvert.profile"),
    "profile_not_utf8": ({**tq_meta(L), "kvconvert.profile": (b"{\xff}", VT.STRING)}, "kvconvert.profile"),
    "n_hi_wrong_length": ({**tq_meta(L), "kvconvert.k_cache.n_hi": ([0] * 5, VT.ARRAY, VT.UINT32)},
                          "kvconvert.k_cache.n_hi"),
    "lo_bits_99": ({**tq_meta(L), "kvconvert.k_cache.lo_bits": ([99] * L, VT.ARRAY, VT.UINT32)},
                   "kvconvert.k_cache.lo_bits"),
    "k_mean_nan": ({**tq_meta(L), "kvconvert.k_cache.mean": (KMEAN_NAN, VT.ARRAY, VT.FLOAT32)},
                   "kvconvert.k_cache.mean"),
    "v_mean_inf": ({**tq_meta(L), "kvconvert.v_cache.mean": (VMEAN_INF, VT.ARRAY, VT.FLOAT32)},
                   "kvconvert.v_cache.mean"),
    "k_perm_out_of_range": ({**tq_meta(L), "kvconvert.k_cache.perm": ([999] * (L * D), VT.ARRAY, VT.INT32)},
                            "kvconvert.k_cache.perm"),
    "mean_folded_int": ({**tq_meta(L), "kvconvert.k_cache.mean_folded": (3, VT.UINT32)},
                        "kvconvert.k_cache.mean_folded"),
}


@pytest.fixture
def env(tiny_models, tiny_ggufs, tmp_path, monkeypatch):
    """tmp/in (inputs), tmp/out (outputs); a private cache; offline Hub."""
    monkeypatch.setenv("KVCONVERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "in" / "t.txt").write_text(TEXT, encoding="utf-8")
    return tmp_path


def outputs_empty(work: Path) -> None:
    assert not any((work / "out").iterdir()), list((work / "out").iterdir())


# --------------------------------------------------------------------------- GGUF metadata

def test_good_generated_gguf_still_loads(env, tiny_ggufs, capsys):
    """The generator itself writes usable files: an unchanged copy and one with valid cache metadata
    run through info (so a refusal below is the mutation's, not the generator's)."""
    from kvconvert.cli import main

    src = tiny_ggufs["qwen2-hd64"]
    for name, edits in (("same", {}), ("tq", tq_meta(L, {"kvconvert.k_cache.mean": ([0.5] * (L * HK * D),
                                                                                    VT.ARRAY, VT.FLOAT32)}))):
        path = write_gguf(src, env / "in" / f"{name}.gguf", edits)
        assert main(["info", str(path)]) == 0, capsys.readouterr().err
    capsys.readouterr()


@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_bad_gguf_metadata(env, tiny_ggufs, capsys, case):
    edits, key = GGUF_CASES[case]
    bad = write_gguf(tiny_ggufs["qwen2-hd64"], env / "in" / f"{case}.gguf", edits)
    t = env / "in" / "t.txt"
    out = env / "out"
    commands = [["info", bad], ["convert", bad, "-o", out / "o.gguf", "--profile", "none"],
                ["eval", bad, "--text", t, "--ctx", 32, "--chunks", 1],
                ["run", bad, "-p", "hello", "-n", 2],
                ["push", bad, "--repo", "someone/model"]]
    for argv in commands:
        refused(capsys, env, argv, [env / "in"], bad, key)
        outputs_empty(env)


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_huge_layer_count_is_bounded(env, tiny_ggufs, tiny_models, kind):
    """A GGUF block_count of 2^32-1 or a config.json num_hidden_layers of 1e9 is refused at once in
    bounded memory (was > 5 GB, no message): run in a child under a 2 GiB address-space limit, so a
    regression fails here instead of exhausting the machine."""
    if kind == "gguf":
        bad = write_gguf(tiny_ggufs["qwen2-hd64"], env / "in" / "layers.gguf",
                         {"qwen2.block_count": (2**32 - 1, VT.UINT32)})
        named, key = bad, "block_count"
    else:
        bad = hf_copy(tiny_models, "qwen2-hd64", env / "in" / "hf", {"num_hidden_layers": 10**9})
        named, key = bad / "config.json", "num_hidden_layers"
    before = tree_hashes(env / "in")
    for argv in (["info", str(bad)], ["convert", str(bad), "-o", str(env / "out" / "o.gguf"), "--profile", "none"]):
        code = textwrap.dedent(f"""
            import resource, sys
            resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
            from kvconvert.cli import main
            sys.exit(main({argv!r}))
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kvconvert: error: "), proc.stderr
        assert str(named) in proc.stderr and key in proc.stderr, proc.stderr
    assert tree_hashes(env / "in") == before
    assert not leftovers(env) and not any((env / "out").iterdir())


def test_non_utf8_token(env, tiny_ggufs, capsys):
    src = tiny_ggufs["qwen2-hd64"]
    tokens = open_gguf(src).fields["tokenizer.ggml.tokens"].contents()
    tokens[7] = b"\xff\xfe"
    bad = write_gguf(src, env / "in" / "tok.gguf", {"tokenizer.ggml.tokens": tokens})
    for argv in (["info", bad], ["run", bad, "-p", "hi", "-n", 1], ["import-gguf", bad, "-o", env / "out" / "hf"]):
        refused(capsys, env, argv, [env / "in"], bad, "tokenizer.ggml.tokens", "UTF-8")
        outputs_empty(env)


TOKENIZER_CASES: dict[str, tuple[dict, str]] = {
    "merges_ints": ({"tokenizer.ggml.merges": ([1, 2], VT.ARRAY, VT.INT32)}, "tokenizer.ggml.merges"),
    "merge_outside_vocab": ({"tokenizer.ggml.merges": (["abc", "x y z"], VT.ARRAY, VT.STRING)}, "merge"),
    "token_types_strings": ({"tokenizer.ggml.token_type": (["a"] * 384, VT.ARRAY, VT.STRING)},
                            "tokenizer.ggml.token_type"),
    "token_types_short": ({"tokenizer.ggml.token_type": ([1], VT.ARRAY, VT.INT32)}, "disagree"),
    "eos_outside_vocab": ({"tokenizer.ggml.eos_token_id": (10**6, VT.UINT32)}, "eos_token_id"),
    "add_bos_int": ({"tokenizer.ggml.add_bos_token": (5, VT.UINT32)}, "add_bos_token"),
    "model_int": ({"tokenizer.ggml.model": (3, VT.UINT32)}, "tokenizer model"),
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_bad_tokenizer_metadata(env, tiny_ggufs, capsys, case):
    """Tokenizer errors from a GGUF name the file (they did not) and are never a traceback."""
    edits, key = TOKENIZER_CASES[case]
    bad = write_gguf(tiny_ggufs["qwen2-hd64"], env / "in" / f"{case}.gguf", edits)
    for argv in (["run", bad, "-p", "hello", "-n", 2], ["eval", bad, "--text", env / "in" / "t.txt", "--ctx", 32],
                 ["import-gguf", bad, "-o", env / "out" / "hf"]):
        refused(capsys, env, argv, [env / "in"], bad, key)
        outputs_empty(env)


def test_fifo_as_model_is_refused_at_once(env):
    """A FIFO given as the model is refused without opening it (opening would block forever)."""
    fifo = env / "in" / "pipe.gguf"
    os.mkfifo(fifo)
    for argv in (["info", fifo], ["eval", fifo, "--text", env / "in" / "t.txt"], ["run", fifo, "-p", "x"]):
        proc = subprocess.run([sys.executable, "-m", "kvconvert.cli", *map(str, argv)], capture_output=True,
                              text=True, timeout=60, env={**os.environ})
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kvconvert: error: "), proc.stderr
        assert str(fifo) in proc.stderr and "FIFO" in proc.stderr
    assert fifo.exists() and not any((env / "out").iterdir())


# --------------------------------------------------------------------------- config.json

HF_CASES: dict[str, tuple[str, Any, str]] = {
    # name -> (model, edit of the config dict (or a special), key the message names)
    "layers_over_weights": ("qwen2-hd64", {"num_hidden_layers": 3}, "num_hidden_layers"),
    "layers_float": ("qwen2-hd64", {"num_hidden_layers": 2.5}, "num_hidden_layers"),
    "hidden_bool": ("qwen2-hd64", {"hidden_size": True}, "hidden_size"),
    "vocab_1e12": ("qwen2-hd64", {"vocab_size": 10**12}, "vocab_size"),
    "heads_zero": ("qwen2-hd64", {"num_attention_heads": 0}, "num_attention_heads"),
    "rms_eps_string": ("qwen2-hd64", {"rms_norm_eps": "1e-6"}, "rms_norm_eps"),
    "rms_eps_nan": ("qwen2-hd64", {"rms_norm_eps": math.nan}, "rms_norm_eps"),
    "rope_theta_string": ("qwen2-hd64", {"rope_theta": "10000"}, "rope_theta"),
    "rope_theta_inf": ("qwen2-hd64", {"rope_theta": math.inf}, "rope_theta"),
    "rope_scaling_string": ("qwen2-hd64", {"rope_scaling": "llama3"}, "rope_scaling"),
    "eos_empty_list": ("qwen2-hd64", {"eos_token_id": []}, "eos_token_id"),
    "eos_string": ("qwen2-hd64", {"eos_token_id": "</s>"}, "eos_token_id"),
    "max_pos_negative": ("qwen2-hd64", {"max_position_embeddings": -5}, "max_position_embeddings"),
    "architectures_string": ("qwen2-hd64", {"architectures": "Qwen2ForCausalLM"}, "architectures"),
    "llama3_factor_string": ("llama-hd128-bias-rope3", {"rope_scaling.factor": "eight"}, "factor"),
    "llama3_factor_negative": ("llama-hd128-bias-rope3", {"rope_scaling.factor": -8.0}, "factor"),
    "llama3_factor_nan": ("llama-hd128-bias-rope3", {"rope_scaling.factor": math.nan}, "factor"),
    "llama3_orig_ctx_zero": ("llama-hd128-bias-rope3", {"rope_scaling.original_max_position_embeddings": 0},
                             "original_max_position_embeddings"),
}


def hf_copy(tiny_models, model: str, dst: Path, edits: dict) -> Path:
    shutil.copytree(tiny_models[model], dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, val in edits.items():
        if key.startswith("rope_scaling."):
            cfg["rope_scaling"][key.split(".", 1)[1]] = val
        else:
            cfg[key] = val
    (dst / "config.json").write_text(json.dumps(cfg))  # NaN/Infinity as Python's json writes and reads them
    return dst


@pytest.mark.parametrize("case", list(HF_CASES))
def test_bad_config_json(env, tiny_models, capsys, case):
    model, edits, key = HF_CASES[case]
    hf = hf_copy(tiny_models, model, env / "in" / case, edits)
    for argv in (["info", hf], ["convert", hf, "-o", env / "out" / "o.gguf", "--profile", "none"],
                 ["calibrate", hf, "--text", env / "in" / "t.txt", "--tokens", 64, "--ctx", 32,
                  "-o", env / "out" / "c.npz"]):
        refused(capsys, env, argv, [env / "in"], hf / "config.json", key)
        outputs_empty(env)


def test_config_json_a_directory_or_fifo(env, tiny_models, capsys):
    for kind in ("dir", "fifo"):
        hf = env / "in" / kind
        shutil.copytree(tiny_models["qwen2-hd64"], hf)
        (hf / "config.json").unlink()
        (hf / "config.json").mkdir() if kind == "dir" else os.mkfifo(hf / "config.json")
        refused(capsys, env, ["info", hf], [env / "in"], hf / "config.json")
        refused(capsys, env, ["convert", hf, "-o", env / "out" / "o.gguf"], [env / "in"], hf / "config.json")
        outputs_empty(env)


def _rewrite_safetensors(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def test_bad_safetensors_headers(env, tiny_models, capsys):
    """Overlapping tensor data and negative dimensions are refused (overlaps were accepted)."""
    a, b = "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"

    def overlap(h):
        h[b]["data_offsets"] = h[a]["data_offsets"]

    def negative(h):
        h[a]["shape"] = [-1, -h[a]["shape"][0]]

    for name, edit, needle in (("overlap", overlap, "overlap"), ("negative", negative, "shape")):
        hf = env / "in" / name
        shutil.copytree(tiny_models["qwen2-hd64"], hf)
        _rewrite_safetensors(hf / "model.safetensors", edit)
        for argv in (["info", hf], ["convert", hf, "-o", env / "out" / "o.gguf", "--profile", "none"]):
            refused(capsys, env, argv, [env / "in"], hf / "model.safetensors", needle)
            outputs_empty(env)


# --------------------------------------------------------------------------- policies and profiles

POLICY_CASES: dict[str, tuple[dict, str]] = {
    "k_bits_empty": ({"k_bits": []}, "k_bits"),
    "k_bits_out_of_range": ({"k_bits": [0, 99]}, "k_bits"),
    "v_bits_strings": ({"v_bits": ["4"]}, "v_bits"),
    "v_budget_string": ({"v_budget": "4.5"}, "v_budget"),
    "k_budget_nan": ({"k_budget": math.nan}, "k_budget"),
    "k_budget_inf": ({"k_budget": math.inf}, "k_budget"),
    "k_budget_1e9": ({"k_budget": 1e9}, "k_budget"),
    "max_kld_string": ({"max_kld": "0.03"}, "max_kld"),
    "splits_string": ({"splits": "no"}, "splits"),
    "sink_tokens_float": ({"sink_tokens": 1.5}, "sink_tokens"),
    "name_number": ({"name": 5}, "name"),
    "k_scale_mode_unknown": ({"k_scale_mode": "lsq"}, "k_scale_mode"),
    "v_scale_mode_number": ({"v_scale_mode": 2}, "v_scale_mode"),
    "codes_unknown": ({"codes": "lattice"}, "codes"),
}


@pytest.mark.parametrize("case", list(POLICY_CASES))
def test_bad_policy(env, tiny_models, calib_file, capsys, case):
    from kvconvert.conversion.profile import load_profile

    edits, key = POLICY_CASES[case]
    pol = env / "in" / f"{case}.json"
    pol.write_text(json.dumps({**load_profile("balanced").to_json(), **edits}))
    cal = env / "in" / "C.npz"
    shutil.copy(calib_file, cal)
    refused(capsys, env, ["search", cal, "--policy", pol, "-o", env / "out" / "p.json", "--no-check"],
            [env / "in"], pol, key)
    hf = env / "in" / "hf"
    if not hf.exists():
        shutil.copytree(tiny_models["qwen2-hd64"], hf)
    refused(capsys, env, ["convert", hf, "--profile", pol, "-o", env / "out" / "o.gguf"], [env / "in"], pol, key)
    outputs_empty(env)


def good_profile() -> dict:
    return {"schema": 1, "kind": "profile", "name": "p", "policy": "balanced",
            "model": {"name": "qwen2-hd64", "arch": "qwen2", "n_layer": L, "n_head": 4, "n_head_kv": HK,
                      "head_dim": D},
            "k": {"type": "tq", "layers": ["tq4"] * L}, "v": {"type": "f16", "layers": []},
            "transforms": {"k_mean": None, "k_scale": None, "pair_order": None, "v_mean": None},
            "sink_tokens": 1, "provenance": {}, "measured": {}}


def _set(obj: dict, dotted: str, val) -> dict:
    obj = json.loads(json.dumps(obj))
    *path, last = dotted.split(".")
    cur = obj
    for p in path:
        cur = cur[p]
    cur[last] = val
    return obj


PROFILE_CASES: dict[str, tuple[str, Any, str]] = {
    "n_layer_1e9": ("model.n_layer", 10**9, "n_layer"),
    "n_layer_string": ("model.n_layer", "2", "n_layer"),
    "head_dim_odd": ("model.head_dim", 63, "head_dim"),
    "model_a_list": ("model", [1, 2], "model"),
    "k_type_int": ("k.type", 5, "k.type"),
    "k_layers_string": ("k.layers", "tq4", "k.layers"),
    "k_layers_bad_spec": ("k.layers", ["tq99", "tq4"], "tq99"),
    "k_mean_nan": ("transforms.k_mean", [[[math.nan] * D] * HK] * L, "k_mean"),
    "k_scale_zero": ("transforms.k_scale", [[[0.0] * (D // 2)] * HK] * L, "k_scale"),
    "pair_order_huge": ("transforms.pair_order", [[2**40] * (D // 2)] * L, "pair_order"),
    "sink_tokens_string": ("sink_tokens", "1", "sink_tokens"),
    "measured_nan": ("measured", {"kld": math.nan}, "measured.kld"),
    "bpv_n_ctx_zero": ("measured", {"bpv_n_ctx": 0}, "bpv_n_ctx"),
    "made_for_another_model": ("*", {"model.n_layer": 3, "k.layers": ["tq4"] * 3}, "was made for"),
}


def test_good_profile_applies(env, tiny_models, capsys):
    from kvconvert.cli import main

    prof = env / "in" / "good.json"
    prof.write_text(json.dumps(good_profile()))
    assert main(["convert", str(tiny_models["qwen2-hd64"]), "--profile", str(prof),
                 "-o", str(env / "out" / "o.gguf")]) == 0, capsys.readouterr().err
    capsys.readouterr()


@pytest.mark.parametrize("case", list(PROFILE_CASES))
def test_bad_profile(env, tiny_models, capsys, case):
    key, val, needle = PROFILE_CASES[case]
    prof = env / "in" / f"{case}.json"
    obj = good_profile()
    for k, v in (val.items() if key == "*" else [(key, val)]):
        obj = _set(obj, k, v)
    prof.write_text(json.dumps(obj))
    hf = env / "in" / "hf"
    shutil.copytree(tiny_models["qwen2-hd64"], hf)
    refused(capsys, env, ["convert", hf, "--profile", prof, "-o", env / "out" / "o.gguf"], [env / "in"],
            prof, needle)
    outputs_empty(env)


# --------------------------------------------------------------------------- calibration files

def _rewrite_npz(src: Path, dst: Path, meta_edits: dict | None = None, arrays: dict | None = None,
                 meta_raw: Any = None) -> Path:
    with np.load(src) as z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(bytes(data["meta"]).decode())
    meta.update(meta_edits or {})
    if meta_raw is not None:
        meta = meta_raw
    data["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    for k, v in (arrays or {}).items():
        data[k] = v(data[k]) if callable(v) else v
    with open(dst, "wb") as f:
        np.savez(f, **data)
    return dst


def _nan_at(a):
    a = a.astype(np.float64).copy()
    a.flat[3] = np.nan
    return a


CALIB_CASES: dict[str, tuple[dict, dict, str]] = {
    "win_q_wrong_heads": ({}, {"win_q": lambda a: a[:, :, :, :1]}, "win_q"),
    "win_k_wrong_heads": ({}, {"win_k": lambda a: np.concatenate([a, a], axis=3)}, "win_k"),
    "win_v_nan": ({}, {"win_v": _nan_at}, "win_v"),
    "rope_freqs_3_long": ({}, {"rope_freqs": np.ones(3)}, "rope_freqs"),
    "rope_freqs_negative": ({}, {"rope_freqs": lambda a: -a}, "rope_freqs"),
    "k_sum_nan": ({}, {"k_sum": _nan_at}, "k_sum"),
    "q_sq_inf": ({}, {"q_sq": lambda a: np.full_like(a, np.inf)}, "q_sq"),
    "holdout_float": ({}, {"holdout": lambda a: a.astype(np.float32)}, "holdout"),
    "holdout_negative_ids": ({}, {"holdout": lambda a: a - 10**6}, "holdout"),
    "n_ctx_0": ({"n_ctx": 0}, {}, "n_ctx"),
    "n_layer_string": ({"n_layer": "2"}, {}, "n_layer"),
    "head_dim_1e9": ({"head_dim": 10**9}, {}, "head_dim"),
    "rope_theta_nan": ({"rope_theta": math.nan}, {}, "rope_theta"),
    "rope_pairing_unknown": ({"rope_pairing": "zigzag"}, {}, "rope_pairing"),
    "model_not_string": ({"model": 5}, {}, "model"),
}


@pytest.mark.parametrize("case", list(CALIB_CASES))
def test_bad_calibration(env, calib_file, capsys, case):
    meta, arrays, needle = CALIB_CASES[case]
    bad = _rewrite_npz(calib_file, env / "in" / f"{case}.npz", meta, arrays)
    refused(capsys, env, ["search", bad, "-o", env / "out" / "p.json", "--no-check"], [env / "in"], bad, needle)
    outputs_empty(env)


def test_calibration_not_npz_or_meta_not_object(env, calib_file, capsys):
    npy = env / "in" / "a.npz"
    np.save(open(npy, "wb"), np.zeros(3))
    refused(capsys, env, ["search", npy, "-o", env / "out" / "p.json"], [env / "in"], npy, "not")
    listy = _rewrite_npz(calib_file, env / "in" / "b.npz", meta_raw=[1, 2])
    refused(capsys, env, ["search", listy, "-o", env / "out" / "p.json"], [env / "in"], listy, "not a kvconvert")
    fifo = env / "in" / "c.npz"
    os.mkfifo(fifo)
    refused(capsys, env, ["search", fifo, "-o", env / "out" / "p.json"], [env / "in"], fifo, "FIFO")
    outputs_empty(env)


def test_good_calibration_still_loads(calib_file, tmp_path):
    same = _rewrite_npz(calib_file, tmp_path / "same.npz")
    cal = Calibration.load(same)
    assert cal.n_layer == L and cal.win_q.shape[1] == L


def test_calibrate_refuses_non_finite_statistics(env, tiny_ggufs, capsys):
    """A model whose K projection overflows gives NaN/Inf statistics: calibrate writes nothing
    (was: a NaN file that search later called corrupt)."""
    src = tiny_ggufs["qwen2-hd64"]
    from kvconvert.formats.gguf_io import dequantize, tensor_map

    t = tensor_map(open_gguf(src))["blk.1.attn_k.weight"]
    w = dequantize(t).copy()
    w[:, :] = 3e38
    bad = write_gguf(src, env / "in" / "kinf.gguf", tensors={"blk.1.attn_k.weight": w})
    err = refused(capsys, env, ["calibrate", bad, "--text", env / "in" / "t.txt", "--tokens", 64, "--ctx", 32,
                                "-o", env / "out" / "c.npz"], [env / "in"], bad)
    assert "NaN" in err or "non-finite" in err or "infinite" in err, err
    assert not (env / "out" / "c.npz").exists()


# --------------------------------------------------------------------------- native loader fuzz

FUZZ_CHILD = textwrap.dedent("""
    import sys, numpy as np
    from pathlib import Path
    from kvconvert.base.errors import KVConvertError
    from kvconvert.runtime.engine import ContextParams, Model

    src, work, seed, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    data = src.read_bytes()
    head = int(sys.argv[5])  # bytes of header + metadata + tensor infos
    rng = np.random.default_rng(seed)
    loaded = refused = 0
    for i in range(n):
        buf = bytearray(data)
        kind = i % 4
        if kind == 0:    # a few random bytes in the header/metadata/tensor infos
            for _ in range(int(rng.integers(1, 5))):
                buf[int(rng.integers(0, head))] = int(rng.integers(0, 256))
        elif kind == 1:  # a 32-bit integer overwritten with an interesting value
            at = int(rng.integers(0, head - 4)) & ~3
            buf[at:at + 4] = int(rng.choice([0, 1, 2, 3, 255, 65535, 2**31 - 1, 2**31, 2**32 - 1])).to_bytes(4, "little")
        elif kind == 2:  # truncated
            buf = buf[:int(rng.integers(0, len(buf)))]
        else:            # random bytes anywhere, tensor data included
            for _ in range(int(rng.integers(1, 9))):
                buf[int(rng.integers(0, len(buf)))] = int(rng.integers(0, 256))
        path = work / f"f{i % 2}.gguf"
        path.write_bytes(bytes(buf))
        print(i, flush=True)
        try:
            m = Model(path)
            ctx = m.context(ContextParams(n_ctx=16, n_batch=16, n_threads=1, type_k="f16", type_v="f16"))
            ctx.eval(np.array([1, 2, 3], dtype=np.int32))
            loaded += 1
        except KVConvertError:
            refused += 1
        finally:
            m = ctx = None
    print("done", loaded, refused, flush=True)
""")


def _fuzz(src: Path, tmp_path: Path, seed: int, n: int) -> None:
    head = open_gguf(src).data_offset
    proc = subprocess.run([sys.executable, "-c", FUZZ_CHILD, str(src), str(tmp_path), str(seed), str(n), str(head)],
                          capture_output=True, text=True, timeout=600)
    lines = proc.stdout.split()
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0 and last.startswith("done"), \
        f"case {lines[-1] if lines else '?'} (seed {seed}) ended with {proc.returncode}: {proc.stderr[-3000:]}"
    _, loaded, refused = last.split()
    assert int(loaded) + int(refused) == n
    assert int(refused) > n // 4  # the mutations do reach the checks


def test_fuzz_native_loader(tiny_ggufs, tmp_path):
    """300 mutated tiny GGUFs through the runtime: each loads and evaluates, or is refused with a
    KVConvertError; never a crash, hang or other exception."""
    _fuzz(tiny_ggufs["llama-hd64-tied"], tmp_path, seed=14, n=300)


@pytest.mark.slow
def test_fuzz_native_loader_long(tiny_ggufs, tmp_path):
    for i, name in enumerate(("qwen2-hd64", "llama-hd128-bias-rope3", "qwen2-hd128-bf16")):
        _fuzz(tiny_ggufs[name], tmp_path, seed=1400 + i, n=2000)


# --------------------------------------------------------------------------- the helpers themselves

def test_validate_helpers(tmp_path):
    from kvconvert.base import validate as V
    from kvconvert.base.errors import InputError

    assert V.int_in("f", "k", 5, 0, 10) == 5 and V.int_in("f", "k", np.uint32(7), 0, 10) == 7
    assert V.finite_float("f", "k", 3, 0.0, 4.0) == 3.0
    assert V.utf8_str("f", "k", "é".encode()) == "é"
    cases = [(V.int_in, (True, 0, 10), "must be an integer"), (V.int_in, (1.0, 0, 10), "must be an integer"),
             (V.int_in, (11, 0, 10), "11 outside 0..10"), (V.int_in, (-1, 0, None), "outside 0..inf"),
             (V.finite_float, (math.nan,), "not a finite number"), (V.finite_float, (math.inf,), "not a finite"),
             (V.finite_float, ("1",), "must be a number"), (V.finite_float, (-1.0, 0.0, 1.0), "must be >= 0"),
             (V.utf8_str, (b"\xff",), "not valid UTF-8"), (V.utf8_str, (5,), "must be a string"),
             (V.one_of, ("x", ("a", "b")), "expected one of"), (V.boolean, (1,), "true or false"),
             (V.int_list, ([1, "2"], 0, 9), "k[1] must be an integer"), (V.int_list, ([], 0, 9, ), None)]
    for fn, args, needle in cases:
        if needle is None:
            assert fn("f", "k", *args) == []
            continue
        with pytest.raises(InputError) as e:
            fn("f", "k", *args)
        assert str(e.value).startswith("f: k") and needle in str(e.value), (fn.__name__, args, str(e.value))
    with pytest.raises(InputError, match="must not be empty"):
        V.int_list("f", "k", [], 0, 9, nonempty=True)
    with pytest.raises(InputError, match="NaN or infinite"):
        V.finite_array("f", "a", np.array([1.0, np.nan]))
    with pytest.raises(InputError, match=r"shape \(2,\), expected \(3,\)"):
        V.finite_array("f", "a", np.zeros(2), (3,))
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is a FIFO"):
        V.regular_file(fifo)
    with pytest.raises(InputError, match="is a directory"):
        V.regular_file(tmp_path)
    (tmp_path / "f").write_text("x")
    assert V.regular_file(tmp_path / "f") == tmp_path / "f"
