"""What an architecture module describes: tensor names and shapes, the GGUF
hyperparameter keys, and the row order of Q/K weights in each format.

Row order and RoPE pairing (docs/design.md §2): Hugging Face checkpoints pair head
channel i with i + d/2 ("neox"/rotate_half). A GGUF of arch ``llama`` stores
Q/K rows permuted so that pairs are adjacent (2i, 2i+1: "interleaved"), which
is what llama.cpp's ``llama`` RoPE expects; ``qwen2`` GGUFs keep HF order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gguf
import numpy as np

from ..config import ModelArgs
from ...formats.gguf_keys import HF, gguf_tensor

T = gguf.MODEL_TENSOR


@dataclass(frozen=True)
class TensorSpec:
    hf: str  # HF name
    gguf: str  # GGUF name
    shape: tuple[int, ...]  # HF (torch) shape: (out, in) for matrices
    qk_heads: int = 0  # >0: rows are Q or K heads (this many) whose pair order differs per format


def interleave_pairs(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate_half row order -> interleaved pairs, per head: rows (i, i+d/2) become (2i, 2i+1)."""
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def deinterleave_pairs(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of :func:`interleave_pairs`."""
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _f32_decimal(x: float) -> float:
    """GGUF stores floats as float32: recover the shortest decimal that maps to it (1e-06, not 9.99e-07)."""
    return float(str(np.float32(x)))


class Architecture:
    """Llama-style decoder. Subclasses change only what differs (Qwen2: biases)."""

    name = ""  # GGUF general.architecture
    hf_architecture = ""
    model_type = ""
    gguf_arch: gguf.MODEL_ARCH
    gguf_qk_interleaved = False  # Q/K rows stored in interleaved pair order in GGUF
    qkv_bias: bool | None = None  # None: follow config.attention_bias
    o_bias_with_attention_bias = True

    # -- tensors ---------------------------------------------------------
    def has_qkv_bias(self, args: ModelArgs) -> bool:
        return args.attention_bias if self.qkv_bias is None else self.qkv_bias

    def has_o_bias(self, args: ModelArgs) -> bool:
        return self.o_bias_with_attention_bias and args.attention_bias

    def tensors(self, args: ModelArgs) -> list[TensorSpec]:
        """Every tensor of the model in GGUF order, with HF names and HF shapes."""
        h, f, v = args.hidden_size, args.intermediate_size, args.vocab_size
        specs = [TensorSpec(HF.EMBED, gguf_tensor(T.TOKEN_EMBD), (v, h))]
        for i in range(args.num_hidden_layers):
            specs.append(TensorSpec(HF.ATTN_NORM.format(bid=i), gguf_tensor(T.ATTN_NORM, i), (h,)))
            for hf_t, kind, rows, heads in (
                (HF.Q, T.ATTN_Q, args.q_dim, args.num_attention_heads),
                (HF.K, T.ATTN_K, args.kv_dim, args.num_key_value_heads),
                (HF.V, T.ATTN_V, args.kv_dim, 0),
            ):
                qk = heads if self.gguf_qk_interleaved else 0
                specs.append(TensorSpec(hf_t.format(bid=i) + ".weight", gguf_tensor(kind, i), (rows, h), qk))
                if self.has_qkv_bias(args):
                    specs.append(TensorSpec(hf_t.format(bid=i) + ".bias", gguf_tensor(kind, i, "bias"), (rows,), qk))
            specs.append(TensorSpec(HF.O.format(bid=i) + ".weight", gguf_tensor(T.ATTN_OUT, i), (h, args.q_dim)))
            if self.has_o_bias(args):
                specs.append(TensorSpec(HF.O.format(bid=i) + ".bias", gguf_tensor(T.ATTN_OUT, i, "bias"), (h,)))
            specs.append(TensorSpec(HF.FFN_NORM.format(bid=i), gguf_tensor(T.FFN_NORM, i), (h,)))
            specs.append(TensorSpec(HF.GATE.format(bid=i), gguf_tensor(T.FFN_GATE, i), (f, h)))
            specs.append(TensorSpec(HF.UP.format(bid=i), gguf_tensor(T.FFN_UP, i), (f, h)))
            specs.append(TensorSpec(HF.DOWN.format(bid=i), gguf_tensor(T.FFN_DOWN, i), (h, f)))
        specs.append(TensorSpec(HF.NORM, gguf_tensor(T.OUTPUT_NORM), (h,)))
        if not args.tie_word_embeddings:
            specs.append(TensorSpec(HF.LM_HEAD, gguf_tensor(T.OUTPUT), (v, h)))
        return specs

    def to_gguf_order(self, spec: TensorSpec, w: np.ndarray) -> np.ndarray:
        return interleave_pairs(w, spec.qk_heads) if spec.qk_heads else w

    def from_gguf_order(self, spec: TensorSpec, w: np.ndarray) -> np.ndarray:
        return deinterleave_pairs(w, spec.qk_heads) if spec.qk_heads else w

    @property
    def gguf_rope_pairing(self) -> str:
        return "interleaved" if self.gguf_qk_interleaved else "neox"

    # -- hyperparameters -------------------------------------------------
    def write_gguf_params(self, w: gguf.GGUFWriter, args: ModelArgs) -> None:
        """Architecture keys as llama.cpp's converter writes them for this arch."""
        w.add_vocab_size(args.vocab_size)
        w.add_context_length(args.max_position_embeddings)
        w.add_embedding_length(args.hidden_size)
        w.add_block_count(args.num_hidden_layers)
        w.add_feed_forward_length(args.intermediate_size)
        w.add_head_count(args.num_attention_heads)
        w.add_head_count_kv(args.num_key_value_heads)
        w.add_rope_freq_base(args.rope_theta)
        w.add_layer_norm_rms_eps(args.rms_norm_eps)
        w.add_rope_dimension_count(args.head_dim)
        if args.head_dim != args.hidden_size // args.num_attention_heads:
            w.add_key_length(args.head_dim)
            w.add_value_length(args.head_dim)

    def args_from_gguf(self, get: Callable[[str, Any], Any], n_vocab: int, tied: bool,
                       has_qkv_bias: bool) -> ModelArgs:
        """ModelArgs from GGUF metadata. ``get(key, default)`` reads a metadata value."""
        a = self.name
        heads = get(f"{a}.attention.head_count", None)
        hidden = get(f"{a}.embedding_length", None)
        head_dim = get(f"{a}.attention.key_length", None) or get(f"{a}.rope.dimension_count", None)
        if head_dim is None and heads and hidden:
            head_dim = hidden // heads
        return ModelArgs(
            architecture=self.hf_architecture,
            model_type=self.model_type,
            hidden_size=hidden,
            intermediate_size=get(f"{a}.feed_forward_length", None),
            num_hidden_layers=get(f"{a}.block_count", None),
            num_attention_heads=heads,
            num_key_value_heads=get(f"{a}.attention.head_count_kv", heads),
            vocab_size=get(f"{a}.vocab_size", n_vocab),
            rms_norm_eps=_f32_decimal(get(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=_f32_decimal(get(f"{a}.rope.freq_base", 10000.0)),
            head_dim=head_dim or 0,
            max_position_embeddings=get(f"{a}.context_length", 4096),
            tie_word_embeddings=tied,
            attention_bias=has_qkv_bias,
            bos_token_id=get("tokenizer.ggml.bos_token_id", None),
            eos_token_id=get("tokenizer.ggml.eos_token_id", None),
        )
