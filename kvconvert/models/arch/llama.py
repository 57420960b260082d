"""Llama family (Llama 2/3, SmolLM2): RMSNorm, SwiGLU, GQA, optional biases.

GGUF stores Llama Q/K rows in interleaved pair order (see arch/base.py).
"""

from __future__ import annotations

import dataclasses

import gguf

from ..config import ModelArgs
from .base import Architecture


class Llama(Architecture):
    name = "llama"
    hf_architecture = "LlamaForCausalLM"
    model_type = "llama"
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    gguf_qk_interleaved = True

    def args_from_gguf(self, get, n_vocab: int, tied: bool, has_qkv_bias: bool) -> ModelArgs:
        args = super().args_from_gguf(get, n_vocab, tied, has_qkv_bias)
        if args.sliding_window:  # llama.cpp writes Mistral as arch llama (arch/mistral.py)
            return dataclasses.replace(args, architecture="MistralForCausalLM", model_type="mistral")
        return args


ARCH = Llama()
