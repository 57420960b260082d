"""The KV-cache description a rotation-ready GGUF carries in kvconvert.*
metadata (docs/design.md §6): layout, per-layer K and V cache configs, the post-RoPE
channel permutation, the pre-RoPE K means (and whether b_k already subtracts
them), the folded layout's per-layer RoPE pair map, V means, the rotation seed
and the applied profile as JSON. Arrays are in the file's channel order.
Written by the converter, read by the runtime so that a file runs with its
caches by default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

import gguf
import numpy as np

from ..base.errors import InputError
from ..formats.gguf_io import field_value
from ..formats.gguf_keys import Keys
from . import kbasis, trellis
from .turboquant import SCALE8_BASE_MAX, SCALE8_BASE_MIN, SCALES, KConfig, side_scale
from .types import DEFAULT_SEED, STANDARD, TQ
from ..base import validate as V

K, V_ = Keys.KCache, Keys.VCache
MAX_SINK = 64  # kvc_context_params.n_sink's limit
DEFAULT_SINK = 1  # TurboQuant caches keep the first position exact unless told otherwise
MAX_RECENT = 256  # kvc_context_params.n_recent's limit
DEFAULT_RECENT = 0  # no recent exact window unless the file or the user asks for one


def sink_bits(n_sink: int, n_ctx: int) -> float:
    """Extra bits per value of keeping n_sink positions in f16 besides their codes,
    spread over a context of n_ctx tokens."""
    return n_sink * 16.0 / n_ctx if n_ctx > 0 else 0.0


RECENT_SLACK = 16  # ring rows beyond the window (native/src/cpu/kv_recent.h KV_RECENT_SLACK)


def recent_bits(n_recent: int, n_ctx: int) -> float:
    """Bits per value a recent exact window of n_recent positions adds to a TurboQuant cache at a
    context of n_ctx tokens: the runtime's ring of n_recent + RECENT_SLACK f16 rows (at most
    n_ctx) spread over n_ctx (its one-batch buffer, shared by the layers, is not counted).
    E.g. w = 32: 1.5 at 512 tokens, 0.023 at 32k."""
    if n_recent <= 0 or n_ctx <= 0:
        return 0.0
    return min(n_recent + RECENT_SLACK, n_ctx) * 16.0 / n_ctx


def exact_bits(n_sink: int, n_recent: int, n_ctx: int) -> float:
    """Bits per value of a TurboQuant cache's exact f16 rows (sinks and the recent window's ring)
    at a context of n_ctx tokens."""
    return sink_bits(n_sink, n_ctx) + recent_bits(n_recent, n_ctx)


MIN_SMOOTH = 1e-3  # k_cache.smooth scales must lie in [MIN_SMOOTH, 1/MIN_SMOOTH] (the search clamps to [1/8, 8])


class CacheDims(Protocol):
    """The model dimensions a cache description is checked against (models.config.ModelArgs has them;
    kvcache sits below models, so it names only what it reads)."""

    num_hidden_layers: int
    num_key_value_heads: int
    head_dim: int


@dataclass
class CacheMeta:
    k_type: str = TQ  # TQ or a standard cache type name (types.STANDARD)
    v_type: str = "f16"
    k_configs: list[KConfig] | None = None  # one per layer when k_type == TQ
    v_configs: list[KConfig] | None = None
    k_perm: np.ndarray | None = None  # (layers, head_dim) int
    k_mean: np.ndarray | None = None  # (layers, kv_heads, head_dim) float32
    center_pairs: int = 0
    seed: int = DEFAULT_SEED
    layout: str = "portable"
    k_mean_folded: bool = False
    rope_pair_src: np.ndarray | None = None  # (layers, head_dim/2) int, folded layout
    v_mean: np.ndarray | None = None  # (layers, kv_heads, head_dim) float32
    profile_json: str | None = None
    n_sink: int | None = None  # attention-sink positions kept in f16 by TurboQuant caches (None: runtime default)
    n_recent: int | None = None  # recent exact window of TurboQuant caches (None: runtime default, off)
    # K→Q smoothing applied by the runtime (weights kept byte for byte): (layers, kv_heads, head_dim/2), pair j
    # of KV head g divided by it in K, multiplied in Q. None: none, or folded into the weights.
    k_smooth: np.ndarray | None = None
    # TurboQuant K coded in a calibrated basis after the permutation (kbasis.py): (layers, kv_heads, d, d)
    k_basis: np.ndarray | None = None
    k_basis_block: int = 0  # > 0: the basis follows RoPE in blocks of this many positions (kbasis.py)

    def add_to_gguf(self, w: gguf.GGUFWriter) -> None:
        k_scale = side_scale(self.k_configs, "K") if self.k_configs else "ls"
        v_scale = side_scale(self.v_configs, "V") if self.v_configs else None
        w.add_string(Keys.KVConvert.LAYOUT, self.layout)
        w.add_uint64(Keys.KVConvert.ROTATION_SEED, self.seed)
        if self.profile_json:
            w.add_string(Keys.KVConvert.PROFILE, self.profile_json)
        if self.n_sink is not None:
            w.add_uint32(Keys.KVConvert.SINK_TOKENS, int(self.n_sink))
        if self.n_recent is not None:
            w.add_uint32(Keys.KVConvert.RECENT_WINDOW, int(self.n_recent))
        w.add_string(K.TYPE, self.k_type)
        w.add_string(V_.TYPE, self.v_type)
        if self.k_configs:
            w.add_array(K.N_HI, [c.n_hi for c in self.k_configs])
            w.add_array(K.HI_BITS, [c.hi_bits for c in self.k_configs])
            w.add_array(K.LO_BITS, [c.lo_bits for c in self.k_configs])
            w.add_array(K.QJL_HI, [int(c.qjl_hi) for c in self.k_configs])
            w.add_array(K.QJL_LO, [int(c.qjl_lo) for c in self.k_configs])
            w.add_string(K.SCALE, k_scale)
            _add_scale8(w, K.SCALE8_BASE, self.k_configs)
            _add_trellis(w, K.TRELLIS, self.k_configs)
        if self.v_configs:
            w.add_array(V_.N_HI, [c.n_hi for c in self.v_configs])
            w.add_array(V_.HI_BITS, [c.hi_bits for c in self.v_configs])
            w.add_array(V_.LO_BITS, [c.lo_bits for c in self.v_configs])
            if v_scale != k_scale:
                w.add_string(V_.SCALE, v_scale)  # absent: V's scale is K's (older files)
            _add_scale8(w, V_.SCALE8_BASE, self.v_configs)
            _add_trellis(w, V_.TRELLIS, self.v_configs)
        if self.k_perm is not None:
            w.add_array(K.PERM, [int(i) for i in np.asarray(self.k_perm).reshape(-1)])
        if self.k_mean is not None:
            w.add_array(K.MEAN, [float(x) for x in np.asarray(self.k_mean, dtype=np.float32).reshape(-1)])
        w.add_uint32(K.CENTER_PAIRS, self.center_pairs)
        w.add_bool(K.MEAN_FOLDED, self.k_mean_folded)
        if self.rope_pair_src is not None:
            w.add_array(K.ROPE_PAIR_SRC, [int(i) for i in np.asarray(self.rope_pair_src).reshape(-1)])
        if self.v_mean is not None:
            w.add_array(V_.MEAN, [float(x) for x in np.asarray(self.v_mean, dtype=np.float32).reshape(-1)])
        if self.k_smooth is not None:
            w.add_array(K.SMOOTH, [float(x) for x in np.asarray(self.k_smooth, dtype=np.float32).reshape(-1)])
        if self.k_basis is not None:
            w.add_array(K.BASIS, [float(x) for x in np.asarray(self.k_basis, dtype=np.float32).reshape(-1)])
            if self.k_basis_block:
                w.add_uint32(K.BASIS_BLOCK, int(self.k_basis_block))

    @classmethod
    def from_gguf(cls, reader, args: CacheDims, source: str = "GGUF") -> "CacheMeta | None":
        """The file's cache description, or None if it has no kvconvert cache keys.

        Every key is checked for its type, range and size against the model (one InputError
        naming the file and the key)."""
        get = lambda key, default=None: field_value(reader, key, default)  # noqa: E731
        if get(K.TYPE) is None:
            return None
        L, Hk, d = args.num_hidden_layers, args.num_key_value_heads, args.head_dim
        types = (TQ, *STANDARD)
        try:
            meta = cls(
                k_type=V.one_of(source, K.TYPE, get(K.TYPE), types),
                v_type=V.one_of(source, V_.TYPE, get(V_.TYPE, "f16"), types),
                center_pairs=V.int_in(source, K.CENTER_PAIRS, get(K.CENTER_PAIRS, 0), 0, d // 2),
                seed=V.int_in(source, Keys.KVConvert.ROTATION_SEED, get(Keys.KVConvert.ROTATION_SEED, DEFAULT_SEED),
                              0, V.MAX_U64),
                layout=V.one_of(source, Keys.KVConvert.LAYOUT, get(Keys.KVConvert.LAYOUT, "portable"),
                                ("portable", "folded")),
                k_mean_folded=V.boolean(source, K.MEAN_FOLDED, get(K.MEAN_FOLDED, False)))
            profile = get(Keys.KVConvert.PROFILE)
            if profile is not None:
                meta.profile_json = V.utf8_str(source, Keys.KVConvert.PROFILE, profile)
                try:
                    ok = isinstance(json.loads(meta.profile_json), dict)
                except (ValueError, RecursionError):
                    ok = False
                if not ok:
                    raise InputError(f"{source}: {Keys.KVConvert.PROFILE} is not a JSON object")
            sink = get(Keys.KVConvert.SINK_TOKENS)
            if sink is not None:
                meta.n_sink = V.int_in(source, Keys.KVConvert.SINK_TOKENS, sink, 0, MAX_SINK)
            recent = get(Keys.KVConvert.RECENT_WINDOW)
            if recent is not None:
                meta.n_recent = V.int_in(source, Keys.KVConvert.RECENT_WINDOW, recent, 0, MAX_RECENT)
            scale = V.one_of(source, K.SCALE, get(K.SCALE, "ls"), SCALES)
            if meta.k_type == TQ:
                meta.k_configs = _configs(get, K, L, d, scale, qjl=True, source=source)
            if meta.v_type == TQ:
                v_scale = V.one_of(source, V_.SCALE, get(V_.SCALE, scale), SCALES)
                meta.v_configs = _configs(get, V_, L, d, v_scale, qjl=False, source=source)
            perm, mean = get(K.PERM), get(K.MEAN)
            if perm is not None:
                meta.k_perm = np.asarray(V.int_list(source, K.PERM, perm, 0, d - 1, length=L * d),
                                         dtype=np.int32).reshape(L, d)
                if any(sorted(row) != list(range(d)) for row in meta.k_perm.tolist()):
                    raise ValueError("k_cache.perm is not a permutation of each layer's channels")
            if mean is not None:
                meta.k_mean = _floats(source, K.MEAN, mean, (L, Hk, d))
            if meta.k_mean_folded and meta.k_mean is None:
                raise ValueError("the K mean is folded into the weights but not stored")
            src, vmean = get(K.ROPE_PAIR_SRC), get(V_.MEAN)
            if src is not None:
                meta.rope_pair_src = np.asarray(V.int_list(source, K.ROPE_PAIR_SRC, src, 0, d // 2 - 1,
                                                           length=L * (d // 2)), dtype=np.int32).reshape(L, d // 2)
                if any(sorted(row) != list(range(d // 2)) for row in meta.rope_pair_src.tolist()):
                    raise ValueError("rope_pair_src is not a permutation of each layer's pairs")
            if meta.layout == "folded" and meta.rope_pair_src is None:
                raise ValueError("a folded file needs its RoPE pair map")
            if vmean is not None:
                meta.v_mean = _floats(source, V_.MEAN, vmean, (L, Hk, d))
            smooth = get(K.SMOOTH)
            if smooth is not None:
                meta.k_smooth = _floats(source, K.SMOOTH, smooth, (L, Hk, d // 2))
                if not ((meta.k_smooth >= MIN_SMOOTH) & (meta.k_smooth <= 1 / MIN_SMOOTH)).all():
                    raise ValueError(f"{K.SMOOTH} holds scales outside [{MIN_SMOOTH:g}, {1 / MIN_SMOOTH:g}]")
                if meta.layout == "folded":
                    raise ValueError(f"a folded file has its smoothing in the weights, not in {K.SMOOTH}")
            basis = get(K.BASIS)
            if basis is not None:
                if meta.k_type != TQ:
                    raise ValueError(f"{K.BASIS} is for TurboQuant K caches only")
                meta.k_basis = _floats(source, K.BASIS, basis, (L, Hk, d, d))
                why = kbasis.problem(meta.k_basis)
                if why:
                    raise ValueError(f"{K.BASIS} {why}")
            meta.k_basis_block = V.int_in(source, K.BASIS_BLOCK, get(K.BASIS_BLOCK, 0), 0, kbasis.MAX_BASIS_BLOCK)
            if meta.k_basis_block and meta.k_basis is None:
                raise ValueError(f"{K.BASIS_BLOCK} without {K.BASIS}")
        except (ValueError, TypeError, OverflowError) as e:
            raise InputError(f"{source}: invalid kvconvert cache metadata ({e}); re-convert the model") from None
        return meta


def _floats(source: str, key: str, values, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(values, list) or len(values) != int(np.prod(shape)):
        raise InputError(f"{source}: {key} must be a list of {int(np.prod(shape))} numbers")
    if values and (isinstance(values[0], (str, bytes)) or not all(isinstance(x, (int, float)) for x in values)):
        raise InputError(f"{source}: {key} must hold numbers")
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all() or np.abs(arr).max(initial=0) > 3.4e38:
        raise InputError(f"{source}: {key} holds NaN, infinite or out-of-range values; re-convert the model")
    return arr.astype(np.float32).reshape(shape)


SCALE8_FP16 = -32768  # a scale8_base entry: this layer keeps fp16 scales


def _add_scale8(w: gguf.GGUFWriter, key: str, configs: list[KConfig]) -> None:
    """The per-layer grid bases when any layer has 8-bit scales (SCALE8_FP16 for the others)."""
    bases = [c.scale_base for c in configs]
    if any(b is not None for b in bases):
        w.add_array(key, [SCALE8_FP16 if b is None else int(b) for b in bases])


def _add_trellis(w: gguf.GGUFWriter, key: str, configs: list[KConfig]) -> None:
    """Each layer's trellis memory bits, when any layer has trellis codes (absent: Lloyd–Max codes)."""
    if any(c.trellis for c in configs):
        w.add_array(key, [int(c.trellis) for c in configs])


def _configs(get, keys, n_layer: int, d: int, scale: str, qjl: bool, source: str = "GGUF") -> list[KConfig]:
    names = [keys.N_HI, keys.HI_BITS, keys.LO_BITS] + ([keys.QJL_HI, keys.QJL_LO] if qjl else [])
    cols = [get(keys.N_HI), get(keys.HI_BITS), get(keys.LO_BITS)]
    cols += [get(keys.QJL_HI, [0] * n_layer), get(keys.QJL_LO, [0] * n_layer)] if qjl else [[0] * n_layer] * 2
    if any(c is None for c in cols):
        raise ValueError(f"per-layer cache arrays must have {n_layer} entries")
    for name, col in zip(names, cols):
        V.int_list(source, name, [int(x) if isinstance(x, bool) else x for x in col] if isinstance(col, list)
                   else col, 0, d, length=n_layer)
    bases = get(keys.SCALE8_BASE)
    if bases is not None:
        bases = V.int_list(source, keys.SCALE8_BASE, bases, SCALE8_FP16, SCALE8_BASE_MAX, length=n_layer)
        if not all(b == SCALE8_FP16 or b >= SCALE8_BASE_MIN for b in bases):
            raise ValueError(f"{keys.SCALE8_BASE} holds a base below {SCALE8_BASE_MIN} (and not {SCALE8_FP16}: fp16)")
        bases = [None if b == SCALE8_FP16 else b for b in bases]
    else:
        bases = [None] * n_layer
    tc = get(keys.TRELLIS)
    tc = [0] * n_layer if tc is None else V.int_list(source, keys.TRELLIS, tc, 0, trellis.MEMORY, length=n_layer)
    if any(t not in (0, trellis.MEMORY) for t in tc):
        raise ValueError(f"{keys.TRELLIS} holds memory bits other than 0 and {trellis.MEMORY} (the shipped tables)")
    return [KConfig(d=d, n_hi=int(n), hi_bits=int(h), lo_bits=int(lo), qjl_hi=bool(qh), qjl_lo=bool(ql), scale=scale,
                    scale_base=None if b is None else int(b), trellis=int(t))
            for n, h, lo, qh, ql, b, t in zip(*cols, bases, tc)]
