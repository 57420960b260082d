from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import TinySpec, make_tiny_model

# The tiny models every test family uses: every architecture, head_dim 64 and 128, GQA.
TINY_SPECS = {
    "qwen2-hd64": TinySpec(arch="qwen2", head_dim=64, n_heads=4, n_kv_heads=2),
    "qwen2-hd128-bf16": TinySpec(arch="qwen2", head_dim=128, n_heads=4, n_kv_heads=1, dtype="bf16", seed=1),
    "llama-hd64-tied": TinySpec(arch="llama", head_dim=64, n_heads=6, n_kv_heads=2, tied=True, seed=2),
    "llama-hd128-bias-rope3": TinySpec(arch="llama", head_dim=128, n_heads=2, n_kv_heads=2, attention_bias=True,
                                       llama3_rope=True, rope_theta=500000.0, seed=3),
    # the families of issue 18: QK-norm without biases; a sliding window (8 < the tests' 16-24 tokens);
    # Gemma 3's GeGLU, four norms, scaled embeddings, QK-norm and 5 local : 1 global layers (7 layers)
    "qwen3-hd64": TinySpec(arch="qwen3", head_dim=64, n_heads=4, n_kv_heads=2, seed=4),
    "mistral-hd64-swa8": TinySpec(arch="mistral", head_dim=64, n_heads=4, n_kv_heads=2, sliding_window=8, seed=5),
    "gemma3-hd64-swa8": TinySpec(arch="gemma3", head_dim=64, n_heads=4, n_kv_heads=1, n_layers=7, tied=True,
                                 sliding_window=8, rope_theta=1e6, seed=6),
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {name: make_tiny_model(root / name, spec) for name, spec in TINY_SPECS.items()}


@pytest.fixture(params=list(TINY_SPECS))
def tiny_model(request, tiny_models) -> Path:
    return tiny_models[request.param]


@pytest.fixture(scope="session")
def tiny_ggufs(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """The tiny models converted to f32 GGUF (exact weights for runtime tests)."""
    from kvconvert import convert

    root = tmp_path_factory.mktemp("tiny-gguf")
    out = {}
    for name, path in tiny_models.items():
        out[name] = root / f"{name}.gguf"
        convert(path, out[name], weights="f32")
    return out
