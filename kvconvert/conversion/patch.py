"""Applying a calibrated profile while converting: which transform each tensor
gets, in which layout, and the KV-cache metadata that goes with it (docs/design.md §3).

portable: only K→Q smoothing is folded (exact, and stock loaders see nothing
  new); the pair permutation, K centering and V centering are applied by the
  runtime from metadata. The file keeps its architecture and runs unchanged in
  llama.cpp. With ``keep_weights`` (`--weights keep`, a GGUF input patched in
  place) nothing is folded: smoothing too goes to metadata (k_cache.smooth).
folded: smoothing, the pair permutation (Q/K rows; RoPE then needs the
  permuted θ table), K centering (b_k), a Hadamard V rotation (W_v, W_o) and V
  centering (b_v, b_o) are all in the weights; the architecture is renamed
  (arch/folded.py) so stock loaders refuse the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from . import transforms as tf
from ..models.arch.base import Architecture, TensorSpec
from ..models.arch.folded import folded
from ..base.errors import InputError
from ..kvcache.kvmeta import CacheMeta
from ..kvcache.types import TQ
from ..models.source import ModelSource, tensor_specs
from .profile import Profile

LAYOUTS = ("portable", "folded")
V_ROTATION_SEED = 0x76726F74  # "vrot": seeds the folded layout's V rotation


@dataclass
class Patch:
    profile: Profile
    layout: str
    src: ModelSource
    keep_weights: bool = False  # --weights keep: no tensor changes; smoothing goes to k_cache.smooth

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise InputError(f"unknown layout {self.layout!r} (choose portable or folded)")
        if self.keep_weights and self.layout != "portable":
            raise InputError("--weights keep leaves every tensor as it is, so it needs --layout portable; "
                             "for the folded layout choose a weight type (e.g. --weights f16)")
        a = self.src.args
        self.profile.model.check(a, self.profile.describe())
        self.L, self.H, self.Hk, self.d = a.num_hidden_layers, a.num_attention_heads, a.num_key_value_heads, a.head_dim
        t = self.profile.transforms
        P = self.d // 2
        self.scales = t.k_scale if t.k_scale is not None else np.ones((self.L, self.Hk, P))
        self.order = t.pair_order if t.pair_order is not None else np.tile(np.arange(P), (self.L, 1))
        self.k_mean = t.k_mean
        self.v_mean = t.v_mean
        self.R = tf.hadamard_rotation(self.d, V_ROTATION_SEED, self.Hk) if self.layout == "folded" else None

    @property
    def arch(self) -> Architecture:
        return folded(self.src.arch) if self.layout == "folded" else self.src.arch

    def specs(self) -> list[TensorSpec]:
        return tensor_specs(self.arch, self.src.args)

    # -- tensors ----------------------------------------------------------
    def tensor(self, spec: TensorSpec) -> np.ndarray:
        """The patched tensor in HF row order (float64 where transformed)."""
        name = spec.hf
        parts = name.split(".")
        if len(parts) < 5 or parts[3] != "self_attn":
            return self._get(name, spec)
        layer, proj, kind = int(parts[2]), parts[4], parts[5]
        x = self._get(name, spec)
        s, order = self.scales[layer], self.order[layer]
        fold = self.layout == "folded"
        if self.src.arch.qk_norm and proj in ("q_norm", "k_norm"):  # smoothing lives in the gains (§2)
            return tf.scale_qk_norm(x, self._shared_scales(layer), proj == "k_norm", spec.norm_offset)
        if self.src.arch.qk_norm and proj in ("q_proj", "k_proj"):
            return x
        if proj == "q_proj":
            x = tf.scale_q_rows(x, s, self.H)
            return tf.permute_pair_rows(x, order, self.H) if fold else x
        if proj == "k_proj":
            x = tf.scale_k_rows(x, s)
            if fold:
                x = tf.permute_pair_rows(x, order, self.Hk)
                if kind == "bias":
                    x = tf.center_k_bias(x, self._k_mean_folded(layer))
            return x
        if not fold:
            return x
        if proj == "v_proj":
            x = tf.rotate_v_rows(x, self.R)
            if kind == "bias" and self.v_mean is not None:
                x = tf.center_v_bias(x, self._v_mean_rotated(layer))
            return x
        if proj == "o_proj":
            if kind == "weight":
                return tf.rotate_o_cols(x, self.R, self.H)
            if self.v_mean is None:
                return x
            wo = tf.rotate_o_cols(self.src.weights.get(name.replace(".bias", ".weight")), self.R, self.H)
            return tf.fold_v_mean_into_o_bias(x, wo, self._v_mean_rotated(layer), self.H)
        return x

    def _shared_scales(self, layer: int) -> np.ndarray:
        """The layer's smoothing scales (P,) when every KV head has the same ones: all a QK-norm gain can hold."""
        s = self.scales[layer]
        if not np.allclose(s, s[:1], rtol=1e-6):
            raise InputError(f"{self.src.path}: {self.src.arch.name} normalises q and k per head (QK-norm), so K→Q "
                             "smoothing must be the same for every KV head of a layer; re-run the search")
        return s[0]

    def _get(self, name: str, spec: TensorSpec) -> np.ndarray:
        if self.src.weights.has(name):
            return self.src.weights.get(name)
        if name.endswith(".bias"):  # folded files have every attention bias; absent ones start at zero
            return np.zeros(spec.shape, dtype=np.float64)
        raise InputError(f"{self.src.path}: tensor {name} is missing")

    def _k_mean_folded(self, layer: int) -> np.ndarray:
        mu = self.k_mean[layer] if self.k_mean is not None else np.zeros((self.Hk, self.d))
        return tf.permute_pair_rows(mu.reshape(-1), self.order[layer], self.Hk).reshape(self.Hk, self.d)

    def _v_mean_rotated(self, layer: int) -> np.ndarray:
        return np.einsum("gij,gj->gi", self.R, self.v_mean[layer].astype(np.float64))

    # -- metadata ---------------------------------------------------------
    def cache_meta(self) -> CacheMeta:
        p = self.profile
        pairing = self.arch.gguf_rope_pairing
        meta = CacheMeta(k_type=p.k_type, v_type=p.v_type, k_configs=p.k_configs(), v_configs=p.v_configs(),
                         layout=self.layout, profile_json=json.dumps(_summary(p)), n_sink=p.sink_tokens,
                         n_recent=p.recent or None)
        P = self.d // 2
        if p.transforms.k_basis is not None and p.k_type == TQ:  # in the cache's channel order: any layout
            meta.k_basis = np.asarray(p.transforms.k_basis, dtype=np.float32)
            meta.k_basis_block = p.transforms.k_basis_block
        if self.layout == "folded":
            mu = np.stack([self._k_mean_folded(l) for l in range(self.L)]) if self.k_mean is not None else None
            meta.k_mean = None if mu is None else _to_file(mu, "interleaved")
            meta.k_mean_folded = mu is not None
            meta.rope_pair_src = self.order.astype(np.int32)
        else:
            if self.k_mean is not None:
                meta.k_mean = _to_file(self.k_mean, pairing)
            a, b = (self.order, self.order + P) if pairing == "neox" else (2 * self.order, 2 * self.order + 1)
            meta.k_perm = np.stack([a, b], -1).reshape(self.L, self.d).astype(np.int32)
            meta.v_mean = None if self.v_mean is None else self.v_mean.astype(np.float32)
            if self.keep_weights and not np.all(self.scales == 1):
                meta.k_smooth = np.asarray(self.scales, dtype=np.float32)
        return meta


def _to_file(x: np.ndarray, pairing: str) -> np.ndarray:
    """(..., d) HF channel order → the file's order."""
    if pairing == "neox":
        return np.asarray(x, dtype=np.float32)
    P = x.shape[-1] // 2
    return np.stack([x[..., :P], x[..., P:]], -1).reshape(x.shape).astype(np.float32)


def public_profile_json(p: Profile) -> dict:
    """The profile as it may be shared (GGUF metadata, Hub uploads): provenance keeps names, repo ids
    and hashes only, never a local path (base.paths.public_name)."""
    from ..base.paths import public_name

    d = p.to_json()
    prov = dict(d.get("provenance") or {})
    for key in ("model", "calibration", "text"):
        if isinstance(prov.get(key), str):
            prov[key] = public_name(prov[key])
    d["provenance"] = prov
    if isinstance(d.get("measured"), dict) and isinstance(d["measured"].get("text"), str):
        d["measured"] = dict(d["measured"], text=public_name(d["measured"]["text"]))
    return d


def _summary(p: Profile) -> dict:
    """The shareable profile without its arrays (those are in dedicated metadata keys)."""
    d = public_profile_json(p)
    d.pop("transforms", None)
    return d
