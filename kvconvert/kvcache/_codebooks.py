"""Lloyd–Max codebooks for the coordinates of a random unit vector (numpy only).

A uniformly random unit vector in R^m has coordinates with density
f(t) = (1 − t²)^k / Z on [−1, 1], k = (m − 3)/2, Z = B(1/2, k + 1); equivalently
(t + 1)/2 ~ Beta(a, a) with a = (m − 1)/2. We compute the MSE-optimal 2^b-level
scalar quantizer of that law exactly (up to float64 rounding):

- cell masses from the regularized incomplete beta function (Lentz continued
  fraction, always evaluated on the tail side, so small tail masses keep their
  relative precision);
- cell first moments in closed form: ∫ t f(t) dt = −(1 − t²)^(k+1) / (2(k + 1) Z);
- Newton's method on the fixed-point equations "boundary = midpoint of the two
  adjacent centroids" (a tridiagonal system), started from the high-resolution
  compander (point density ∝ f^(1/3)), finished with Lloyd steps until the
  centroids move less than 1e-11.

`kvconvert/data/turboquant_codebooks.npz` holds the result rounded to float32 for
m = 8, 16, …, 256 and b = 1..10 (`python -m kvconvert.kvcache._codebooks` rewrites it).
Layout: `levels` float32 (all codebooks concatenated, each ascending, 2^b values),
`index` int64 (n, 3) rows [m, bits, offset into levels], `version` int.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

DATA_FILE = Path(__file__).resolve().parent / "data" / "turboquant_codebooks.npz"
FILE_VERSION = 1
SHIPPED_M = tuple(range(8, 257, 8))
SHIPPED_BITS = tuple(range(1, 11))
TOL = 1e-11  # convergence: one more Lloyd step moves no centroid by more than this


def _log_norm(m: int) -> float:
    """log Z, Z = ∫(1 − t²)^k dt over [−1, 1] = sqrt(π) Γ((m−1)/2) / Γ(m/2)."""
    return 0.5 * math.log(math.pi) + math.lgamma((m - 1) / 2) - math.lgamma(m / 2)


def _betainc_sym(a: float, x: np.ndarray) -> np.ndarray:
    """I_x(a, a) for 0 ≤ x ≤ 1/2 (Lentz's continued fraction, Numerical Recipes §6.4)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    ok = x > 0
    xs = x[ok]
    tiny = 1e-300
    qab, qap, qam = 2 * a, a + 1, a - 1
    c = np.ones_like(xs)
    d = 1 - qab * xs / qap
    d = 1 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    for it in range(1, 5000):
        m2 = 2 * it
        aa = it * (a - it) * xs / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / np.where(np.abs(d) < tiny, tiny, d)
        c = 1 + aa / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        h *= d * c
        aa = -(a + it) * (qab + it) * xs / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / np.where(np.abs(d) < tiny, tiny, d)
        c = 1 + aa / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        delta = d * c
        h *= delta
        if np.all(np.abs(delta - 1) < 1e-15):
            break
    else:  # pragma: no cover - the fraction converges in O(sqrt(a)) steps
        raise RuntimeError("incomplete beta continued fraction did not converge")
    lbeta = 2 * math.lgamma(a) - math.lgamma(2 * a)
    out[ok] = np.exp(a * np.log(xs) + a * np.log1p(-xs) - lbeta) * h / a
    return out


def tail(m: int, t: np.ndarray) -> np.ndarray:
    """P(T > |t|) for a coordinate T of a random unit vector in R^m."""
    return _betainc_sym((m - 1) / 2, (1 - np.abs(np.asarray(t, dtype=np.float64))) / 2)


def density(m: int, t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    k = (m - 3) / 2
    return np.exp(k * np.log1p(-np.minimum(t * t, 1.0)) - _log_norm(m))


def _cells(m: int, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mass, centroid) of the cells [edges[i], edges[i+1]], edges ascending from −1 to 1."""
    lo, hi = edges[:-1], edges[1:]
    p_lo, p_hi = tail(m, lo), tail(m, hi)
    mass = np.where(lo >= 0, p_lo - p_hi, np.where(hi <= 0, p_hi - p_lo, 1 - p_lo - p_hi))
    # ∫_lo^hi t f = (A − B) / (2(k+1)Z), A = (1−lo²)^(k+1), B = (1−hi²)^(k+1); via expm1 for accuracy.
    k1 = (m - 1) / 2
    with np.errstate(divide="ignore"):
        la = k1 * np.log1p(-np.minimum(lo * lo, 1.0))
        lb = k1 * np.log1p(-np.minimum(hi * hi, 1.0))
    scale = math.exp(-_log_norm(m)) / (2 * k1)
    with np.errstate(divide="ignore", invalid="ignore"):
        moment = np.where(la >= lb, -np.exp(la) * np.expm1(lb - la), np.exp(lb) * np.expm1(la - lb)) * scale
    return mass, moment / mass


def _compander_start(m: int, n: int) -> np.ndarray:
    """Inner boundaries at the i/n quantiles of the point density ∝ f^(1/3)."""
    grid = np.linspace(-1, 1, 200_001)
    mid = (grid[:-1] + grid[1:]) / 2
    w = density(m, mid) ** (1 / 3)
    cdf = np.concatenate([[0.0], np.cumsum(w)])
    cdf /= cdf[-1]
    b = np.interp(np.arange(1, n) / n, cdf, grid)
    return (b - b[::-1]) / 2


def _solve_tridiagonal(lower: np.ndarray, diag: np.ndarray, upper: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    n = diag.size
    c = np.empty(n)
    d = np.empty(n)
    c[0], d[0] = upper[0] / diag[0] if n > 1 else 0.0, rhs[0] / diag[0]
    for i in range(1, n):
        den = diag[i] - lower[i] * c[i - 1]
        c[i] = upper[i] / den if i < n - 1 else 0.0
        d[i] = (rhs[i] - lower[i] * d[i - 1]) / den
    x = np.empty(n)
    x[-1] = d[-1]
    for i in range(n - 2, -1, -1):
        x[i] = d[i] - c[i] * x[i + 1]
    return x


def lloyd_max(m: int, bits: int) -> np.ndarray:
    """The 2^bits Lloyd–Max centroids (float64, ascending, symmetric) for dimension m ≥ 2."""
    if m < 2 or not 1 <= bits <= 16:
        raise ValueError(f"no codebook for m={m}, bits={bits} (need m >= 2, 1 <= bits <= 16)")
    b = _compander_start(m, 1 << bits)

    def residual(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """g = midpoint(centroids) − b, cell masses and centroids for inner boundaries b."""
        mass, cent = _cells(m, np.concatenate([[-1.0], b, [1.0]]))
        return (cent[:-1] + cent[1:]) / 2 - b, mass, cent

    g, mass, cent = residual(b)
    for _ in range(100):  # Newton on g(b) = 0; the Jacobian is tridiagonal
        if np.max(np.abs(g)) < TOL / 10:
            break
        fb = density(m, b)
        dc_dlo = fb * (cent[1:] - b) / mass[1:]   # ∂cent[i+1]/∂b[i]
        dc_dhi = fb * (b - cent[:-1]) / mass[:-1]  # ∂cent[i]/∂b[i]
        diag = (dc_dhi + dc_dlo) / 2 - 1
        lower = np.concatenate([[0.0], dc_dlo[:-1] / 2])  # ∂g[i]/∂b[i-1]
        upper = np.concatenate([dc_dhi[1:] / 2, [0.0]])   # ∂g[i]/∂b[i+1]
        step = _solve_tridiagonal(lower, diag, upper, -g)
        lam, new = 1.0, None
        while lam >= 1e-6 and new is None:
            nb = b + lam * step
            nb = (nb - nb[::-1]) / 2
            if nb[0] > -1 and np.all(np.diff(nb) > 0):
                cand = residual(nb)
                if np.all(cand[1] > 0) and np.max(np.abs(cand[0])) < np.max(np.abs(g)):
                    new = nb, cand
            lam /= 2
        if new is None:  # Newton stalled: take a Lloyd step instead
            nb = (cent[:-1] + cent[1:]) / 2
            new = nb, residual(nb)
        b, (g, mass, cent) = new
    for _ in range(10_000):  # Lloyd polish and the convergence certificate
        b = (cent[:-1] + cent[1:]) / 2
        _, new = _cells(m, np.concatenate([[-1.0], b, [1.0]]))
        moved = np.max(np.abs(new - cent))
        cent = new
        if moved < TOL:
            break
    else:
        raise RuntimeError(f"Lloyd–Max for m={m}, bits={bits} did not converge")
    return (cent - cent[::-1]) / 2


def distortion(m: int, centroids: np.ndarray) -> float:
    """m · E[(T − Q(T))²]: the expected ‖u − û‖² of a random unit vector u in R^m."""
    c = np.asarray(centroids, dtype=np.float64)
    edges = np.concatenate([[-1.0], (c[:-1] + c[1:]) / 2, [1.0]])
    mass, cent = _cells(m, edges)
    # E[T²] = 1/m; E[(T − c)²] per cell = E[T²|cell] − 2c·cent + c².
    return float(m * (1 / m - np.sum(mass * (2 * c * cent - c * c))))


def build_table(ms=SHIPPED_M, bits=SHIPPED_BITS) -> tuple[np.ndarray, np.ndarray]:
    levels, index, off = [], [], 0
    for m in ms:
        for b in bits:
            c = lloyd_max(m, b).astype(np.float32)
            levels.append(c)
            index.append((m, b, off))
            off += c.size
    return np.concatenate(levels), np.asarray(index, dtype=np.int64)


def write_data_file(path: Path = DATA_FILE) -> None:
    levels, index = build_table()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, levels=levels, index=index, version=np.int64(FILE_VERSION))


def load_data_file(path: Path = DATA_FILE) -> dict[tuple[int, int], np.ndarray]:
    with np.load(path) as z:
        if int(z["version"]) != FILE_VERSION:
            raise ValueError(f"{path}: codebook file version {int(z['version'])}, expected {FILE_VERSION}")
        levels, index = z["levels"], z["index"]
    return {(int(m), int(b)): levels[o:o + (1 << int(b))] for m, b, o in index}


if __name__ == "__main__":
    write_data_file(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_FILE)
