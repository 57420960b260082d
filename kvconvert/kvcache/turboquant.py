"""TurboQuant K/V cache codes: the numpy twin of the C runtime (docs/design.md §4).

A head vector x (length d) is split into groups: group 0 = channels [0, n_hi),
group 1 = [n_hi, d) (n_hi = 0: one group, all d channels, using lo_bits/qjl_lo).
Per group of size m with b bits:

1. signs D (±1) from splitmix64, seeded by (seed, layer, group, stream) (1-2: tq_rotation.py);
2. y = H·(D ⊙ x_g): float32 Walsh–Hadamard per power-of-two block of m
   (binary expansion of m, largest block first), each block scaled by
   float32(1/sqrt(B)); for a non-power-of-two m the blocks are then interleaved
   (_mix_order), multiplied by fixed signs (_mix_signs) and transformed again,
   y = H·D_mix·P·H·(D ⊙ x_g), so energy spreads across blocks; the rotation is
   orthonormal, so ⟨R q, R k⟩ = ⟨q, k⟩;
3. codes: u = y/‖y‖ (float64), code_i = #{Lloyd–Max boundaries < u_i}; or (trellis groups,
   KConfig.trellis) the same bits chosen together by a Viterbi search and decoded through the
   states of the code ring (kvcache/trellis.py; values = its table / √m, group_codebook);
4. scale s: "norm" s = ‖y‖, "ls" (default) s = ⟨y, c⟩/‖c‖² (the
   least-squares scale for the chosen codes), "proj" s = ‖y‖²/⟨y, c⟩ (keeps
   ⟨ŷ, y⟩ = ‖y‖², removing the (1 − D_b) shrinkage of ⟨q, x̂⟩); stored as fp16, or
   (``scale_base`` set: 8-bit scales) as the nearest step e of the log grid
   ŝ(e) = 2^((e + base)/32), e = 1..255, ŝ(0) = 0 (ties to the lower step); ŷ = ŝ·c[code];
5. optional QJL on the residual r = y − ŷ: bits = sign(H·D₂·r), plus ‖r‖ (fp16).

Bit-exactness contract with the C side (codes, scales, QJL bits): float32 for the
rotation and the residual (no FMA contraction: r = y − (s·c) is two roundings),
float64 sums accumulated sequentially in index order, direct float64 → fp16
round-to-nearest-even (8-bit scales: float32 grid values built from the same 32
float32 constants, float64 midpoints), Lloyd–Max centroids as the float32 values of
`codebook(m, bits)` and boundaries (c[k] + c[k+1]) / 2 in float64 (exact); the trellis search
in float32 on u rounded once to float32 and the float32 values of `group_codebook`, in the same
order as tq_ref.c (ties to the smaller state).

QJL inner-product estimate (derivation). Let S = sqrt(m)·H·D₂, rows s_i with
‖s_i‖² = m. If the s_i were N(0, I_m), E[sign(⟨s_i, r⟩)·⟨s_i, q⟩] =
sqrt(2/π)·⟨q, r⟩/‖r‖, so with z = H D₂ r, w = H D₂ q:
    ⟨q, r⟩ ≈ ‖r‖·sqrt(π/2)/sqrt(m) · Σ_i sign(z_i)·w_i      (unbiased).
Its variance: i.i.d. Gaussian rows give (π/2·‖q‖²‖r‖² − ⟨q, r⟩²)/m (the QJL
bound). Our rows are orthogonal (a Haar-like rotation), which removes the
diagonal-independence noise; to first order in 1/m
    Var ≈ ((π/2 − 1)·‖q‖²‖r‖² − ½·⟨q, r⟩²) / m,
(write q = α·r/‖r‖ + q⊥: the q⊥ part sees sign(z) minus its projection on z,
of squared norm m(1 − 2/π); the α part has Var(‖z‖₁/‖z‖₂) = 1 − 3/π).
Equivalently the estimate is ⟨q, r̂⟩ with r̂ = ‖r‖·sqrt(π/2)/sqrt(m)·D₂·H·σ,
and decode() adds that r̂, so scores() = ⟨q, decode()⟩ with or without QJL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from . import _codebooks, trellis
from .tq_rotation import STREAM_QJL, STREAM_ROTATION, rotate, signs, unrotate

__all__ = ["GroupConfig", "KConfig", "Encoded", "codebook", "signs", "rotate", "unrotate",
           "encode_group", "decode_group", "encode", "decode", "scores"]

SCALES = ("ls", "norm", "proj")
CODES = ("lloyd", "trellis")  # Lloyd–Max codes, or bitshift-trellis codes of the same bits (trellis.py)
SCALE8_BASE_MIN, SCALE8_BASE_MAX = -2048, 2048  # tq.h TQ_SCALE8_BASE_*: ŝ within [2^-64, 2^72]
SCALE8_STEP = 32  # steps per octave: 2.2% apart, a scale rounded by at most 1.1%; 254 steps span 245×
SCALE8_HEADROOM = 4.0  # scale8_base: the grid's top step is at least this × the largest scale seen
# float32(2^(k/32)), k = 0..31: the hex values of tq.c's scale8_steps, so both sides hold the same floats
_SCALE8_STEPS = np.array([float.fromhex(h) for h in (
    "0x1.0p+0", "0x1.059b0ep+0", "0x1.0b5586p+0", "0x1.11301ep+0",
    "0x1.172b84p+0", "0x1.1d4874p+0", "0x1.2387a6p+0", "0x1.29e9ep+0",
    "0x1.306fep+0", "0x1.371a74p+0", "0x1.3dea64p+0", "0x1.44e086p+0",
    "0x1.4bfdaep+0", "0x1.5342b6p+0", "0x1.5ab07ep+0", "0x1.6247ecp+0",
    "0x1.6a09e6p+0", "0x1.71f75ep+0", "0x1.7a1148p+0", "0x1.82589ap+0",
    "0x1.8ace54p+0", "0x1.93737cp+0", "0x1.9c4918p+0", "0x1.a5503cp+0",
    "0x1.ae89fap+0", "0x1.b7f77p+0", "0x1.c199bep+0", "0x1.cb720ep+0",
    "0x1.d5818ep+0", "0x1.dfc974p+0", "0x1.ea4afap+0", "0x1.f50766p+0",
)], dtype=np.float32)
MAX_BITS = 10  # hi group (docs/design.md §4); codebooks exist for 1..10
MAX_LO_BITS = 8


@dataclass(frozen=True)
class GroupConfig:
    m: int
    bits: int
    qjl: bool = False
    trellis: int = 0  # memory bits of trellis codes (kvcache/trellis.py), 0: Lloyd–Max codes


def _holds_trellis(m: int, bits: int) -> bool:
    """Whether a group of m channels and bits-bit codes can hold trellis codes (trellis.py's tables:
    1..6 bits, at most MAX_M channels, a state within one lap of the code ring)."""
    return bits in trellis.BITS and m <= trellis.MAX_M and m * bits >= bits + trellis.MEMORY


@dataclass(frozen=True)
class KConfig:
    """Per-layer K (or V) cache config; see the module docstring for the groups."""

    d: int
    n_hi: int = 0
    hi_bits: int = 4
    lo_bits: int = 4
    qjl_hi: bool = False
    qjl_lo: bool = False
    scale: str = "ls"
    scale_base: int | None = None  # None: fp16 scales; else 8-bit scales on this grid (scale8_values)
    trellis: int = 0  # 0: Lloyd–Max codes; trellis.MEMORY: bitshift-trellis codes of the same bits (CPU only)

    def __post_init__(self) -> None:
        if self.d < 2:
            raise ValueError(f"head dim d={self.d}: need d >= 2")
        if self.n_hi and not 2 <= self.n_hi <= self.d - 2:
            raise ValueError(f"split={self.n_hi}: need 0 (no split) or 2 <= split <= d - 2 = {self.d - 2}")
        for name, top in (("lo_bits", MAX_LO_BITS), ("hi_bits", MAX_BITS)):
            b = getattr(self, name)
            if not 1 <= b <= top:
                raise ValueError(f"{name}={b}: need 1..{top}")
        if self.scale not in SCALES:
            raise ValueError(f"scale={self.scale!r}: need one of {', '.join(SCALES)}")
        if self.scale_base is not None and not SCALE8_BASE_MIN <= self.scale_base <= SCALE8_BASE_MAX:
            raise ValueError(f"s8={self.scale_base}: need {SCALE8_BASE_MIN}..{SCALE8_BASE_MAX}")
        if self.trellis:
            if self.trellis != trellis.MEMORY:
                raise ValueError(f"trellis={self.trellis}: the shipped tables have {trellis.MEMORY} memory bits")
            problem = self._trellis_problem()
            if problem:
                raise ValueError(problem)

    def _trellis_problem(self) -> str | None:
        """Why this config cannot take trellis codes (None: it can, on at least one group)."""
        if self.qjl_hi or self.qjl_lo:
            return "trellis codes take no QJL"
        if any(_holds_trellis(g.m, g.bits) for g in self.groups()):
            return None
        g = self.groups()[-1]
        return (f"trellis codes need a group of {trellis.BITS[0]}..{trellis.BITS[-1]} bits and "
                f"{-(-(g.bits + trellis.MEMORY) // g.bits)}..{trellis.MAX_M} channels "
                f"(the groups have {' and '.join(f'{g.m} × {g.bits}' for g in self.groups())} bits)")

    def groups(self) -> list[GroupConfig]:
        """The groups, hi first. A group takes the layer's trellis codes when it can hold them (1..6
        bits, at most trellis.MAX_M channels, a state within one lap of its ring); the other keeps
        Lloyd–Max codes (tq.c's group_tmem, the same rule; a trellis layer has no QJL)."""
        def group(m: int, bits: int, qjl: bool) -> GroupConfig:
            return GroupConfig(m, bits, qjl, self.trellis if _holds_trellis(m, bits) else 0)
        if self.n_hi == 0:
            return [group(self.d, self.lo_bits, self.qjl_lo)]
        return [group(self.n_hi, self.hi_bits, self.qjl_hi), group(self.d - self.n_hi, self.lo_bits, self.qjl_lo)]

    def bounds(self) -> list[tuple[int, int]]:
        """Channel range [start, stop) of each group."""
        return [(0, self.d)] if self.n_hi == 0 else [(0, self.n_hi), (self.n_hi, self.d)]

    @property
    def scale_bits(self) -> int:
        return 16 if self.scale_base is None else 8

    def with_scale_base(self, base: int | None) -> "KConfig":
        """The same codes with 8-bit scales on the grid of base (None: fp16 scales)."""
        return replace(self, scale_base=base)

    def with_codes(self, codes: str) -> "KConfig":
        """The same bits on these codes (CODES): trellis codes on each group that can hold them (see
        groups); a config where no group can (QJL, groups of more than 6 bits or too few channels)
        keeps Lloyd–Max codes."""
        admits = codes == "trellis" and self._trellis_problem() is None
        return replace(self, trellis=trellis.MEMORY if admits else 0)

    def bits_per_value(self) -> float:
        """Codes + one scale per group (16 or 8 bits), + 1 bit/value and an fp16 ‖r‖ per QJL group."""
        total = sum(g.m * g.bits + self.scale_bits + (g.m + 16 if g.qjl else 0) for g in self.groups())
        return total / self.d

    def spec(self) -> str:
        """Canonical string; KConfig.parse(cfg.spec(), cfg.d) == cfg for parsed configs."""
        if self.n_hi == 0:
            opts = ["qjl=both"] if self.qjl_lo else []
            head = f"tq{self.lo_bits}"
        else:
            q = {(True, True): "both", (True, False): "hi", (False, True): "lo"}.get((self.qjl_hi, self.qjl_lo))
            opts = [f"split={self.n_hi}", f"hi={self.hi_bits}", f"lo={self.lo_bits}"] + ([f"qjl={q}"] if q else [])
            head = "tq"
        if self.scale != "ls":
            opts.append(f"scale={self.scale}")
        if self.scale_base is not None:
            opts.append(f"s8={self.scale_base}")
        if self.trellis:
            opts.append("code=trellis")
        return head + (":" + ",".join(opts) if opts else "")

    def label(self) -> str:
        """spec() for people, short enough for a table cell: an 8-bit scale grid shown as "s8",
        without its base, trellis codes as "tc", and no scale mode (one per cache side: say it
        once, not per layer)."""
        return replace(self, scale="ls").spec().replace(f"s8={self.scale_base}", "s8").replace("code=trellis", "tc")

    @classmethod
    def parse(cls, text: str, d: int) -> KConfig:
        """Parse "tq<b>[:k=v,...]" or "tq:k=v,...".

        Keys: split (n_hi, 0 = none), hi, lo, bits (default for hi and lo, 4),
        qjl (hi|lo|both|none), scale (ls|norm|proj), s8 (8-bit scales on the grid of
        this base, an integer; written by the search, not usually typed), code (lloyd|trellis:
        Lloyd–Max or bitshift-trellis codes of the same bits). Without a split there is
        one group, so hi= and qjl=hi are errors and qjl=lo/both both mean QJL on.
        Examples: "tq4", "tq3", "tq:split=32,hi=8,lo=3,qjl=hi".
        """
        s = text.strip().lower()
        if not s.startswith("tq"):
            raise ValueError(f"bad K cache type {text!r}: expected 'tq<bits>' or 'tq:split=..,hi=..,lo=..'")
        head, sep, rest = s[2:].partition(":")
        kw: dict[str, str] = {}
        if head:
            if not head.isdigit():
                raise ValueError(f"bad K cache type {text!r}: 'tq' must be followed by a bit count or ':'")
            kw["bits"] = head
        if not head and not sep:
            raise ValueError(f"bad K cache type {text!r}: expected a bit count ('tq4') or options ('tq:lo=3')")
        if sep and not rest:
            raise ValueError(f"bad K cache type {text!r}: nothing after ':'")
        for item in filter(None, rest.split(",")) if rest else ():
            key, eq, val = item.partition("=")
            key, val = key.strip(), val.strip()
            if not eq or not val:
                raise ValueError(f"bad K cache type {text!r}: option {item!r} is not key=value")
            if key not in ("split", "hi", "lo", "bits", "qjl", "scale", "s8", "code"):
                raise ValueError(f"bad K cache type {text!r}: unknown option {key!r} "
                                 "(known: split, hi, lo, bits, qjl, scale, s8, code)")
            if key in kw:
                raise ValueError(f"bad K cache type {text!r}: {key!r} given twice")
            kw[key] = val

        def integer(key: str, default: int) -> int:
            if key not in kw:
                return default
            if not kw[key].isdigit():
                raise ValueError(f"bad K cache type {text!r}: {key}={kw[key]!r} is not a non-negative integer")
            return int(kw[key])

        if "bits" in kw and ("hi" in kw or "lo" in kw) and "split" not in kw:
            raise ValueError(f"bad K cache type {text!r}: the bit count is already given; hi=/lo= need split=")
        split = integer("split", 0)
        bits = integer("bits", 4)
        hi, lo = integer("hi", bits), integer("lo", bits)
        qjl = kw.get("qjl", "none")
        if qjl not in ("hi", "lo", "both", "none"):
            raise ValueError(f"bad K cache type {text!r}: qjl={qjl!r}, expected hi, lo, both or none")
        if split == 0:
            if "hi" in kw:
                raise ValueError(f"bad K cache type {text!r}: hi= needs split > 0")
            if qjl == "hi":
                raise ValueError(f"bad K cache type {text!r}: qjl=hi needs split > 0")
            hi = lo
        qjl_hi, qjl_lo = qjl in ("hi", "both"), qjl in ("lo", "both")
        if split == 0:
            qjl_hi = qjl_lo
        base = None
        if "s8" in kw:
            if not kw["s8"].lstrip("-").isdigit():
                raise ValueError(f"bad K cache type {text!r}: s8={kw['s8']!r} is not an integer")
            base = int(kw["s8"])
        code = kw.get("code", "lloyd")
        if code not in CODES:
            raise ValueError(f"bad K cache type {text!r}: code={code!r}, expected {' or '.join(CODES)}")
        try:
            return cls(d=d, n_hi=split, hi_bits=hi, lo_bits=lo, qjl_hi=qjl_hi, qjl_lo=qjl_lo,
                       scale=kw.get("scale", "ls"), scale_base=base,
                       trellis=trellis.MEMORY if code == "trellis" else 0)
        except ValueError as e:
            raise ValueError(f"bad K cache type {text!r}: {e}") from None


def side_scale(cfgs: list[KConfig], side: str) -> str:
    """The scale mode of one cache side's layers: one per side (k_cache.scale / v_cache.scale, the
    runtime's tq_scale_mode / tq_v_scale_mode), so layers that mix them are an error."""
    modes = {c.scale for c in cfgs}
    if len(modes) != 1:
        raise ValueError(f"{side} cache layers mix TurboQuant scales {sorted(modes)}: one per cache side")
    return modes.pop()


@dataclass
class Encoded:
    """One group of encoded vectors; leading dims are those of the input."""

    codes: np.ndarray  # (..., m) uint16
    scale: np.ndarray  # (...,) float16, or float32 grid values (8-bit scales)
    qjl_bits: np.ndarray | None = None  # (..., m) bool, True = z_i < 0
    rnorm: np.ndarray | None = None  # (...,) float16, ‖r‖


# --- codebooks ---------------------------------------------------------------

@lru_cache(maxsize=1)
def _shipped() -> dict[tuple[int, int], np.ndarray]:
    if not _codebooks.DATA_FILE.exists():
        raise FileNotFoundError(f"{_codebooks.DATA_FILE} is missing (package data not installed?); "
                                "`python -m kvconvert.kvcache._codebooks` regenerates it")
    return _codebooks.load_data_file()


@lru_cache(maxsize=None)
def _codebook(m: int, bits: int) -> np.ndarray:
    c = _shipped().get((m, bits))
    if c is None:
        c = _codebooks.lloyd_max(m, bits).astype(np.float32)
    c = np.array(c, dtype=np.float32)
    c.flags.writeable = False
    return c


def codebook(m: int, bits: int) -> np.ndarray:
    """Lloyd–Max centroids (float32, (2^bits,), ascending, symmetric) for dimension m.

    Shipped for m = 8, 16, …, 256 and bits 1..10 (kvconvert/data); any other
    m >= 2 is computed on first use and cached. Read-only array.
    """
    if m < 2 or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"no codebook for m={m}, bits={bits} (need m >= 2, 1 <= bits <= {MAX_BITS})")
    return _codebook(int(m), int(bits))


@lru_cache(maxsize=None)
def _trellis_values(m: int, bits: int) -> np.ndarray:
    t = (trellis.table(bits).astype(np.float64) / math.sqrt(m)).astype(np.float32)
    t.flags.writeable = False
    return t


def group_codebook(gc: GroupConfig) -> np.ndarray:
    """The float32 values a group's codes decode to, for unit-norm vectors, as the C side is given
    them (kvc_tq_layer.codebook_hi/lo): the Lloyd–Max centroids, or the trellis table / √m in
    state order."""
    return _trellis_values(gc.m, gc.bits) if gc.trellis else codebook(gc.m, gc.bits)


def _values(codes: np.ndarray, gc: GroupConfig) -> np.ndarray:
    """float32 values (..., m) of stored codes: per code, or per trellis state of the code ring."""
    if gc.trellis:
        return group_codebook(gc)[trellis.states(codes, gc.bits)]
    return codebook(gc.m, gc.bits)[codes]


@lru_cache(maxsize=None)
def boundaries(m: int, bits: int) -> np.ndarray:
    """Lloyd–Max decision boundaries (float64, (2^bits − 1,)): the midpoints of codebook(m, bits); a unit
    coordinate's code is the number of boundaries below it. Read-only array."""
    c = codebook(m, bits).astype(np.float64)
    b = (c[:-1] + c[1:]) / 2
    b.flags.writeable = False
    return b


# --- 8-bit scales --------------------------------------------------------------

@lru_cache(maxsize=None)
def scale8_values(base: int) -> np.ndarray:
    """(256,) float32: ŝ(0) = 0, ŝ(e) = 2^((e + base)/32) as float32(2^(k/32))·2^octave (exact)."""
    t = np.arange(1, 256) + int(base)
    v = np.zeros(256, dtype=np.float32)
    v[1:] = np.ldexp(_SCALE8_STEPS[t % SCALE8_STEP], t // SCALE8_STEP).astype(np.float32)
    v.flags.writeable = False
    return v


@lru_cache(maxsize=None)
def _scale8_mids(base: int) -> np.ndarray:
    v = scale8_values(base).astype(np.float64)
    m = (v[:-1] + v[1:]) / 2
    m.flags.writeable = False
    return m


def scale8_quantize(s: np.ndarray, base: int) -> np.ndarray:
    """Steps e (uint8) of the scales s: the nearest grid value (ties to the lower; NaN → 0)."""
    s = np.asarray(s, dtype=np.float64)
    e = np.searchsorted(_scale8_mids(base), s, side="left")
    return np.where(np.isnan(s), 0, e).astype(np.uint8)


def scale8_base(max_scale: float) -> int:
    """The grid whose top step is ≥ SCALE8_HEADROOM × max_scale (the largest group scale a
    calibration saw in one layer), so runtime outliers up to that factor are not clipped; its
    lowest step is 1/245 of the top (1/61 of max_scale): a layer's head-vector norms span 3–18×
    on Qwen2.5, and a group below the floor is stored at the floor (an error smaller than it)."""
    top = SCALE8_HEADROOM * float(max_scale) if max_scale > 0 and math.isfinite(max_scale) else 1.0
    return int(min(max(math.ceil(SCALE8_STEP * math.log2(top)) - 255, SCALE8_BASE_MIN), SCALE8_BASE_MAX))


# --- encode / decode ---------------------------------------------------------

def _seqsum(a: np.ndarray) -> np.ndarray:
    """Σ over the last axis in index order (float64), as the C loop does; not pairwise."""
    acc = np.zeros(a.shape[:-1], dtype=np.float64)
    for i in range(a.shape[-1]):
        acc += a[..., i]
    return acc


def _residual(y: np.ndarray, s16: np.ndarray, codes: np.ndarray, c: np.ndarray) -> np.ndarray:
    """r = y − float32(s)·c[code]: two float32 roundings (the C side must not contract to an FMA)."""
    return y - s16.astype(np.float32)[..., None] * c[codes]


def fit_scale(y64: np.ndarray, cq: np.ndarray, scale: str) -> np.ndarray:
    """A group's scale (float64, per vector) for rotated y (..., m) and its chosen unit-norm
    code values cq (same shape, float64): step 4 of the module docstring."""
    n2 = _seqsum(y64 * y64)
    if scale == "norm":
        return np.sqrt(n2)
    num = _seqsum(y64 * cq)
    with np.errstate(invalid="ignore", divide="ignore"):
        if scale == "ls":
            den = _seqsum(cq * cq)
            return np.where(den != 0, num / den, 0.0)
        return np.where(num != 0, n2 / num, 0.0)  # proj


def stored_scale(s: np.ndarray, scale_base: int | None) -> np.ndarray:
    """What the cache holds of a scale: fp16, or the 8-bit grid's value (scale_base set)."""
    if scale_base is None:
        return np.asarray(s, dtype=np.float64).astype(np.float16)
    return scale8_values(scale_base)[scale8_quantize(s, scale_base)]


def encode_group(x_g: np.ndarray, gc: GroupConfig, seed: int, layer: int, group: int,
                 scale: str = "ls", scale_base: int | None = None) -> Encoded:
    """Encode vectors (..., m) of one group (input cast to float32); scale_base: 8-bit scales."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: need one of {', '.join(SCALES)}")
    x_g = np.asarray(x_g, dtype=np.float32)
    if x_g.shape[-1] != gc.m:
        raise ValueError(f"encode_group: last axis {x_g.shape[-1]} != group size {gc.m}")
    y = rotate(x_g, signs(seed, layer, group, STREAM_ROTATION, gc.m))
    y64 = y.astype(np.float64)
    n2 = _seqsum(y64 * y64)
    norm = np.sqrt(n2)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(norm[..., None] > 0, y64 / norm[..., None], 0.0)
    c = group_codebook(gc)
    if gc.trellis:  # Viterbi over the ring of states (tq_ref.c: trellis_path, the same arithmetic)
        path = trellis.encode_states(u.reshape(-1, gc.m), gc.bits, c).reshape(u.shape)
        codes = trellis.symbols(path, gc.bits).astype(np.uint16)
        cq = c.astype(np.float64)[path]
    else:
        codes = np.searchsorted(boundaries(gc.m, gc.bits), u, side="left").astype(np.uint16)
        cq = c.astype(np.float64)[codes]
    s16 = stored_scale(fit_scale(y64, cq, scale), scale_base)
    enc = Encoded(codes=codes, scale=s16)
    if gc.qjl:
        r = _residual(y, s16, codes, c)
        z = rotate(r, signs(seed, layer, group, STREAM_QJL, gc.m))
        r64 = r.astype(np.float64)
        enc.qjl_bits = z < 0
        enc.rnorm = np.sqrt(_seqsum(r64 * r64)).astype(np.float16)
    return enc


def _rotated_recon(enc: Encoded, gc: GroupConfig) -> np.ndarray:
    """ŷ = float32(ŝ)·c[code] (float32, rotated domain, without the QJL term)."""
    return enc.scale.astype(np.float32)[..., None] * _values(enc.codes, gc)


def _qjl_coef(enc: Encoded, m: int) -> np.ndarray:
    return enc.rnorm.astype(np.float64) * math.sqrt(math.pi / 2) / math.sqrt(m)


def decode_group(enc: Encoded, gc: GroupConfig, seed: int, layer: int, group: int,
                 qjl: bool = True) -> np.ndarray:
    """Back to the unrotated group (..., m), float32.

    With QJL bits (and qjl=True) the reconstruction includes r̂ (module docstring),
    the linear estimate whose inner products are the QJL score estimates.
    """
    y_hat = _rotated_recon(enc, gc)
    if qjl and enc.qjl_bits is not None:
        sigma = np.where(enc.qjl_bits, np.float32(-1), np.float32(1))
        r_hat = unrotate(sigma, signs(seed, layer, group, STREAM_QJL, gc.m)).astype(np.float64)
        y_hat = (y_hat + _qjl_coef(enc, gc.m)[..., None] * r_hat).astype(np.float32)
    return unrotate(y_hat, signs(seed, layer, group, STREAM_ROTATION, gc.m))


def encode(x: np.ndarray, cfg: KConfig, seed: int, layer: int) -> list[Encoded]:
    """Encode head vectors x (..., d): one Encoded per group of cfg.groups()."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] != cfg.d:
        raise ValueError(f"encode: last axis {x.shape[-1]} != d={cfg.d}")
    return [encode_group(x[..., a:b], gc, seed, layer, g, cfg.scale, cfg.scale_base)
            for g, (gc, (a, b)) in enumerate(zip(cfg.groups(), cfg.bounds()))]


def decode(encs: list[Encoded], cfg: KConfig, seed: int, layer: int, qjl: bool = True) -> np.ndarray:
    """Reconstruct (..., d) float32 from encode()'s output."""
    return np.concatenate([decode_group(e, gc, seed, layer, g, qjl=qjl)
                           for g, (e, gc) in enumerate(zip(encs, cfg.groups()))], axis=-1)


def scores(q: np.ndarray, encs: list[Encoded], cfg: KConfig, seed: int, layer: int,
           qjl: bool = True) -> np.ndarray:
    """Estimated ⟨q, k⟩ for queries q (..., d) against encoded keys (n_keys, d) → (..., n_keys).

    Keys with batch dims (B..., n_keys, d) pair with queries (B..., n_q, d) by
    matmul broadcasting. Rotated per group like the keys; accumulated in float64.
    The QJL term is included for groups that carry QJL bits (unless qjl=False).
    """
    q = np.asarray(q, dtype=np.float32)
    if q.shape[-1] != cfg.d:
        raise ValueError(f"scores: last axis {q.shape[-1]} != d={cfg.d}")
    squeeze = q.ndim == 1
    q = q[None] if squeeze else q
    total = None
    for g, (enc, gc, (a, b)) in enumerate(zip(encs, cfg.groups(), cfg.bounds())):
        q_rot = rotate(q[..., a:b], signs(seed, layer, g, STREAM_ROTATION, gc.m))
        cb = _values(enc.codes, gc).astype(np.float64)
        part = (q_rot.astype(np.float64) @ np.swapaxes(cb, -1, -2)) * enc.scale.astype(np.float64)[..., None, :]
        if qjl and enc.qjl_bits is not None:
            w = rotate(q_rot, signs(seed, layer, g, STREAM_QJL, gc.m)).astype(np.float64)
            sigma = np.where(enc.qjl_bits, -1.0, 1.0)
            part = part + (w @ np.swapaxes(sigma, -1, -2)) * _qjl_coef(enc, gc.m)[..., None, :]
        total = part if total is None else total + part
    return total[..., 0, :] if squeeze else total
