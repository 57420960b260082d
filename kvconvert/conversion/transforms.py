"""Weight surgery (docs/design.md §2–3): the calibrated transforms folded into the
projection weights, one small function per fusion site.

Every function takes and returns arrays in Hugging Face row order (rows of a
Q/K/V projection are heads × head_dim, NeoX pairing: pair j = rows j, j + P),
computes in float64 and leaves the single cast to the writer. Shapes:
s (Hk, P) per-pair K→Q scales; order (P,) pair permutation of one layer;
mu (Hk, d) a mean; R (Hk, d, d) orthogonal V rotations.

Exactness (tested against the original model's logits with an f32 cache):
- scale_q_rows/scale_k_rows: q_j·s_j and k_j/s_j for both channels of pair j —
  RoPE rotates each pair as a complex number, so a real per-pair scale commutes
  with it and every score q·k is unchanged;
- scale_qk_norm: with QK-norm (Qwen3, Gemma 3) q and k are RMS-normalised per head
  before RoPE, which would undo any row scaling of W_q/W_k; the smoothing goes into
  the norm gains instead (q_norm·s, k_norm/s), exact when s is the same for every
  KV head (the gains are shared by all heads);
- permute_pair_rows: reorders whole pairs; exact only if RoPE uses the permuted θ
  table (folded layout: rope_pair_src);
- center_k_bias: b_k − μ; the runtime adds q·R_n·μ back (k_mean_folded);
- rotate_v_rows/rotate_o_cols: v → R v, W_o → W_o Rᵀ (R orthogonal, no RoPE on V);
- center_v_bias/fold_v_mean_into_o_bias: v − μ_v and b_o + W_o μ_v (softmax
  weights sum to 1).
"""

from __future__ import annotations

import numpy as np


def _heads(x: np.ndarray, n_heads: int) -> np.ndarray:
    """(n_heads*d, ...) → (n_heads, d, ...) float64 view."""
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(n_heads, x.shape[0] // n_heads, *x.shape[1:])


def _pair_scale(s: np.ndarray, rep: int) -> np.ndarray:
    """(Hk, P) per-pair scales → (Hk*rep, d) per-row factors."""
    full = np.concatenate([s, s], axis=-1).astype(np.float64)  # pair j scales rows j and j + P
    return np.repeat(full, rep, axis=0)


def _rows(x: np.ndarray, factor: np.ndarray) -> np.ndarray:
    h = _heads(x, factor.shape[0])
    f = factor.reshape(*factor.shape, *([1] * (h.ndim - 2)))
    return (h * f).reshape(np.shape(x))


def scale_q_rows(w: np.ndarray, s: np.ndarray, n_head: int) -> np.ndarray:
    """W_q or b_q (H*d, ...): pair j of every query head of KV group g times s[g, j]."""
    return _rows(w, _pair_scale(s, n_head // s.shape[0]))


def scale_k_rows(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """W_k or b_k (Hk*d, ...): pair j of KV head g divided by s[g, j]."""
    return _rows(w, 1.0 / _pair_scale(s, 1))


def scale_qk_norm(gain: np.ndarray, s: np.ndarray, inverse: bool, offset: float = 0.0) -> np.ndarray:
    """q_norm or k_norm weights (d,) whose gain is offset + weight (Gemma: 1): the gain of both
    channels of pair j times s[j] (q) or divided by it (k, inverse). s: (P,) one layer's scales."""
    f = np.concatenate([s, s]).astype(np.float64)
    g = np.asarray(gain, dtype=np.float64) + offset
    return (g / f if inverse else g * f) - offset


def permute_pair_rows(w: np.ndarray, order: np.ndarray, n_heads: int) -> np.ndarray:
    """W or b (heads*d, ...): new pair j of every head = old pair order[j] (both rows)."""
    h = _heads(w, n_heads)
    P = h.shape[1] // 2
    rows = np.concatenate([order, order + P])
    return h[:, rows].reshape(np.shape(w))


def center_k_bias(b: np.ndarray | None, mu: np.ndarray) -> np.ndarray:
    """b_k (Hk*d,) − μ (Hk, d); a missing bias counts as zero."""
    base = np.zeros(mu.size) if b is None else np.asarray(b, dtype=np.float64)
    return base - mu.reshape(-1).astype(np.float64)


def rotate_v_rows(w: np.ndarray, R: np.ndarray) -> np.ndarray:
    """W_v or b_v (Hk*d, ...): rows of KV head g → R[g] · rows."""
    h = _heads(w, R.shape[0])
    return np.einsum("gij,gj...->gi...", R.astype(np.float64), h).reshape(np.shape(w))


def rotate_o_cols(w: np.ndarray, R: np.ndarray, n_head: int) -> np.ndarray:
    """W_o (E, H*d): the columns of query head h (KV group g = h // rep) → W_o[:, h] · R[g]ᵀ."""
    w = np.asarray(w, dtype=np.float64)
    Hk, d = R.shape[0], R.shape[1]
    cols = w.reshape(w.shape[0], n_head, d)
    Rq = np.repeat(R.astype(np.float64), n_head // Hk, axis=0)  # (H, d, d)
    return np.einsum("ehj,hij->ehi", cols, Rq).reshape(w.shape)


def center_v_bias(b: np.ndarray | None, mu: np.ndarray) -> np.ndarray:
    """b_v (Hk*d,) − μ_v (Hk, d)."""
    return center_k_bias(b, mu)


def fold_v_mean_into_o_bias(b: np.ndarray | None, wo: np.ndarray, mu: np.ndarray, n_head: int) -> np.ndarray:
    """b_o (E,) + W_o · μ_v, with μ_v (Hk, d) repeated for every query head of its group."""
    Hk = mu.shape[0]
    mu_q = np.repeat(mu.astype(np.float64), n_head // Hk, axis=0).reshape(-1)
    base = np.zeros(np.shape(wo)[0]) if b is None else np.asarray(b, dtype=np.float64)
    return base + np.asarray(wo, dtype=np.float64) @ mu_q


def hadamard_rotation(d: int, seed: int, n_heads: int) -> np.ndarray:
    """(n_heads, d, d) orthogonal R = H·D per head: seeded signs, then the (block) Walsh–Hadamard
    transform of turboquant.rotate — the V rotation folded into the weights."""
    from ..kvcache import turboquant as tq

    eye = np.eye(d, dtype=np.float32)
    out = np.empty((n_heads, d, d))
    for g in range(n_heads):
        signs = tq.signs(seed, 0xFFFF, g, 2, d)
        out[g] = tq.rotate(eye, signs).astype(np.float64).T  # rotate() maps rows x → (H D x)
    return out
