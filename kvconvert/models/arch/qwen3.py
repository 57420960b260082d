"""Qwen3: Qwen2 without the q/k/v biases, with per-head RMSNorm of q and k
(gains ``q_norm``/``k_norm``, one per head channel, shared by all heads) before
RoPE. A per-pair K→Q smoothing folds exactly into those gains, when it is the
same for every KV head of a layer (docs/design.md §2).
"""

from __future__ import annotations

import gguf

from .qwen2 import Qwen2


class Qwen3(Qwen2):
    name = "qwen3"
    hf_architecture = "Qwen3ForCausalLM"
    model_type = "qwen3"
    gguf_arch = gguf.MODEL_ARCH.QWEN3
    qkv_bias = None  # config.attention_bias (False in the released models)
    o_bias_with_attention_bias = True
    qk_norm = True


ARCH = Qwen3()
