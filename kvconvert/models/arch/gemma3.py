"""Gemma 3 (text): GeGLU MLP, embeddings scaled by sqrt(hidden), four RMSNorms per
block (before and after attention and MLP) whose HF weights are gains − 1,
QK-norm, scores scaled by query_pre_attn_scalar^-1/2, and interleaved layers:
five sliding-window layers (RoPE base 10000) then one global layer.

GGUF arch ``gemma3`` as llama.cpp writes it: norm gains with the +1 folded in,
Q/K rows in HF order (NeoX RoPE). llama.cpp fixes the layer pattern (every 6th
layer global) and the local RoPE base (10000); other values are refused.
"""

from __future__ import annotations

import dataclasses

import gguf

from ...base.errors import InputError
from ..config import ModelArgs
from .base import Architecture

SWA_PATTERN = 6  # layer i is global iff (i + 1) % 6 == 0
LOCAL_THETA = 10000.0


def layer_types(n_layer: int) -> tuple[str, ...]:
    return tuple("full_attention" if (i + 1) % SWA_PATTERN == 0 else "sliding_attention" for i in range(n_layer))


class Gemma3(Architecture):
    name = "gemma3"
    hf_architecture = "Gemma3ForCausalLM"
    model_type = "gemma3_text"
    gguf_arch = gguf.MODEL_ARCH.GEMMA3
    qkv_bias = False
    o_bias_with_attention_bias = False
    qk_norm = True
    post_norms = True
    norm_offset = 1.0
    scaled_embedding = True
    hf_norms = {"attn_post_norm": "post_attention_layernorm.weight", "ffn_norm": "pre_feedforward_layernorm.weight"}

    def write_gguf_params(self, w: gguf.GGUFWriter, args: ModelArgs) -> None:
        types = args.layer_types or layer_types(args.num_hidden_layers)
        if types != layer_types(args.num_hidden_layers) or (args.rope_local_theta or LOCAL_THETA) != LOCAL_THETA:
            raise InputError(f"Gemma 3 GGUF (llama.cpp) has every {SWA_PATTERN}th layer global and local RoPE "
                             f"base {LOCAL_THETA:g}; this model differs")
        if args.query_pre_attn_scalar and args.query_pre_attn_scalar != args.head_dim:
            raise InputError("Gemma 3 GGUF (llama.cpp) scales scores by 1/sqrt(head_dim); "
                             f"query_pre_attn_scalar is {args.query_pre_attn_scalar:g}")
        super().write_gguf_params(w, args)

    def args_from_gguf(self, get, n_vocab: int, tied: bool, has_qkv_bias: bool) -> ModelArgs:
        args = super().args_from_gguf(get, n_vocab, tied, has_qkv_bias)
        return dataclasses.replace(args, layer_types=layer_types(args.num_hidden_layers),
                                   rope_local_theta=LOCAL_THETA, query_pre_attn_scalar=float(args.head_dim),
                                   hidden_act="gelu_pytorch_tanh")


ARCH = Gemma3()
