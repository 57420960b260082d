"""Search (DESIGN §5): per-layer K and V cache configs under a bits budget.

1. Candidates per layer: uniform TurboQuant b bits, outlier splits (hi group =
   the d/8, d/4 or d/2 channels of the highest-energy RoPE pairs), optionally QJL, each with
   and without K→Q smoothing; K is always mean-centered (exact, DESIGN §2).
2. Proxy error per candidate, measured by replaying the calibration windows
   through the numpy twin of the cache (turboquant.py): K — mean KL divergence
   between softmax(q·k/√d) with exact and with quantized keys, over every causal
   query, head and window; V — relative error of the attention output. The
   policy's sink positions (the first of each window) stay exact, as the
   runtime keeps them (kv_cache.c: one attention sink moves whole rows).
3. Allocation: the per-layer choice minimising the summed proxy error with mean
   bits per value ≤ budget (exact multiple-choice knapsack on the layer bit
   costs, all overheads counted — the f16 sinks spread over the calibration
   context too).
4. End-to-end check of the winner on held-out text: KLD, top-1 agreement and
   PPL against the f16-cache run of the same converted file.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import turboquant as tq
from .calibrate import Calibration
from .errors import InputError
from .profile import ModelShape, Policy, Profile, Transforms, load_profile, sink_bits
from .progress import ProgressFn, check_cancel
from .rope import apply_rope
from .runtime import TQ_SEED as SEED

DEFAULT_POLICY = "balanced"
SMOOTH_CLAMP = 8.0  # smoothing scales stay in [1/8, 8]
MIN_QUERY = 4  # queries attending to fewer keys are not scored (their softmax is nearly exact)


@dataclass(frozen=True)
class Option:
    """One per-layer choice: a TurboQuant config and whether K→Q smoothing is applied."""

    cfg: tq.KConfig
    smooth: bool = False
    center: bool = True

    @property
    def bits(self) -> float:
        return self.cfg.bits_per_value()


@dataclass
class Candidate:
    """A row of the candidate table (whole-model configurations)."""

    name: str
    k_bpv: float
    v_bpv: float
    proxy_error: float
    kld: float | None = None
    ppl: float | None = None
    top1: float | None = None


@dataclass
class SearchResult:
    profile: Profile
    candidates: list[Candidate] = field(default_factory=list)
    k_errors: list[dict[str, float]] = field(default_factory=list)  # per layer: option label → proxy error
    v_errors: list[dict[str, float]] = field(default_factory=list)


def _label(o: Option) -> str:
    return o.cfg.spec() + ("+smooth" if o.smooth else "") + ("" if o.center else "+nocenter")


# -- transforms computed from the statistics ----------------------------------------

def smoothing_scales(cal: Calibration) -> np.ndarray:
    """Per-pair K→Q scales s (L, Hk, P): K pair j is divided by s_j, Q multiplied.

    Score error of a rotated quantizer ≈ E‖q∘s‖²·E‖k/s‖²·D_b/d, minimised by
    s_j² = sqrt(E k_j² / E q_j²) (centered K energy per pair); normalised to a
    geometric mean of 1 and clamped to [1/8, 8]."""
    ek = Calibration.pairs(cal.k_energy(True))
    eq = Calibration.pairs(cal.q_energy())
    floor = 1e-12 * (ek.mean(-1, keepdims=True) + eq.mean(-1, keepdims=True))
    s = ((ek + floor) / (eq + floor)) ** 0.25
    s = s / np.exp(np.log(s).mean(-1, keepdims=True))
    return np.clip(s, 1 / SMOOTH_CLAMP, SMOOTH_CLAMP)


def pair_order(cal: Calibration, scales: np.ndarray | None) -> np.ndarray:
    """(L, P) pairs by decreasing centered (smoothed) K energy summed over KV heads."""
    e = Calibration.pairs(cal.k_energy(True))
    if scales is not None:
        e = e / scales ** 2
    return np.argsort(-e.sum(1), axis=-1, kind="stable").astype(np.int32)


def pair_channels(order: np.ndarray) -> np.ndarray:
    """HF channel permutation (..., d) placing pair order[0]'s two channels first, etc."""
    P = order.shape[-1]
    return np.stack([order, order + P], axis=-1).reshape(*order.shape[:-1], 2 * P)


# -- proxy errors --------------------------------------------------------------------

class _Layer:
    """Post-RoPE windows of one layer, ready for replaying candidate caches."""

    def __init__(self, cal: Calibration, layer: int, scales: np.ndarray, order: np.ndarray, n_sink: int = 0):
        self.cal, self.l, self.n_sink = cal, layer, n_sink
        W, _, T, H, d = cal.win_q.shape
        Hk = cal.n_head_kv
        self.rep, self.d, self.T = H // Hk, d, T
        pos = np.arange(T)
        q = cal.win_q[:, layer].astype(np.float64)  # (W, T, H, d)
        k = cal.win_k[:, layer].astype(np.float64)
        self.mu = cal.k_mean[layer]  # (Hk, d)
        self.q_rot = np.stack([apply_rope(x, pos, cal.rope_freqs, "neox") for x in q])
        k_rot = np.stack([apply_rope(x, pos, cal.rope_freqs, "neox") for x in k])
        qg = self.q_rot.reshape(W, T, Hk, self.rep, d)[:, QUERY_ROWS(T)]
        self.rows = QUERY_ROWS(T)
        # exact scores (W, Hk, rep, queries, T), float32 from here on
        self.scores = (_scores(qg, k_rot) / np.sqrt(d)).astype(np.float32)
        self.mask = self.rows[:, None] >= np.arange(T)[None, :]
        self.logp = np.where(self.mask, _log_softmax(np.where(self.mask, self.scores, -np.inf)), 0).astype(np.float32)
        self.weights = np.exp(self.logp) * self.mask
        self.k_raw, self.pos = k, pos
        self.scales, self.perm = scales[layer], pair_channels(order[layer])
        self.v = cal.win_v[:, layer].astype(np.float64)  # (W, T, Hk, d)

    def _keys(self, smooth: bool, center: bool) -> tuple[np.ndarray, np.ndarray]:
        """Queries and (centered, smoothed) post-RoPE keys, permuted: what the cache sees."""
        s = np.concatenate([self.scales, self.scales], -1) if smooth else np.ones((self.cal.n_head_kv, self.d))
        kc = (self.k_raw - (self.mu if center else 0)) / s
        kr = np.stack([apply_rope(x, self.pos, self.cal.rope_freqs, "neox") for x in kc])
        W, T, Hk = kr.shape[:3]
        q = self.q_rot.reshape(W, T, Hk, self.rep, self.d)[:, self.rows] * s[None, None, :, None, :]
        return q[..., self.perm], kr[..., self.perm]

    def k_error(self, o: Option) -> float:
        q, k = self._keys(o.smooth, o.center)
        k_hat = tq.decode(tq.encode(k.astype(np.float32), o.cfg, SEED, self.l), o.cfg, SEED, self.l)
        dk = k_hat.astype(np.float32) - k.astype(np.float32)
        dk[:, :self.n_sink] = 0  # sink positions are kept exactly (windows start a sequence)
        err = _scores(q, dk) / np.float32(np.sqrt(self.d))
        logq = _log_softmax(np.where(self.mask, self.scores + err, -np.inf))
        kl = (self.weights * (self.logp - np.where(self.mask, logq, 0))).sum(-1)
        return float(kl.mean())

    def v_error(self, cfg: tq.KConfig, center: bool) -> float:
        mu = self.cal.v_mean[self.l] if center else 0
        vc = (self.v - mu).astype(np.float32)
        v_hat = tq.decode(tq.encode(vc, cfg, SEED, self.l), cfg, SEED, self.l)
        v_hat[:, :self.n_sink] = vc[:, :self.n_sink]
        out, diff = _mix(self.weights, self.v.astype(np.float32)), _mix(self.weights, v_hat - vc)
        return float((diff.astype(np.float64) ** 2).sum() / max((out.astype(np.float64) ** 2).sum(), 1e-30))


def QUERY_ROWS(T: int) -> np.ndarray:  # noqa: N802
    """Scored query positions: every other one from MIN_QUERY on (halves the cost, same statistics)."""
    return np.arange(MIN_QUERY, T, 2)


def _scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """q (W, Tq, Hk, rep, d) · k (W, T, Hk, d) → (W, Hk, rep, Tq, T) by BLAS matmul."""
    qt = np.ascontiguousarray(q.transpose(0, 2, 3, 1, 4))  # (W, Hk, rep, Tq, d)
    kt = np.ascontiguousarray(k.transpose(0, 2, 3, 1))[:, :, None]  # (W, Hk, 1, d, T)
    return qt @ kt


def _mix(p: np.ndarray, v: np.ndarray) -> np.ndarray:
    """p (W, Hk, rep, Tq, T) · v (W, T, Hk, d) → (W, Hk, rep, Tq, d)."""
    return p @ np.ascontiguousarray(v.transpose(0, 2, 1, 3))[:, :, None]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def k_configs(policy: Policy, d: int) -> list[tq.KConfig]:
    """Candidate K configs: uniform b bits; splits (the d/8, d/4 or d/2 channels of the
    highest-energy pairs at b+1 or b+2 bits, the rest at b); QJL variants."""
    cfgs = [tq.KConfig(d=d, lo_bits=b, hi_bits=b) for b in policy.k_bits]
    if policy.splits:
        cfgs += [tq.KConfig(d=d, n_hi=hi, hi_bits=b + dh, lo_bits=b) for hi in (d // 8, d // 4, d // 2)
                 for b in policy.k_bits for dh in (1, 2) if b + dh <= tq.MAX_BITS and b <= tq.MAX_LO_BITS]
    if policy.qjl:
        cfgs += [tq.KConfig(d=d, lo_bits=b, hi_bits=b, qjl_lo=True, qjl_hi=True) for b in policy.k_bits if b >= 2]
        if policy.splits:
            cfgs += [tq.KConfig(d=d, n_hi=d // 4, hi_bits=b + 2, lo_bits=b, qjl_lo=True)
                     for b in policy.k_bits if b >= 2]
    return list(dict.fromkeys(cfgs))


# -- allocation ----------------------------------------------------------------------

def allocate(costs: list[list[float]], errors: list[list[float]], budget: float) -> list[int]:
    """Per-layer option indices minimising Σ error with mean cost ≤ budget (exact DP).

    costs[l][i] are bits per value; they are multiples of 1/256 for every config
    (codes + 16-bit scales over d ≤ 512 values), so the DP runs on 1/256 units."""
    L = len(costs)
    unit = 256
    c = [np.rint(np.asarray(cl) * unit).astype(np.int64) for cl in costs]
    cap = int(np.floor(budget * L * unit + 1e-6))
    if sum(int(cl.min()) for cl in c) > cap:
        need = sum(min(cl) for cl in costs) / L
        raise InputError(f"a budget of {budget:g} bits per value is below the minimum {need:.3f} of the "
                         "candidate configs; raise the budget or allow fewer bits (policy k_bits/v_bits)")
    INF = np.inf
    dp = np.full(cap + 1, INF)
    dp[0] = 0.0
    choice = np.zeros((L, cap + 1), dtype=np.int32)
    for l in range(L):
        new = np.full(cap + 1, INF)
        for i, (ci, ei) in enumerate(zip(c[l], errors[l])):
            if ci > cap:
                continue
            cand = np.full(cap + 1, INF)
            cand[ci:] = dp[:cap + 1 - ci] + ei
            better = cand < new
            new[better] = cand[better]
            choice[l][better] = i
        dp = new
    u = int(np.argmin(dp))
    picks = [0] * L
    for l in range(L - 1, -1, -1):
        picks[l] = int(choice[l][u])
        u -= int(c[l][picks[l]])
    return picks


# -- the search ----------------------------------------------------------------------

def resolve_policy(policy: str | Policy, k_budget: float | None, v_budget: float | None) -> Policy:
    if isinstance(policy, str):
        got = load_profile(policy)
        if not isinstance(got, Policy):
            raise InputError(f"{policy!r} is a calibrated profile, not a policy; pass it to convert --profile")
        policy = got
    kw = {}
    if k_budget is not None:
        kw["k_budget"] = float(k_budget)
    if v_budget is not None:  # 0: V stays f16
        kw["v_budget"] = float(v_budget) if v_budget > 0 else None
    return replace(policy, **kw) if kw else policy


def search(calib: Calibration | str | os.PathLike, *, policy: str | Policy = DEFAULT_POLICY,
           k_budget: float | None = None, v_budget: float | None = None, eval_text: str | None = None,
           check: bool = True, model: str | os.PathLike | None = None, n_chunks: int | None = None,
           n_threads: int = 0, progress: ProgressFn | None = None,
           cancel: threading.Event | None = None) -> SearchResult:
    """Choose per-layer K/V configs for a calibration under the policy's budgets.

    check: convert the model (``model``, default the calibrated one) with the
    profile and measure it on ``eval_text`` (default: the calibration's held-out
    chunks) against the f16-cache run; the numbers go to profile.measured."""
    cal = calib if isinstance(calib, Calibration) else Calibration.load(calib)
    pol = resolve_policy(policy, k_budget, v_budget)
    L, Hk, d = cal.n_layer, cal.n_head_kv, cal.head_dim
    scales = smoothing_scales(cal)
    order = pair_order(cal, scales if pol.smoothing else None)
    k_cfgs = k_configs(pol, d)
    probe = tq.KConfig(d=d, lo_bits=sorted(pol.k_bits)[len(pol.k_bits) // 2])  # decides smoothing per layer
    v_cfgs = [tq.KConfig(d=d, lo_bits=b, hi_bits=b) for b in pol.v_bits] if pol.v_budget is not None else []
    k_err, v_err = [], []
    steps = L * (len(k_cfgs) + int(pol.smoothing) + 2 * len(v_cfgs))
    k_opts: list[list[Option]] = []
    done = 0
    for l in range(L):
        check_cancel(cancel)
        lay = _Layer(cal, l, scales, order, pol.sink_tokens)
        errs = {}
        smooth = False
        if pol.smoothing:  # smoothing on for the layer if it lowers the error of the probe config
            errs[_label(Option(probe, True))] = lay.k_error(Option(probe, True))
            errs[_label(Option(probe))] = lay.k_error(Option(probe))
            smooth = errs[_label(Option(probe, True))] < errs[_label(Option(probe))]
            done += 1
        k_opts.append([Option(c, smooth) for c in k_cfgs])
        for o in k_opts[-1]:
            if _label(o) not in errs:
                errs[_label(o)] = lay.k_error(o)
            done += 1
            if progress:
                progress(done, steps, f"layer {l + 1}/{L}: K {_label(o)}")
        k_err.append(errs)
        verrs = {}
        for cfg in v_cfgs:
            for center in (False, True):
                verrs[cfg.spec() + ("+center" if center else "")] = lay.v_error(cfg, center)
                done += 1
                if progress:
                    progress(done, steps, f"layer {l + 1}/{L}: V {cfg.spec()}")
        v_err.append(verrs)
        del lay
    sink = sink_bits(pol.sink_tokens, cal.n_ctx)  # the f16 sinks are part of the budget at the calibration context
    k_pick = allocate([[o.bits + sink for o in opts] for opts in k_opts],
                      [[e[_label(o)] for o in opts] for e, opts in zip(k_err, k_opts)], pol.k_budget)
    k_choice = [opts[i] for opts, i in zip(k_opts, k_pick)]
    v_choice: list[tuple[tq.KConfig, bool]] = []
    if v_cfgs:
        v_list = [(c, ctr) for c in v_cfgs for ctr in (False, True)]
        v_pick = allocate([[c.bits_per_value() + sink for c, _ in v_list]] * L,
                          [[e[c.spec() + ("+center" if ctr else "")] for c, ctr in v_list] for e in v_err],
                          pol.v_budget)
        v_choice = [v_list[i] for i in v_pick]
    prof = _profile(cal, pol, k_choice, v_choice, scales, order)
    result = SearchResult(prof, k_errors=k_err, v_errors=v_err)
    result.candidates = _uniform_candidates(cal, pol, k_err, k_choice, prof)
    if check:
        measure(prof, model or cal.model, cal, eval_text=eval_text, n_chunks=n_chunks, n_threads=n_threads,
                progress=progress, cancel=cancel)
        best = result.candidates[0]
        best.kld, best.ppl, best.top1 = prof.measured.get("kld"), prof.measured.get("ppl"), prof.measured.get("top1")
    return result


def _profile(cal: Calibration, pol: Policy, k_choice: list[Option], v_choice, scales, order) -> Profile:
    L, Hk, d = cal.n_layer, cal.n_head_kv, cal.head_dim
    s = np.where(np.asarray([o.smooth for o in k_choice])[:, None, None], scales, 1.0)
    mean = cal.k_mean / np.concatenate([s, s], -1)
    v_mean = None
    if v_choice and any(ctr for _, ctr in v_choice):
        v_mean = np.where(np.asarray([ctr for _, ctr in v_choice])[:, None, None], cal.v_mean, 0.0)
    tr = Transforms(k_mean=mean.astype(np.float32), k_scale=s.astype(np.float32), pair_order=order.astype(np.int32),
                    v_mean=None if v_mean is None else v_mean.astype(np.float32))
    shape = ModelShape(Path(cal.model).name, cal.arch, L, cal.n_head, Hk, d)
    prof = Profile(name=f"{shape.name.removesuffix('.gguf')}-{pol.name}", model=shape, k_type="tq",
                   v_type="tq" if v_choice else "f16", k_layers=[o.cfg.spec() for o in k_choice],
                   v_layers=[c.spec() for c, _ in v_choice], transforms=tr, policy=pol.name,
                   provenance={"model": cal.model, "fingerprint": cal.fingerprint, "text": cal.text_source,
                               "text_sha256": cal.text_sha256, "tokens": cal.n_tokens, "n_ctx": cal.n_ctx,
                               "calibration": str(cal.path) if cal.path else None},
                   sink_tokens=pol.sink_tokens)
    kb, vb = prof.bits(cal.n_ctx)
    prof.measured = {"k_bpv": round(kb, 4), "v_bpv": round(vb, 4), "bpv_n_ctx": cal.n_ctx}
    return prof


def _uniform_candidates(cal, pol, k_err, k_choice: list[Option], prof: Profile) -> list[Candidate]:
    """The chosen profile first, then uniform K configs for comparison (proxy errors summed over layers)."""
    kb, vb = prof.bits(cal.n_ctx)
    rows = [Candidate(prof.name, kb, vb, sum(e[_label(o)] for e, o in zip(k_err, k_choice)))]
    for b in pol.k_bits:
        cfg = tq.KConfig(d=cal.head_dim, lo_bits=b, hi_bits=b)
        err = sum(e.get(_label(Option(cfg)), e.get(_label(Option(cfg, True)), np.nan)) for e in k_err)
        rows.append(Candidate(f"uniform tq{b} K", cfg.bits_per_value() + sink_bits(pol.sink_tokens, cal.n_ctx), vb,
                              err))
    return rows


def measure(prof: Profile, model: str | os.PathLike, cal: Calibration | None = None, *, eval_text: str | None = None,
            n_ctx: int | None = None, n_chunks: int | None = None, n_threads: int = 0,
            progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> dict:
    """Convert ``model`` with ``prof`` to a temporary GGUF and measure PPL, KLD and top-1
    against its f16-cache run on held-out text; fills prof.measured and returns it."""
    from .convert import convert
    from .evaluate import evaluate
    from .runtime import Model

    text, text_name = eval_text, "held-out text"
    if text is None:
        if cal is None or len(cal.holdout) == 0:
            raise InputError("no held-out text to check the profile on; pass eval_text")
        rt = Model(_runtime_path(model))
        text, text_name = "".join(rt.detokenize([t for t in ch.tolist() if t != _bos(rt)]) for ch in cal.holdout), \
            "calibration held-out chunks"
    n_ctx = n_ctx or (cal.n_ctx if cal else 512)
    with tempfile.TemporaryDirectory(prefix="kvconvert-check-") as tmp:
        out = Path(tmp) / "check.gguf"
        convert(model, out, weights="q8_0", profile=prof, progress=None, cancel=cancel)
        m = Model(out)
        base = Path(tmp) / "base.logits"
        ref = evaluate(m, text, text_name=text_name, n_ctx=n_ctx, n_chunks=n_chunks, type_k="f16", type_v="f16",
                       n_threads=n_threads, save_logits=base, cancel=cancel)
        res = evaluate(m, text, text_name=text_name, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=n_threads,
                       kld_base=base, progress=progress, cancel=cancel)
    prof.measured.update(kld=res.kld, kld_err=res.kld_err, top1=res.top1, ppl=res.ppl, ppl_err=res.ppl_err,
                         ppl_f16=ref.ppl, text=text_name, text_sha256=res.text_sha256, n_ctx=n_ctx,
                         chunks=res.n_chunks, weights="q8_0")
    return prof.measured


def _runtime_path(model) -> Path:
    from .calibrate import runtime_gguf
    from .model import load_model

    return runtime_gguf(load_model(model))


def _bos(rt) -> int | None:
    spec = rt.source.tokenizer_spec()
    return spec.bos_id if spec.effective_add_bos() else None
