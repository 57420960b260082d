"""The folded layout's architectures (docs/design.md §3): ``kvc-llama`` and ``kvc-qwen2``.

A folded file has the K-cache pair permutation and the K/V means folded into
the weights, so its RoPE needs a per-layer permuted θ table that stock loaders
do not know. The distinct ``general.architecture`` makes llama.cpp refuse the
file ("unknown model architecture") instead of running it wrongly. Tensors are
the base architecture's plus a bias on every attention projection (they carry
the folded means), with Q/K rows in interleaved pair order.
"""

from __future__ import annotations

from ...base.errors import InputError
from ..config import ModelArgs
from .base import Architecture

PREFIX = "kvc-"


class Folded(Architecture):
    gguf_qk_interleaved = True
    qkv_bias = True

    def __init__(self, base: Architecture):
        if base.qk_norm or base.post_norms:
            raise InputError(f"the folded layout puts K centering into b_k, after which {base.name} normalises q and k "
                             "(QK-norm); convert it with the portable layout")
        self.base = base
        self.name = PREFIX + base.name
        self.hf_architecture, self.model_type, self.gguf_arch = base.hf_architecture, base.model_type, base.gguf_arch

    def has_o_bias(self, args: ModelArgs) -> bool:
        return True


def folded(base: Architecture) -> Folded:
    return base if isinstance(base, Folded) else Folded(base)
