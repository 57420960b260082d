"""Names of GGUF metadata keys and tensors, in one place.

Standard keys come from the ``gguf`` package (``gguf.Keys``); kvconvert's own
keys live under the ``kvconvert.`` prefix and are listed here, like gguf-py's
``Keys`` classes. Tensor names are built from ``gguf.TENSOR_NAMES`` so the
converter, the importer and the runtime agree on them.
"""

from __future__ import annotations

import gguf

SCHEMA_VERSION = 1


class Keys:
    class KVConvert:
        SCHEMA_VERSION = "kvconvert.schema_version"
        VERSION = "kvconvert.version"  # kvconvert release that wrote the file
        SOURCE = "kvconvert.source"  # what the file was converted from (path or repo id)
        SOURCE_FORMAT = "kvconvert.source_format"  # "hf" or "gguf"
        WEIGHTS = "kvconvert.weights"  # "keep": the source GGUF's tensors byte for byte (else absent)
        LAYOUT = "kvconvert.layout"  # "portable" or "folded"
        ROTATION_SEED = "kvconvert.rotation_seed"  # u64 seed of the TurboQuant signs
        PROFILE = "kvconvert.profile"  # JSON: the profile applied (configs, provenance, measurements; no arrays)
        SINK_TOKENS = "kvconvert.sink_tokens"  # u32: leading positions TurboQuant caches also keep in f16
        # u32: TurboQuant caches also use the last N positions before each query exactly (f16 ring)
        RECENT_WINDOW = "kvconvert.recent_window"

    class KCache:
        """Per-layer K cache (arrays have one entry per layer)."""

        TYPE = "kvconvert.k_cache.type"  # "tq" or a standard type name ("f16", "q8_0", ...)
        N_HI = "kvconvert.k_cache.n_hi"
        HI_BITS = "kvconvert.k_cache.hi_bits"
        LO_BITS = "kvconvert.k_cache.lo_bits"
        QJL_HI = "kvconvert.k_cache.qjl_hi"
        QJL_LO = "kvconvert.k_cache.qjl_lo"
        SCALE = "kvconvert.k_cache.scale"  # "ls", "norm" or "proj"; V's too unless v_cache.scale is set
        # (layers) i32: 8-bit group scales on the grid 2^((e + base)/32) of each layer (-32768: fp16); absent: fp16 scales
        SCALE8_BASE = "kvconvert.k_cache.scale8_base"
        # (layers) u32: memory bits of each layer's bitshift-trellis codes (0: Lloyd–Max codes); absent: all 0
        TRELLIS = "kvconvert.k_cache.trellis"
        PERM = "kvconvert.k_cache.perm"  # (layers * head_dim) i32: channel order after RoPE
        MEAN = "kvconvert.k_cache.mean"  # (layers * kv_heads * head_dim) f32: pre-RoPE K mean
        CENTER_PAIRS = "kvconvert.k_cache.center_pairs"  # u32, 0 = all pairs
        MEAN_FOLDED = "kvconvert.k_cache.mean_folded"  # bool: b_k already subtracts MEAN (folded layout)
        ROPE_PAIR_SRC = "kvconvert.k_cache.rope_pair_src"  # (layers * head_dim/2) i32: θ index of each pair (folded)
        # (layers * kv_heads * head_dim/2) f32: K→Q smoothing the runtime applies (weights kept as they are):
        # pair j of KV head g is divided by SMOOTH[l, g, j] in K and multiplied by it in every query head of g
        SMOOTH = "kvconvert.k_cache.smooth"
        # (layers * kv_heads * head_dim * head_dim) f32: the basis TurboQuant K is coded in after PERM
        # (kvcache/kbasis.py): key k' = k · B[l, g], queries q · B[l, g]⁻ᵀ; row i = input channel i. Absent: none
        BASIS = "kvconvert.k_cache.basis"
        # u32 > 0: BASIS follows RoPE in blocks of this many positions (a key at p is turned back by RoPE's
        # rotation at p - p % block before the basis, and the queries scoring it alike). Absent or 0: fixed
        BASIS_BLOCK = "kvconvert.k_cache.basis_block"

    class VCache:
        TYPE = "kvconvert.v_cache.type"
        N_HI = "kvconvert.v_cache.n_hi"
        HI_BITS = "kvconvert.v_cache.hi_bits"
        LO_BITS = "kvconvert.v_cache.lo_bits"
        SCALE = "kvconvert.v_cache.scale"  # as KCache.SCALE, for V (absent: V uses k_cache.scale)
        SCALE8_BASE = "kvconvert.v_cache.scale8_base"  # as KCache.SCALE8_BASE
        TRELLIS = "kvconvert.v_cache.trellis"  # as KCache.TRELLIS
        MEAN = "kvconvert.v_cache.mean"  # (layers * kv_heads * head_dim) f32, subtracted by the runtime (portable)


# HF tensor-name templates shared by the two architectures ({bid} = layer index).
class HF:
    EMBED = "model.embed_tokens.weight"
    NORM = "model.norm.weight"
    LM_HEAD = "lm_head.weight"
    ATTN_NORM = "model.layers.{bid}.input_layernorm.weight"
    FFN_NORM = "model.layers.{bid}.post_attention_layernorm.weight"
    Q = "model.layers.{bid}.self_attn.q_proj"
    K = "model.layers.{bid}.self_attn.k_proj"
    V = "model.layers.{bid}.self_attn.v_proj"
    O = "model.layers.{bid}.self_attn.o_proj"
    GATE = "model.layers.{bid}.mlp.gate_proj.weight"
    UP = "model.layers.{bid}.mlp.up_proj.weight"
    DOWN = "model.layers.{bid}.mlp.down_proj.weight"


def gguf_tensor(kind: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    """GGUF tensor name, e.g. ``gguf_tensor(MODEL_TENSOR.ATTN_Q, 3)`` → ``blk.3.attn_q.weight``."""
    base = gguf.TENSOR_NAMES[kind].format(bid=bid)
    return f"{base}.{suffix}" if suffix else base
