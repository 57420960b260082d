"""RoPE frequencies and rotation, for both channel pairings (docs/design.md §2).

- "neox" (Hugging Face rotate_half, GGUF qwen2): pair j = channels (j, j + d/2)
- "interleaved" (GGUF llama):                    pair j = channels (2j, 2j + 1)
Pair j at position n is rotated by the angle n * inv_freq[j].
"""

from __future__ import annotations

import math

import numpy as np

from .config import ModelArgs

PAIRINGS = ("neox", "interleaved")


def base_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """theta ** (-2j/d) for j < d/2, float64."""
    return theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def llama3_factors(args: ModelArgs) -> np.ndarray:
    """Per-pair divisors of the base frequency under Llama 3.1 "llama3" scaling.

    Long wavelengths are stretched by ``factor``, short ones kept, and the band in
    between interpolated (Meta's published rule; llama.cpp stores these as the
    ``rope_freqs`` tensor). Returns ones when the model has no such scaling.
    """
    freqs = base_inv_freq(args.head_dim, args.rope_theta)
    rs = args.rope_scaling
    if rs is None or rs.rope_type != "llama3":
        return np.ones_like(freqs)
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    out = np.empty_like(freqs)
    for j, f in enumerate(freqs):
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out[j] = 1.0
        elif wavelen > low_wavelen:
            out[j] = rs.factor
        else:
            smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
                rs.high_freq_factor - rs.low_freq_factor)
            out[j] = 1.0 / ((1 - smooth) / rs.factor + smooth)
    return out


def inv_freq(args: ModelArgs) -> np.ndarray:
    return base_inv_freq(args.head_dim, args.rope_theta) / llama3_factors(args)


def layer_inv_freq(args: ModelArgs, layer: int) -> np.ndarray:
    """Frequencies of one layer: sliding-window layers with their own base (Gemma 3) use it
    unscaled; every other layer uses :func:`inv_freq`."""
    if args.rope_local_theta and args.layer_types is not None and args.layer_types[layer] == "sliding_attention":
        return base_inv_freq(args.head_dim, args.rope_local_theta)
    return inv_freq(args)


def pair_index(head_dim: int, pairing: str) -> tuple[np.ndarray, np.ndarray]:
    """Channel indices (first, second) of every pair j."""
    p = head_dim // 2
    j = np.arange(p)
    if pairing == "neox":
        return j, j + p
    if pairing == "interleaved":
        return 2 * j, 2 * j + 1
    raise ValueError(f"unknown RoPE pairing {pairing!r}")


def apply_rope(x: np.ndarray, positions: np.ndarray, freqs: np.ndarray, pairing: str) -> np.ndarray:
    """Rotate x (T, H, d) at positions (T,) by angles positions * freqs (d/2,)."""
    a, b = pair_index(x.shape[-1], pairing)
    ang = positions.astype(np.float64)[:, None] * freqs[None, :]
    cos = np.cos(ang).astype(x.dtype)[:, None, :]
    sin = np.sin(ang).astype(x.dtype)[:, None, :]
    xa, xb = x[..., a], x[..., b]
    out = np.empty_like(x)
    out[..., a] = xa * cos - xb * sin
    out[..., b] = xa * sin + xb * cos
    return out


def llama3_from_factors(args: ModelArgs, factors: np.ndarray, tol: float = 1e-5):
    """Recover "llama3" RoPE scaling parameters from per-pair factors (a GGUF's
    ``rope_freqs`` tensor), or None if the factors do not follow that rule.

    The factors are 1 for short wavelengths, ``factor`` for long ones, and in
    between 1/f = (1-s)/factor + s with s linear in 1/wavelength. Only the ratio
    of (orig_ctx, low, high) is determined, so low_freq_factor is fixed to 1
    (Meta's value) and the other two follow; the result is checked by
    recomputing the factors.
    """
    from .config import RopeScaling

    factors = np.asarray(factors, dtype=np.float64)
    wavelen = 2 * math.pi / base_inv_freq(args.head_dim, args.rope_theta)
    big = float(factors.max())
    if big <= 1.0:
        return None
    mid = (factors > 1 + 1e-4) & (factors < big * (1 - 1e-4))
    if mid.sum() >= 2:
        s = (1 / factors[mid] - 1 / big) / (1 - 1 / big)
        slope, intercept = np.polyfit(1 / wavelen[mid], s, 1)
        if intercept >= 0:
            return None
        span = -1 / intercept  # high - low with low = 1
        orig, high = slope * span, 1 + span
    else:
        lo = 4 * wavelen[factors <= 1 + 1e-4].max(initial=0.0)  # orig/high above every unscaled wavelength
        hi = wavelen[factors >= big * (1 - 1e-4)].min(initial=np.inf)  # orig/low below every scaled one
        if not lo < hi:
            return None
        orig, high = (2 ** math.ceil(math.log2(lo)) if 2 ** math.ceil(math.log2(lo)) < hi else (lo + hi) / 2), 4.0
    rs = RopeScaling("llama3", factor=round(big, 6), low_freq_factor=1.0, high_freq_factor=float(round(high, 6)),
                     original_max_position_embeddings=int(round(orig)))
    import dataclasses

    check = llama3_factors(dataclasses.replace(args, rope_scaling=rs))
    return rs if np.allclose(check, factors, rtol=tol, atol=0) else None
