"""A repo id is accepted wherever a model path is, resolved through the local
huggingface_hub cache; offline mode is honoured (no network in tests)."""

from __future__ import annotations

import shutil

import pytest

from kvconvert.base.errors import InputError
from kvconvert.models.source import load_model, resolve


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_models):
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--tiny-qwen"
    shutil.copytree(tiny_models["qwen2-hd64"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return repo / "snapshots" / commit


def test_repo_id_resolves_from_cache(hub_cache):
    assert resolve("tiny-org/tiny-qwen") == hub_cache
    m = load_model("tiny-org/tiny-qwen")
    assert m.format == "hf" and m.args.architecture == "Qwen2ForCausalLM"


def test_repo_id_missing_offline(hub_cache):
    with pytest.raises(InputError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        resolve("tiny-org/not-there")
