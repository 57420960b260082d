"""The KV-cache description a rotation-ready GGUF carries in kvconvert.*
metadata (DESIGN §6): layout, per-layer K and V cache configs, the post-RoPE
channel permutation, the pre-RoPE K means (and whether b_k already subtracts
them), the folded layout's per-layer RoPE pair map, V means, the rotation seed
and the applied profile as JSON. Arrays are in the file's channel order.
Written by the converter, read by the runtime so that a file runs with its
caches by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np

from .config import ModelArgs
from .errors import InputError
from .gguf_io import field_value
from .gguf_keys import Keys
from .turboquant import KConfig

K, V = Keys.KCache, Keys.VCache
MAX_SINK = 64  # kvc_context_params.n_sink's limit
DEFAULT_SINK = 1  # TurboQuant caches keep the first position exact unless told otherwise


@dataclass
class CacheMeta:
    k_type: str = "tq"  # "tq" or a standard cache type name
    v_type: str = "f16"
    k_configs: list[KConfig] | None = None  # one per layer when k_type == "tq"
    v_configs: list[KConfig] | None = None
    k_perm: np.ndarray | None = None  # (layers, head_dim) int
    k_mean: np.ndarray | None = None  # (layers, kv_heads, head_dim) float32
    center_pairs: int = 0
    seed: int = 0x6B7663
    layout: str = "portable"
    k_mean_folded: bool = False
    rope_pair_src: np.ndarray | None = None  # (layers, head_dim/2) int, folded layout
    v_mean: np.ndarray | None = None  # (layers, kv_heads, head_dim) float32
    profile_json: str | None = None
    n_sink: int | None = None  # attention-sink positions kept in f16 by TurboQuant caches (None: runtime default)

    def add_to_gguf(self, w: gguf.GGUFWriter) -> None:
        w.add_string(Keys.KVConvert.LAYOUT, self.layout)
        w.add_uint64(Keys.KVConvert.ROTATION_SEED, self.seed)
        if self.profile_json:
            w.add_string(Keys.KVConvert.PROFILE, self.profile_json)
        if self.n_sink is not None:
            w.add_uint32(Keys.KVConvert.SINK_TOKENS, int(self.n_sink))
        w.add_string(K.TYPE, self.k_type)
        w.add_string(V.TYPE, self.v_type)
        if self.k_configs:
            w.add_array(K.N_HI, [c.n_hi for c in self.k_configs])
            w.add_array(K.HI_BITS, [c.hi_bits for c in self.k_configs])
            w.add_array(K.LO_BITS, [c.lo_bits for c in self.k_configs])
            w.add_array(K.QJL_HI, [int(c.qjl_hi) for c in self.k_configs])
            w.add_array(K.QJL_LO, [int(c.qjl_lo) for c in self.k_configs])
            w.add_string(K.SCALE, self.k_configs[0].scale)
        if self.v_configs:
            w.add_array(V.N_HI, [c.n_hi for c in self.v_configs])
            w.add_array(V.HI_BITS, [c.hi_bits for c in self.v_configs])
            w.add_array(V.LO_BITS, [c.lo_bits for c in self.v_configs])
        if self.k_perm is not None:
            w.add_array(K.PERM, [int(i) for i in np.asarray(self.k_perm).reshape(-1)])
        if self.k_mean is not None:
            w.add_array(K.MEAN, [float(x) for x in np.asarray(self.k_mean, dtype=np.float32).reshape(-1)])
        w.add_uint32(K.CENTER_PAIRS, self.center_pairs)
        w.add_bool(K.MEAN_FOLDED, self.k_mean_folded)
        if self.rope_pair_src is not None:
            w.add_array(K.ROPE_PAIR_SRC, [int(i) for i in np.asarray(self.rope_pair_src).reshape(-1)])
        if self.v_mean is not None:
            w.add_array(V.MEAN, [float(x) for x in np.asarray(self.v_mean, dtype=np.float32).reshape(-1)])

    @classmethod
    def from_gguf(cls, reader, args: ModelArgs, source: str = "GGUF") -> "CacheMeta | None":
        """The file's cache description, or None if it has no kvconvert cache keys."""
        get = lambda key, default=None: field_value(reader, key, default)  # noqa: E731
        if get(K.TYPE) is None:
            return None
        L, Hk, d = args.num_hidden_layers, args.num_key_value_heads, args.head_dim
        try:
            meta = cls(k_type=get(K.TYPE), v_type=get(V.TYPE, "f16"), center_pairs=int(get(K.CENTER_PAIRS, 0)),
                       seed=int(get(Keys.KVConvert.ROTATION_SEED, 0x6B7663)),
                       layout=get(Keys.KVConvert.LAYOUT, "portable"), k_mean_folded=bool(get(K.MEAN_FOLDED, False)),
                       profile_json=get(Keys.KVConvert.PROFILE))
            sink = get(Keys.KVConvert.SINK_TOKENS)
            if sink is not None:
                meta.n_sink = int(sink)
                if not 0 <= meta.n_sink <= MAX_SINK:
                    raise ValueError(f"sink_tokens {meta.n_sink} outside 0..{MAX_SINK}")
            if meta.layout not in ("portable", "folded"):
                raise ValueError(f"unknown layout {meta.layout!r}")
            if meta.k_type == "tq":
                meta.k_configs = _configs(get, K, L, d, get(K.SCALE, "ls"), qjl=True)
            if meta.v_type == "tq":
                meta.v_configs = _configs(get, V, L, d, get(K.SCALE, "ls"), qjl=False)
            perm, mean = get(K.PERM), get(K.MEAN)
            if perm is not None:
                meta.k_perm = np.asarray(perm, dtype=np.int32).reshape(L, d)
                if any(sorted(row) != list(range(d)) for row in meta.k_perm.tolist()):
                    raise ValueError("k_cache.perm is not a permutation of each layer's channels")
            if mean is not None:
                meta.k_mean = np.asarray(mean, dtype=np.float32).reshape(L, Hk, d)
            if meta.k_mean_folded and meta.k_mean is None:
                raise ValueError("the K mean is folded into the weights but not stored")
            src, vmean = get(K.ROPE_PAIR_SRC), get(V.MEAN)
            if src is not None:
                meta.rope_pair_src = np.asarray(src, dtype=np.int32).reshape(L, d // 2)
                if any(sorted(row) != list(range(d // 2)) for row in meta.rope_pair_src.tolist()):
                    raise ValueError("rope_pair_src is not a permutation of each layer's pairs")
            if meta.layout == "folded" and meta.rope_pair_src is None:
                raise ValueError("a folded file needs its RoPE pair map")
            if vmean is not None:
                meta.v_mean = np.asarray(vmean, dtype=np.float32).reshape(L, Hk, d)
        except (ValueError, TypeError) as e:
            raise InputError(f"{source}: invalid kvconvert cache metadata ({e}); re-convert the model") from None
        return meta


def _configs(get, keys, n_layer: int, d: int, scale: str, qjl: bool) -> list[KConfig]:
    cols = [get(keys.N_HI), get(keys.HI_BITS), get(keys.LO_BITS)]
    cols += [get(keys.QJL_HI, [0] * n_layer), get(keys.QJL_LO, [0] * n_layer)] if qjl else [[0] * n_layer] * 2
    if any(c is None or len(c) != n_layer for c in cols):
        raise ValueError(f"per-layer cache arrays must have {n_layer} entries")
    return [KConfig(d=d, n_hi=int(n), hi_bits=int(h), lo_bits=int(lo), qjl_hi=bool(qh), qjl_lo=bool(ql), scale=scale)
            for n, h, lo, qh, ql in zip(*cols)]
