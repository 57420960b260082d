"""Calibrated K basis (docs/design.md §4, issue 19 direction j): the basis a TurboQuant K cache codes
each key in, per layer and KV head.

After RoPE, centering and the channel permutation, KV head h's key k is coded as k' = k · A and each
query of its group is scored as q' = q · A⁻ᵀ, so ⟨q', k'⟩ = ⟨q, k⟩ for any invertible A. No weight
can carry A (RoPE commutes only with per-pair maps), so the runtime applies it: d² multiply-adds per
key written and per query scored. The exact rows (sinks, recent window) keep the original vectors.

Which A: a score error is q·δk, so the average squared score error of a coding error δk is
δkᵀ C_q δk (C_q the query second moment). In k̃ = C_q^{1/2} k that is plain squared error, and a
transform coder's best basis there is the eigenbasis of C_q^{1/2} C_k C_q^{1/2}, largest first: the
cache's outlier split then gives its extra bits to the directions that carry the score error.
Half of that weighting (ALPHA = 1/2, A = C_q^{1/4} U) measured better end to end than all of it
(the proxy's attention KL and the held-out KLD both: README direction j) — full whitening
overweights query directions that attention rarely uses for ranking keys.

A is stored as float16 values (the profile and the file hold the same numbers); the query basis is
computed from the stored A in float64 (query_basis), so the pair is exact whatever A's precision.
"""

from __future__ import annotations

import base64

import numpy as np

ALPHA = 0.5  # C_q weighting exponent (0: the keys' own PCA, 1: full whitening by the queries)
# The fit sees the calibration's queries and keys each rotated to a random position in [0, FIT_CTX):
# a RoPE pair that turns less than once per 512-token calibration window looks anisotropic and
# correlated with its neighbours there, and not 8k tokens deep, so a basis fitted on the windows as
# they are wins at 512 tokens and loses its gain deep in a context (README, direction j)
FIT_CTX = 8192
# A basis may follow RoPE in blocks of B positions (k_basis_block, 1..MAX_BASIS_BLOCK): the runtime turns each
# block's keys, and the queries scoring them, back to the block's first position, so the fit sees [0, B)
MAX_BASIS_BLOCK = 1 << 20
MAX_COND = 1e4  # a basis more ill-conditioned than this is refused (float32 scores would lose digits)


def fit_basis(q: np.ndarray, k: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """A (d, d) for one KV head from query rows q (n, d) and keys k (m, d), both in the cache's channel
    order (permuted, smoothed, centered, after RoPE). Columns by decreasing weighted key energy, rounded
    to float16 values (returned as float64)."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    cq, ck = q.T @ q / len(q), k.T @ k / len(k)
    w, u = np.linalg.eigh(cq)
    w = np.maximum(w, w.max() * 1e-6)  # a direction no query uses still gets a finite weight
    half = (u * w ** (alpha / 2)) @ u.T  # C_q^{alpha/2}
    e, v = np.linalg.eigh(half @ ck @ half)
    a = half @ v[:, ::-1]
    a /= np.sqrt(np.mean(a * a)) * np.sqrt(a.shape[0])  # overall scale ~ orthogonal: norms stay in range
    return a.astype(np.float16).astype(np.float64)


def query_basis(basis: np.ndarray) -> np.ndarray:
    """A⁻ᵀ of every (..., d, d) basis, float64: q' = q · query_basis(A) keeps ⟨q', k·A⟩ = ⟨q, k⟩."""
    return np.swapaxes(np.linalg.inv(np.asarray(basis, np.float64)), -1, -2)


def apply(x: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """x (..., d) · basis (d, d) in float64, cast to float32: the numpy twin of the runtime's
    basis_apply in cpu/kv_basis.c (which sums in float32: agreement to float32 rounding, not bit for bit)."""
    return (np.asarray(x, np.float64) @ np.asarray(basis, np.float64)).astype(np.float32)


def block_starts(pos: np.ndarray, block: int) -> np.ndarray:
    """First position of each position's block (all 0 when block is 0: the basis does not follow RoPE)."""
    pos = np.asarray(pos)
    return pos - pos % block if block > 0 else np.zeros_like(pos)


def read_back(x: np.ndarray, bases: np.ndarray, roundtrip, starts: np.ndarray | None = None, turn=None) -> np.ndarray:
    """What a cache coding keys x (T, Hk, d) in bases (Hk, d, d) reads back, in x's own channels:
    roundtrip(x_h · A_h) · A_h⁻¹ per KV head, float32 (roundtrip: (T, d) → what the codes decode to).

    A basis following RoPE: starts (T,) each key's block start (block_starts) and turn(x, p) RoPE's
    rotation of x (T, Hk, d) by positions p (T,); the key is turned back by its start before the basis
    and forward again after (the runtime turns the queries instead: the same scores)."""
    if starts is not None and np.any(starts):
        x = turn(np.asarray(x, np.float32), -starts)
    out = np.stack([np.asarray(roundtrip(apply(x[:, h], a)), np.float64) @ np.linalg.inv(a)
                    for h, a in enumerate(np.asarray(bases, np.float64))], 1).astype(np.float32)
    if starts is not None and np.any(starts):
        out = np.asarray(turn(out, starts), np.float32)
    return out


def problem(basis: np.ndarray) -> str | None:
    """Why a (layers, heads, d, d) array cannot serve as K bases (None: it can)."""
    b = np.asarray(basis, np.float64)
    if b.ndim != 4 or b.shape[-1] != b.shape[-2]:
        return f"needs shape (layers, kv heads, d, d), has {b.shape}"
    if not np.all(np.isfinite(b)):
        return "holds non-finite values"
    cond = np.linalg.cond(b.reshape(-1, b.shape[-1], b.shape[-1]))
    if not np.all(cond < MAX_COND):
        return f"a basis is singular or ill-conditioned (condition number {float(np.max(cond)):.3g} ≥ {MAX_COND:g})"
    return None


def identity(n_layer: int, n_head_kv: int, d: int) -> np.ndarray:
    return np.broadcast_to(np.eye(d), (n_layer, n_head_kv, d, d)).copy()


def to_text(basis: np.ndarray) -> str:
    """Base64 of the float16 values, little-endian, row-major (the profile's encoding)."""
    return base64.b64encode(np.asarray(basis, "<f2").tobytes()).decode("ascii")


def from_text(text: str, shape: tuple[int, ...]) -> np.ndarray:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) != 2 * int(np.prod(shape)):
        raise ValueError(f"holds {len(raw) // 2} values, expected {int(np.prod(shape))} for shape {shape}")
    return np.frombuffer(raw, "<f2").astype(np.float64).reshape(shape)


def used(basis: np.ndarray | None, n_layer: int) -> list[bool]:
    """Per layer: does it code K in a basis other than the identity (None: no layer does)."""
    if basis is None:
        return [False] * n_layer
    eye = np.eye(np.shape(basis)[-1])
    return [not np.array_equal(np.asarray(b, np.float64), np.broadcast_to(eye, np.shape(b))) for b in basis]
