"""What an architecture module describes: the block (norms, activation, biases,
QK-norm, RoPE, embedding scale, sliding window per layer), tensor names and
shapes, the GGUF hyperparameter keys, and the row order of Q/K weights in each
format. This is the one description of an architecture: the numpy reference
(models/reference.py) computes from it, and the runtime binding
(runtime/engine.py) fills the C descriptors (``kvc_layer_desc``/``kvc_model_desc``
in native/include/kvc.h) from it — every tensor by its ``slot``, the field it
fills, and the block's switches by :meth:`Architecture.block` (docs/design.md §1).

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

from ..config import ACTIVATIONS as HF_ACTIVATIONS, ModelArgs
from ...formats.gguf_keys import HF, gguf_tensor

T = gguf.MODEL_TENSOR


@dataclass(frozen=True)
class TensorSpec:
    hf: str  # HF name
    gguf: str  # GGUF name
    shape: tuple[int, ...]  # HF (torch) shape: (out, in) for matrices
    qk_heads: int = 0  # >0: rows are Q or K heads (this many) whose pair order differs per format
    slot: str = ""  # the field of kvc_layer_desc (layer >= 0) or kvc_model_desc it fills; the reference reads it
    layer: int = -1  # -1: a model-level tensor
    norm_offset: float = 0.0  # an RMSNorm gain stored in HF as gain − norm_offset (Gemma: 1); GGUF stores the gain


# Slots of one block: slot -> (HF name under model.layers.{bid}., GGUF tensor). Which of them a
# model has is decided by Architecture.tensors; the HF names of norms differ per family
# (Architecture.hf_norms). The same names are the fields of kvc_layer_desc.
LAYER_SLOTS: dict[str, tuple[str, gguf.MODEL_TENSOR]] = {
    "attn_norm": ("input_layernorm.weight", T.ATTN_NORM),
    "wq": ("self_attn.q_proj.weight", T.ATTN_Q), "bq": ("self_attn.q_proj.bias", T.ATTN_Q),
    "wk": ("self_attn.k_proj.weight", T.ATTN_K), "bk": ("self_attn.k_proj.bias", T.ATTN_K),
    "wv": ("self_attn.v_proj.weight", T.ATTN_V), "bv": ("self_attn.v_proj.bias", T.ATTN_V),
    "q_norm": ("self_attn.q_norm.weight", T.ATTN_Q_NORM), "k_norm": ("self_attn.k_norm.weight", T.ATTN_K_NORM),
    "wo": ("self_attn.o_proj.weight", T.ATTN_OUT), "bo": ("self_attn.o_proj.bias", T.ATTN_OUT),
    "attn_post_norm": ("post_attention_layernorm.weight", T.ATTN_POST_NORM),
    "ffn_norm": ("post_attention_layernorm.weight", T.FFN_NORM),
    "w_gate": ("mlp.gate_proj.weight", T.FFN_GATE), "w_up": ("mlp.up_proj.weight", T.FFN_UP),
    "w_down": ("mlp.down_proj.weight", T.FFN_DOWN),
    "ffn_post_norm": ("post_feedforward_layernorm.weight", T.FFN_POST_NORM),
}
ACTIVATIONS = ("silu", "gelu_tanh")  # index = kvc_model_desc.activation (KVC_ACT_*)


@dataclass(frozen=True)
class Block:
    """How one model computes, beyond its tensors: what the reference and the runtime switch on.

    Per layer: ``windows[l]`` (0: global attention, else only keys at distance < window) and
    ``inv_freq[l]`` (d/2 RoPE angles per position, scaling included)."""

    activation: str  # "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    embed_scale: float  # token embeddings are multiplied by it (Gemma: sqrt(hidden))
    attn_scale: float  # scores q·k are multiplied by it (1/sqrt(head_dim), Gemma: query_pre_attn_scalar^-1/2)
    qk_norm: bool  # per-head RMSNorm of q and k (gains q_norm, k_norm) before RoPE
    post_norms: bool  # RMSNorm of the attention and MLP outputs before each residual add (Gemma)
    norm_offset: float  # RMSNorm gain = norm_offset + HF weight
    windows: tuple[int, ...]
    inv_freq: tuple[np.ndarray, ...]


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
    """Llama-style decoder. Subclasses change only what differs (Qwen2: biases; Qwen3:
    QK-norm; Mistral: a sliding window; Gemma 3: GeGLU, four norms, scaled embeddings...)."""

    name = ""  # GGUF general.architecture
    hf_architecture = ""
    model_type = ""
    gguf_arch: gguf.MODEL_ARCH
    gguf_qk_interleaved = False  # Q/K rows stored in interleaved pair order in GGUF
    qkv_bias: bool | None = None  # None: follow config.attention_bias
    o_bias_with_attention_bias = True
    # -- the block (see Block) --
    qk_norm = False
    post_norms = False
    norm_offset = 0.0
    scaled_embedding = False
    # HF names of norms that differ from LAYER_SLOTS (Gemma: post_attention_layernorm is the attention's post-norm)
    hf_norms: dict[str, str] = {}

    def block(self, args: ModelArgs) -> Block:
        from ..rope import layer_inv_freq

        return Block(
            activation=HF_ACTIVATIONS[args.hidden_act],
            embed_scale=float(np.sqrt(args.hidden_size)) if self.scaled_embedding else 1.0,
            attn_scale=1.0 / float(np.sqrt(args.query_pre_attn_scalar or args.head_dim)),
            qk_norm=self.qk_norm, post_norms=self.post_norms, norm_offset=self.norm_offset,
            windows=tuple(self.layer_window(args, i) for i in range(args.num_hidden_layers)),
            inv_freq=tuple(layer_inv_freq(args, i) for i in range(args.num_hidden_layers)),
        )

    def cache_rows(self, args: ModelArgs, n_ctx: int, n_batch: int = 512) -> list[int]:
        """Positions each layer's KV cache holds at a context of n_ctx tokens, as the runtime allocates
        them (native/src/cpu/kv_cache.c): n_ctx, or for a sliding-window layer at most its window, a
        batch, and a batch to rewind into (2·window + 2·n_batch). Every KV-MiB figure shown uses this."""
        return [min(n_ctx, 2 * w + 2 * n_batch) if w else n_ctx
                for w in (self.layer_window(args, layer) for layer in range(args.num_hidden_layers))]

    def layer_window(self, args: ModelArgs, layer: int) -> int:
        """0 for global attention, else the layer's sliding window."""
        if not args.sliding_window:
            return 0
        if args.layer_types is None or args.layer_types[layer] == "sliding_attention":
            return args.sliding_window
        return 0

    # -- tensors ---------------------------------------------------------
    def has_qkv_bias(self, args: ModelArgs) -> bool:
        return args.attention_bias if self.qkv_bias is None else self.qkv_bias

    def has_o_bias(self, args: ModelArgs) -> bool:
        return self.o_bias_with_attention_bias and args.attention_bias

    def layer_slots(self, args: ModelArgs) -> list[str]:
        """The slots of LAYER_SLOTS one block of this model has, in GGUF order."""
        qkv_b, o_b = self.has_qkv_bias(args), self.has_o_bias(args)
        want = {"bq": qkv_b, "bk": qkv_b, "bv": qkv_b, "bo": o_b, "q_norm": self.qk_norm, "k_norm": self.qk_norm,
                "attn_post_norm": self.post_norms, "ffn_post_norm": self.post_norms}
        return [s for s in LAYER_SLOTS if want.get(s, True)]

    def tensors(self, args: ModelArgs) -> list[TensorSpec]:
        """Every tensor of the model in GGUF order, with HF names, HF shapes and runtime slots."""
        h, f, v, d = args.hidden_size, args.intermediate_size, args.vocab_size, args.head_dim
        H, Hk = args.num_attention_heads, args.num_key_value_heads
        off = self.norm_offset
        shapes = {"attn_norm": (h,), "wq": (args.q_dim, h), "bq": (args.q_dim,), "wk": (args.kv_dim, h),
                  "bk": (args.kv_dim,), "wv": (args.kv_dim, h), "bv": (args.kv_dim,), "q_norm": (d,),
                  "k_norm": (d,), "wo": (h, args.q_dim), "bo": (h,), "attn_post_norm": (h,), "ffn_norm": (h,),
                  "w_gate": (f, h), "w_up": (f, h), "w_down": (h, f), "ffn_post_norm": (h,)}
        qk_heads = {"wq": H, "bq": H, "wk": Hk, "bk": Hk} if self.gguf_qk_interleaved else {}
        specs = [TensorSpec(HF.EMBED, gguf_tensor(T.TOKEN_EMBD), (v, h), slot="tok_embd")]
        for i in range(args.num_hidden_layers):
            for slot in self.layer_slots(args):
                hf, kind = LAYER_SLOTS[slot]
                hf = self.hf_norms.get(slot, hf)
                specs.append(TensorSpec(f"model.layers.{i}.{hf}", gguf_tensor(kind, i, hf.rsplit(".", 1)[1]),
                                        shapes[slot], qk_heads.get(slot, 0), slot, i,
                                        off if slot.endswith("norm") else 0.0))
        specs.append(TensorSpec(HF.NORM, gguf_tensor(T.OUTPUT_NORM), (h,), slot="output_norm", norm_offset=off))
        if not args.tie_word_embeddings:
            specs.append(TensorSpec(HF.LM_HEAD, gguf_tensor(T.OUTPUT), (v, h), slot="output"))
        return specs

    def to_gguf_rows(self, spec: TensorSpec, w: np.ndarray) -> np.ndarray:
        """HF row order -> the file's (Q/K pairs); values unchanged."""
        return interleave_pairs(w, spec.qk_heads) if spec.qk_heads else w

    def to_gguf_order(self, spec: TensorSpec, w: np.ndarray) -> np.ndarray:
        """An HF tensor as the GGUF stores it: the file's row order, norm gains with their offset."""
        w = self.to_gguf_rows(spec, w)
        return w + spec.norm_offset if spec.norm_offset else w

    def from_gguf_order(self, spec: TensorSpec, w: np.ndarray) -> np.ndarray:
        w = deinterleave_pairs(w, spec.qk_heads) if spec.qk_heads else w
        return w - spec.norm_offset if spec.norm_offset else w

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
        if args.sliding_window:
            w.add_sliding_window(args.sliding_window)

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
            sliding_window=get(f"{a}.attention.sliding_window", 0) or 0,
        )
