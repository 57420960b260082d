"""Bad input: one clear line naming the file, a non-zero exit, no traceback,
and nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import gguf
import numpy as np
import pytest

from kvconvert.cli import main


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvconvert: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


@pytest.fixture
def model_copy(tiny_models, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_models["qwen2-hd64"], dst)
    return dst


def test_missing_model(capsys, tmp_path):
    out = tmp_path / "o.gguf"
    code, err = run_cli(capsys, "convert", str(tmp_path / "nope"), "-o", str(out))
    assert_one_line_error(code, err, "nope", "no such file")
    assert not out.exists()


def test_corrupt_config(capsys, model_copy, tmp_path):
    (model_copy / "config.json").write_text("{not json")
    code, err = run_cli(capsys, "convert", str(model_copy), "-o", str(tmp_path / "o.gguf"))
    assert_one_line_error(code, err, "config.json", "JSON")


def test_unknown_architecture(capsys, model_copy, tmp_path):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (model_copy / "config.json").write_text(json.dumps(cfg))
    code, err = run_cli(capsys, "convert", str(model_copy), "-o", str(tmp_path / "o.gguf"))
    assert_one_line_error(code, err, "GPT2LMHeadModel", "not supported")


def test_shape_mismatch(capsys, model_copy, tmp_path):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["intermediate_size"] += 64
    (model_copy / "config.json").write_text(json.dumps(cfg))
    code, err = run_cli(capsys, "convert", str(model_copy), "-o", str(tmp_path / "o.gguf"))
    assert_one_line_error(code, err, "mlp", "shape")


def test_truncated_safetensors(capsys, model_copy, tmp_path):
    st = model_copy / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    out = tmp_path / "o.gguf"
    code, err = run_cli(capsys, "convert", str(model_copy), "-o", str(out))
    assert_one_line_error(code, err, "model.safetensors", "truncated")
    assert not out.exists()


def test_missing_tensor(capsys, model_copy, tmp_path):
    from kvconvert.formats.safetensors_io import SafetensorsIndex, write_streaming

    idx = SafetensorsIndex.from_dir(model_copy)
    keep = [n for n in idx.names() if "layers.1.mlp.up_proj" not in n]
    arrays = {n: np.array(idx.get(n)) for n in keep}
    idx.close()
    write_streaming(model_copy / "model.safetensors", [(n, arrays[n].shape) for n in keep], "f32",
                    iter(arrays.items()))
    code, err = run_cli(capsys, "convert", str(model_copy), "-o", str(tmp_path / "o.gguf"))
    assert_one_line_error(code, err, "model.layers.1.mlp.up_proj.weight", "missing")


def test_unwritable_output(capsys, tiny_models, tmp_path):
    code, err = run_cli(capsys, "convert", str(tiny_models["qwen2-hd64"]), "-o", str(tmp_path / "no" / "o.gguf"))
    assert_one_line_error(code, err, "does not exist")
    code, err = run_cli(capsys, "convert", str(tiny_models["qwen2-hd64"]), "-o", str(tmp_path))
    assert_one_line_error(code, err, "is a directory")


def test_bad_gguf_files(capsys, tiny_models, tmp_path):
    from kvconvert import convert

    good = tmp_path / "good.gguf"
    convert(tiny_models["qwen2-hd64"], good, weights="q8_0")
    data = good.read_bytes()

    not_gguf = tmp_path / "junk.gguf"
    not_gguf.write_bytes(b"\x00" * 100)
    code, err = run_cli(capsys, "import-gguf", str(not_gguf), "-o", str(tmp_path / "hf1"))
    assert_one_line_error(code, err, "junk.gguf", "not a GGUF")

    for cut in (20, 2000, len(data) - 1000):
        trunc = tmp_path / f"trunc{cut}.gguf"
        trunc.write_bytes(data[:cut])
        code, err = run_cli(capsys, "import-gguf", str(trunc), "-o", str(tmp_path / "hf2"))
        assert_one_line_error(code, err, trunc.name)
        assert not (tmp_path / "hf2").exists()


def test_gguf_unknown_arch(capsys, tmp_path):
    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    code, err = run_cli(capsys, "info", str(path))
    assert_one_line_error(code, err, "gpt2", "not supported")


def test_gguf_absurd_dimensions(capsys, tiny_models, tmp_path):
    """Metadata claiming dimensions the tensors do not have is refused, not run."""
    from kvconvert import convert
    from tests.ggufmix import rewrite

    good = tmp_path / "good.gguf"
    convert(tiny_models["llama-hd64-tied"], good, weights="f16")
    path = tmp_path / "absurd.gguf"
    rewrite(good, path, metadata=lambda key, val: 1 << 16 if key == "llama.embedding_length" else val)
    code, err = run_cli(capsys, "convert", str(path), "-o", str(tmp_path / "o.gguf"))
    assert_one_line_error(code, err, "absurd.gguf", "shape")
    assert not (tmp_path / "o.gguf").exists()


def test_entry_point_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kvconvert.cli", "info", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("kvconvert: error: ") and "Traceback" not in proc.stderr
