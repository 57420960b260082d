"""Llama family (Llama 2/3, SmolLM2): RMSNorm, SwiGLU, GQA, optional biases.

GGUF stores Llama Q/K rows in interleaved pair order (see arch/base.py).
"""

from __future__ import annotations

import gguf

from .base import Architecture


class Llama(Architecture):
    name = "llama"
    hf_architecture = "LlamaForCausalLM"
    model_type = "llama"
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    gguf_qk_interleaved = True


ARCH = Llama()
