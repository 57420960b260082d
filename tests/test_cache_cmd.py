"""Issue 16, deliverable 3: `kvconvert cache list|clean` shows and frees kvconvert's cache."""

from __future__ import annotations

import os

import pytest

from kvconvert.cli import main


@pytest.fixture
def root(tmp_path, monkeypatch):
    r = tmp_path / "cache"
    monkeypatch.setenv("KVCONVERT_CACHE", str(r))
    monkeypatch.setenv("COLUMNS", "200")
    files = {"calibration/m-0123.f16.gguf": 3000, "calibration/m-0123-abcd.calib.npz": 2000,
             "calibration/gen-v2-0123-5128-512.json": 100, "demo/SmolLM2/model.safetensors": 500,
             "fixtures/model.gguf": 4000, "fixtures/austen/a.rdb": 50, "wheels/x.whl": 70,
             f"calibration/.m-9.f16.gguf.{os.getpid()}.abcd1234.part": 10}  # a live writer's temporary file
    for name, n in files.items():
        (r / name).parent.mkdir(parents=True, exist_ok=True)
        (r / name).write_bytes(b"x" * n)
    return r


def test_cache_list(root, capsys):
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("m-0123.f16.gguf", "m-0123-abcd.calib.npz", "gen-v2-0123", "demo/SmolLM2", "fixtures/model.gguf",
                 "fixtures/austen", "wheels"):
        assert name in out, name
    assert ".part" not in out
    assert "copy 2.9 KiB" in out and "calibration 2.1 KiB" in out and "fixtures 4.0 KiB" in out


def test_cache_clean(root, capsys):
    assert main(["cache", "clean", "--dry-run"]) == 0
    assert "would remove 4 entries" in capsys.readouterr().out
    assert (root / "calibration/m-0123.f16.gguf").exists()
    assert main(["cache", "clean"]) == 0
    assert "removed 4 entries, 5.5 KiB" in capsys.readouterr().out
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == ["calibration/" + next(p.name for p in (root / "calibration").iterdir()),
                    "fixtures/austen/a.rdb", "fixtures/model.gguf", "wheels/x.whl"]
    assert left[0].endswith(".part")  # the live writer's file stays
    assert main(["cache", "clean", "--kind", "fixtures", "--older-than", "1"]) == 0  # all younger than a day
    assert (root / "fixtures/model.gguf").exists()
    assert main(["cache", "clean", "--kind", "fixtures"]) == 0
    assert not (root / "fixtures/model.gguf").exists() and (root / "wheels/x.whl").exists()


def test_cache_clean_frees_a_real_calibration(tiny_models, root, tmp_path, capsys):
    """A policy conversion of an HF model leaves its runtime copy and calibration in the cache; clean
    frees them and a rerun makes them again."""
    out = tmp_path / "o.gguf"
    argv = ["convert", str(tiny_models["qwen2-hd64"]), "-o", str(out), "--austen", "calib", "--no-check",
            "--tokens", "256"]
    if main(argv) != 0:
        pytest.skip("the Austen fixture is not fetched")
    capsys.readouterr()
    assert list((root / "calibration").glob("*.calib.npz"))
    assert main(["cache", "clean"]) == 0
    assert not list((root / "calibration").glob("*.calib.npz")) and not list((root / "calibration").glob("*.gguf"))
    out.unlink()
    assert main(argv) == 0


def test_calibration_keeps_no_copy_of_a_float_checkpoint(tiny_models, tmp_path, monkeypatch):
    """A float (f32/bf16) safetensors checkpoint is run in place: calibrating it writes no f16 GGUF copy
    into the cache, and the runtime on the checkpoint computes what it computes on its f32 GGUF."""
    import numpy as np

    from kvconvert import convert
    from kvconvert.conversion.calibrate import calibrate
    from kvconvert.runtime.engine import ContextParams, Model
    from tests.tiny import CORPUS

    monkeypatch.setenv("KVCONVERT_CACHE", str(tmp_path / "cache"))
    for name in ("llama-hd128-bias-rope3", "qwen2-hd128-bf16"):
        hf = tiny_models[name]
        cal = calibrate(hf, text=" ".join(CORPUS) * 30, tokens=128, n_ctx=64, n_windows=1, holdout=1)
        assert cal.n_tokens > 0 and cal.rope_pairing == "neox"  # HF order, read as is
        assert not list((tmp_path / "cache").rglob("*.gguf"))
        gg = convert(hf, tmp_path / f"{name}.gguf", weights="f32").output
        p = ContextParams(n_ctx=64, n_batch=16, type_k="f32", type_v="f32")
        toks = list(range(3, 40))
        a, b = (Model(m).context(p).eval(toks, all_logits=True) for m in (hf, gg))
        assert np.abs(a - b).max() <= 1e-6 * np.abs(b).max()
