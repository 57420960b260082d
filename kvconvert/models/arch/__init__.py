"""Model architectures kvconvert supports, as an explicit registry.

Each entry maps a Hugging Face architecture name (``config.json``'s
``architectures[0]``) or a GGUF ``general.architecture`` to the module that
describes it. Modules are imported lazily.
"""

from __future__ import annotations

import importlib

from ...base.errors import UnsupportedArchitecture
from .base import Architecture

# HF architecture name -> module under kvconvert.models.arch
HF_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MistralForCausalLM": "mistral",
    "Gemma3ForCausalLM": "gemma3",
}

# GGUF general.architecture -> module under kvconvert.models.arch
GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "llama",  # Mistral too (sliding_window in the metadata)
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3": "gemma3",
}


def _load(module: str) -> Architecture:
    return importlib.import_module(f"{__name__}.{module}").ARCH


def from_hf(name: str, source: str = "config.json") -> Architecture:
    if name not in HF_ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"{source}: architecture {name or '(none)'!r} is not supported "
            f"(supported: {', '.join(HF_ARCHITECTURES)})"
        )
    return _load(HF_ARCHITECTURES[name])


def cache_rows(args, n_ctx: int) -> list[int]:
    """Architecture.cache_rows for a model's ModelArgs (every layer n_ctx for unknown families)."""
    if args.architecture not in HF_ARCHITECTURES:
        return [n_ctx] * args.num_hidden_layers
    return from_hf(args.architecture).cache_rows(args, n_ctx)


def from_gguf(name: str, source: str = "GGUF") -> Architecture:
    from .folded import PREFIX, folded

    if name.startswith(PREFIX) and name[len(PREFIX):] in GGUF_ARCHITECTURES:  # kvconvert's folded layout
        return folded(_load(GGUF_ARCHITECTURES[name[len(PREFIX):]]))
    if name not in GGUF_ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"{source}: GGUF architecture {name or '(none)'!r} is not supported "
            f"(supported: {', '.join(GGUF_ARCHITECTURES)})"
        )
    return _load(GGUF_ARCHITECTURES[name])
