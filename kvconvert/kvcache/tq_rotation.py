"""The signs and rotation of a TurboQuant group (turboquant.py's steps 1-2; docs/design.md §4).

Per group of m channels: signs D (±1) from splitmix64, seeded by (seed, layer, group, stream),
then y = H·(D ⊙ x) with H an orthonormal float32 Walsh–Hadamard per power-of-two block of m
(largest block first); a non-power-of-two m is mixed across its blocks and transformed again
(_mix_order, _mix_signs). The numpy twin of tq.c's sign streams and rotations: the same float32
operations in the same order, so both give the same bits (tests/test_turboquant.py,
tests/test_tq_native.py).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["STREAM_ROTATION", "STREAM_QJL", "STREAM_MIX", "signs", "rotate", "unrotate"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_GROUP_MUL = 0xD1B54A32D192ED03
_STREAM_MUL = 0x8CB92BA72F3D8DD7
STREAM_ROTATION, STREAM_QJL, STREAM_MIX = 0, 1, 2  # the sign streams: group rotation, QJL map, block mixing


def _splitmix64(state: int, n: int) -> list[int]:
    out = []
    for _ in range(n):
        state = (state + _GOLDEN) & _MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        out.append(z ^ (z >> 31))
    return out


@lru_cache(maxsize=4096)
def _signs(seed: int, layer: int, group: int, stream: int, m: int) -> np.ndarray:
    state = ((seed & _MASK) ^ ((layer * _GOLDEN) & _MASK) ^ (((group + 1) * _GROUP_MUL) & _MASK)
             ^ ((stream * _STREAM_MUL) & _MASK))
    words = np.array(_splitmix64(state, -(-m // 64)), dtype=np.uint64)
    i = np.arange(m)
    bit = (words[i // 64] >> (i % 64).astype(np.uint64)) & np.uint64(1)
    s = np.where(bit == 1, np.float32(-1), np.float32(1)).astype(np.float32)
    s.flags.writeable = False
    return s


def signs(seed: int, layer: int, group: int, stream: int, m: int) -> np.ndarray:
    """±1 (float32, (m,)): sign i = −1 iff bit i%64 of splitmix64 word i//64 is set.

    Initial state = seed ^ layer·0x9E37…7C15 ^ (group+1)·0xD1B5…ED03 ^ stream·0x8CB9…8DD7
    (all mod 2^64); stream 0 = rotation, 1 = QJL map.
    """
    return _signs(int(seed), int(layer), int(group), int(stream), int(m))


def _blocks(m: int) -> list[tuple[int, int]]:
    """(offset, size) of the power-of-two blocks of m, largest first: 96 → (0, 64), (64, 32)."""
    out, off = [], 0
    for k in range(m.bit_length() - 1, -1, -1):
        if m >> k & 1:
            out.append((off, 1 << k))
            off += 1 << k
    return out


def _wht(v: np.ndarray) -> np.ndarray:
    """Orthonormal block Walsh–Hadamard along the last axis, float32, in the contract's order."""
    v = np.array(v, dtype=np.float32, copy=True)
    lead = v.shape[:-1]
    for off, size in _blocks(v.shape[-1]):
        blk = v[..., off:off + size]
        h = 1
        while h < size:
            r = blk.reshape(*lead, size // (2 * h), 2, h)
            a, b = r[..., 0, :].copy(), r[..., 1, :].copy()
            r[..., 0, :] = a + b
            r[..., 1, :] = a - b
            blk = r.reshape(*lead, size)
            h *= 2
        v[..., off:off + size] = blk * np.float32(1.0 / math.sqrt(size))
    return v


@lru_cache(maxsize=None)
def _mix_order(m: int) -> np.ndarray | None:
    """Cross-block mixing order of a non-power-of-two group (None for powers of two).

    The blocks of m are interleaved in proportion to their sizes (element r of a block
    of size B sorts by (2r + 1)·(S/B), S the largest block, ties by block) and the
    sequence is cut back into blocks: each new block draws from every old block a
    share proportional to its size, so the second block transform spreads energy
    across blocks (per-block rotation alone leaves the calibrated order's high-energy
    block with larger coordinates than the codebook's law). z = y[..., order]."""
    if m & (m - 1) == 0:
        return None
    blocks = _blocks(m)
    big = blocks[0][1]
    keys = [((2 * r + 1) * (big // size), b, off + r) for b, (off, size) in enumerate(blocks) for r in range(size)]
    return np.array([i for _, _, i in sorted(keys)], dtype=np.intp)


@lru_cache(maxsize=None)
def _mix_signs(m: int) -> np.ndarray:
    """Fixed ±1 (per group size, not per layer) applied after the mixing order: without them
    H·P·H would partly undo itself (H is an involution and P keeps runs of a block in order)."""
    return signs(0, 0, 0, STREAM_MIX, m)


def rotate(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """y = R·x over the last axis, float32 (input cast to float32 first), with R = H·D for a
    power-of-two size and H·D_mix·P·H·D otherwise (H block Walsh–Hadamard, P = _mix_order,
    D_mix = _mix_signs)."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] != signs.shape[-1]:
        raise ValueError(f"rotate: last axis {x.shape[-1]} != {signs.shape[-1]} signs")
    y = _wht(x * signs.astype(np.float32))
    order = _mix_order(x.shape[-1])
    return y if order is None else _wht(y[..., order] * _mix_signs(x.shape[-1]))


def unrotate(y: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """x = Rᵀ·y: the inverse of rotate (each H block is symmetric and involutive)."""
    y = np.asarray(y, dtype=np.float32)
    if y.shape[-1] != signs.shape[-1]:
        raise ValueError(f"unrotate: last axis {y.shape[-1]} != {signs.shape[-1]} signs")
    v = _wht(y)
    order = _mix_order(y.shape[-1])
    if order is not None:
        w = np.empty_like(v)
        w[..., order] = v * _mix_signs(y.shape[-1])
        v = _wht(w)
    return v * signs.astype(np.float32)
