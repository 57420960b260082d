"""Qwen2 / Qwen2.5: Llama plus q/k/v projection biases (no o bias).

GGUF keeps Qwen2 Q/K rows in Hugging Face order (llama.cpp uses NeoX RoPE).
"""

from __future__ import annotations

import gguf

from .llama import Llama


class Qwen2(Llama):
    name = "qwen2"
    hf_architecture = "Qwen2ForCausalLM"
    model_type = "qwen2"
    gguf_arch = gguf.MODEL_ARCH.QWEN2
    gguf_qk_interleaved = False
    qkv_bias = True
    o_bias_with_attention_bias = False


ARCH = Qwen2()
