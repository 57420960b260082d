"""The search's proxy errors (docs/design.md §5): one layer's calibration windows replayed
through the cache's codes — K as the KL divergence of its attention rows, V as the relative
error of its attention output — and the calibrated K basis fit's view of them.

Options are duck-typed (search.Option: cfg, smooth, center, basis) so that this module sits
below the search."""

from __future__ import annotations

import numpy as np

from ..kvcache import kbasis, turboquant as tq
from ..kvcache.types import DEFAULT_SEED as SEED
from ..models.rope import apply_rope
from ..runtime.engine import tq_roundtrip
from .calibrate import Calibration

MIN_QUERY = 4  # queries attending to fewer keys are not scored (their softmax is nearly exact)


def pair_channels(order: np.ndarray) -> np.ndarray:
    """HF channel permutation (..., d) placing pair order[0]'s two channels first, etc."""
    P = order.shape[-1]
    return np.stack([order, order + P], axis=-1).reshape(*order.shape[:-1], 2 * P)


# Scored (query, key) pairs per layer and window set: the proxy's cost per candidate is bounded by this,
# whatever the model's head count (a 7B scores fewer query rows per head than a 135M).
PROXY_PAIRS = 1 << 21


class _Layer:
    """Post-RoPE windows of one layer, ready for replaying candidate caches.

    Scored queries: up to ``n_rows`` positions per window, evenly spread from
    MIN_QUERY on (every other one when the budget allows), all query heads.
    Arrays are float32 and laid out (W, Hk, rep·nq, ·) so each score and mix
    step is one BLAS matmul per (window, KV head).

    n_recent = w > 0: a query at position r uses keys and values r − w + 1 .. r exactly (the
    runtime's recent window), so their errors are masked out of both proxies."""

    def __init__(self, cal: Calibration, layer: int, scales: np.ndarray, order: np.ndarray, n_sink: int = 0,
                 n_recent: int = 0, max_pairs: int = PROXY_PAIRS):
        self.cal, self.l, self.n_sink = cal, layer, n_sink
        W, _, T, H, d = cal.win_q.shape
        Hk = cal.n_head_kv
        self.rep, self.d, self.T, self.Hk = H // Hk, d, T, Hk
        self.rows = query_rows(T, max(1, max_pairs // (W * H * T)))
        pos = np.arange(T)
        q = apply_rope(cal.win_q[:, layer, self.rows].astype(np.float64), self.rows, cal.rope_freqs, "neox")
        self.q_rot = q  # (W, nq, H, d) float64
        k = cal.win_k[:, layer].astype(np.float64)  # (W, T, Hk, d)
        exact = _scores(self._heads(q), apply_rope(k, pos, cal.rope_freqs, "neox")) / np.sqrt(d)
        self.mask = np.tile(self.rows[:, None] >= pos[None, :], (self.rep, 1))  # (rep·nq, T)
        logp = _log_softmax(np.where(self.mask, exact, -np.inf))
        self.p = np.where(self.mask, np.exp(logp), 0).astype(np.float32)  # (W, Hk, rep·nq, T)
        # 1 where a query sees a key through the cache's codes, 0 in its recent exact window (or None: no window)
        self.coded = None if n_recent <= 0 else np.tile(
            self.rows[:, None] - pos[None, :] >= n_recent, (self.rep, 1)).astype(np.float32)  # (rep·nq, T)
        self.k_raw, self.pos = k, pos
        self.scales, self.perm = scales[layer], pair_channels(order[layer])
        self.v = cal.win_v[:, layer].astype(np.float32)  # (W, T, Hk, d)
        self.basis: np.ndarray | None = None  # (Hk, d, d) the K basis of Option.basis (set by the layer search)
        self._kcache: dict[tuple[bool, bool, bool], tuple[np.ndarray, np.ndarray]] = {}

    def _heads(self, q: np.ndarray) -> np.ndarray:
        """(W, nq, H, d) → (W, Hk, rep·nq, d): the query rows of each KV head's group together."""
        W, nq = q.shape[:2]
        return q.reshape(W, nq, self.Hk, self.rep, self.d).transpose(0, 2, 3, 1, 4).reshape(
            W, self.Hk, self.rep * nq, self.d)

    def _keys(self, smooth: bool, center: bool, basis: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Queries (W, Hk, rep·nq, d) and (centered, smoothed) post-RoPE keys (W, T, Hk, d),
        permuted, float32: what the cache sees. basis: both in the layer's K basis (k·A, q·A⁻ᵀ)."""
        if basis and (smooth, center, True) not in self._kcache:
            q, k = self._keys(smooth, center)
            qb = kbasis.query_basis(self.basis)
            self._kcache[(smooth, center, True)] = (
                np.stack([kbasis.apply(q[:, h], qb[h]) for h in range(self.Hk)], 1),
                np.stack([kbasis.apply(k[:, :, h], self.basis[h]) for h in range(self.Hk)], 2))
        if (smooth, center, basis) not in self._kcache:
            s = np.concatenate([self.scales, self.scales], -1) if smooth else np.ones((self.Hk, self.d))
            kc = (self.k_raw - (self.cal.k_mean[self.l] if center else 0)) / s
            kr = apply_rope(kc, self.pos, self.cal.rope_freqs, "neox")
            W, nq = self.q_rot.shape[:2]
            q = self.q_rot.reshape(W, nq, self.Hk, self.rep, self.d) * s[None, None, :, None, :]
            q = self._heads(q.reshape(W, nq, self.Hk * self.rep, self.d))
            self._kcache[(smooth, center, False)] = (np.ascontiguousarray(q[..., self.perm], np.float32),
                                                     np.ascontiguousarray(kr[..., self.perm], np.float32))
        return self._kcache[(smooth, center, basis)]

    def fit_sample(self, smooth: bool, n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
        """Query rows (Hk, n, d) and keys (Hk, m, d) as the cache sees them (centered, smoothed,
        permuted), each rotated to a random position in [0, n_ctx) instead of its own: the basis fit
        then sees the post-RoPE statistics of a context of n_ctx tokens (pairs that turn less than
        once per calibration window look anisotropic there and not deep in a long context)."""
        W, _, T, H, d = self.cal.win_q.shape
        rng = np.random.default_rng(self.l)
        s = np.concatenate([self.scales, self.scales], -1) if smooth else np.ones((self.Hk, d))
        k = ((self.k_raw - self.cal.k_mean[self.l]) / s).reshape(-1, self.Hk, d)
        q = self.cal.win_q[:, self.l, self.rows].astype(np.float64).reshape(-1, self.Hk, self.rep, d) * s[:, None]
        q = q.reshape(-1, H, d)
        kr = apply_rope(k, rng.integers(0, n_ctx, len(k)), self.cal.rope_freqs, "neox")[..., self.perm]
        qr = apply_rope(q, rng.integers(0, n_ctx, len(q)), self.cal.rope_freqs, "neox")[..., self.perm]
        qr = qr.reshape(len(q), self.Hk, self.rep, d).transpose(1, 0, 2, 3).reshape(self.Hk, -1, d)
        return qr, kr.transpose(1, 0, 2)

    def k_error(self, o: Option) -> float:
        """Mean KL(softmax(exact scores) ‖ softmax(scores with quantized keys)) over the scored rows.

        With e the score error and p the exact attention, KL = log Σ p·exp(e) − Σ p·e
        (the log-partition terms cancel), so no softmax of the perturbed scores is needed."""
        q, k = self._keys(o.smooth, o.center, o.basis)
        dk = _roundtrip(k, o.cfg, self.l) - k
        dk[:, :self.n_sink] = 0  # sink positions are kept exactly (windows start a sequence)
        e = _scores(q, dk)
        e *= np.float32(1 / np.sqrt(self.d))
        if self.coded is not None:
            e *= self.coded
        m = e.max(-1, keepdims=True)
        kl = np.log((self.p * np.exp(e - m)).sum(-1)) + m[..., 0] - (self.p * e).sum(-1)
        return float(np.maximum(kl, 0).mean(dtype=np.float64))

    def v_error(self, cfg: tq.KConfig, center: bool) -> float:
        mu = self.cal.v_mean[self.l].astype(np.float32) if center else np.float32(0)
        vc = self.v - mu
        v_hat = _roundtrip(vc, cfg, self.l)
        v_hat[:, :self.n_sink] = vc[:, :self.n_sink]
        p_coded = self.p if self.coded is None else self.p * self.coded
        out, diff = _mix(self.p, self.v), _mix(p_coded, v_hat - vc)
        return float((diff.astype(np.float64) ** 2).sum() / max((out.astype(np.float64) ** 2).sum(), 1e-30))


def _roundtrip(x: np.ndarray, cfg: tq.KConfig, layer: int) -> np.ndarray:
    """What the cache reconstructs of x (float32): the C kernels, or the numpy twin when the
    config has QJL (its inner-product correction lives in the numpy decode only)."""
    if cfg.qjl_hi or cfg.qjl_lo:
        return tq.decode(tq.encode(x, cfg, SEED, layer), cfg, SEED, layer).astype(np.float32)
    return tq_roundtrip(x, cfg, SEED, layer)


def query_rows(T: int, n: int) -> np.ndarray:
    """Up to n scored query positions in [MIN_QUERY, T), evenly spread (at most every other one:
    neighbouring queries add little)."""
    n = max(1, min(n, (T - MIN_QUERY + 1) // 2))
    return np.unique(np.linspace(MIN_QUERY, T - 1, n).round().astype(np.int64))


def _scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """q (W, Hk, R, d) · k (W, T, Hk, d) → (W, Hk, R, T), one matmul per (window, KV head)."""
    return q @ np.ascontiguousarray(k.transpose(0, 2, 3, 1))


def _mix(p: np.ndarray, v: np.ndarray) -> np.ndarray:
    """p (W, Hk, R, T) · v (W, T, Hk, d) → (W, Hk, R, d)."""
    return p @ np.ascontiguousarray(v.transpose(0, 2, 1, 3))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
