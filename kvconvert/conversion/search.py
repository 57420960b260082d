"""Search (docs/design.md §5): per-layer K and V cache configs under a bits budget.

1. Candidates per layer: uniform TurboQuant b bits, outlier splits (hi group =
   the d/8, d/4 or d/2 channels of the highest-energy RoPE pairs), optionally QJL, each with
   and without K→Q smoothing; K is always mean-centered (exact, docs/design.md §2).
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
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..kvcache import kbasis, turboquant as tq
from .calibrate import Calibration
from ..base.errors import InputError
from ..base.blas import one_blas_thread
from .profile import ModelShape, Policy, Profile, Transforms, load_profile
from .sensitivity import Sensitivity, measure_sensitivity
from ..base.progress import ProgressFn, check_cancel, start_phase
from ..kvcache import kvmeta
from ..kvcache.types import TQ
from .proxy import _Layer, pair_channels

DEFAULT_POLICY = "balanced"
SMOOTH_CLAMP = 8.0  # smoothing scales stay in [1/8, 8]


@dataclass(frozen=True)
class Option:
    """One per-layer choice: a TurboQuant config and whether K→Q smoothing is applied."""

    cfg: tq.KConfig
    smooth: bool = False
    center: bool = True
    basis: bool = False  # K coded in the layer's calibrated basis (kvcache/kbasis.py)

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
    # what rebudget() needs to re-run the allocation without measuring again
    policy: Policy | None = None
    k_options: list[list[Option]] = field(default_factory=list)  # per layer, the measured K options
    v_options: list[tuple[tq.KConfig, bool]] = field(default_factory=list)  # measured (config, centered) V options
    scales: np.ndarray | None = None
    order: np.ndarray | None = None
    sensitivity: Sensitivity | None = None  # per-layer weights of the proxy errors (Policy.sensitivity)
    scale8: "Scale8Bases | None" = None  # the 8-bit scale grids of the candidates (Policy.scale8), or fp16 scales
    k_bases: list[np.ndarray | None] = field(default_factory=list)  # per layer (Hk, d, d) K basis (Policy.k_basis)


def _label(o: Option) -> str:
    return o.cfg.spec() + ("+smooth" if o.smooth else "") + ("" if o.center else "+nocenter") + (
        "+basis" if o.basis else "")


@dataclass(frozen=True)
class Scale8Bases:
    """The 8-bit scale grid of each layer's K and V candidates (turboquant.scale8_base): 254 steps
    of 2.2% span 245×, enough for one layer's vectors as the cache stores them (their norms span
    3–18× on Qwen2.5) but not for all layers (V's largest norms differ 80× between Qwen's layers)."""

    k: tuple[int, ...]
    v: tuple[int, ...]


def norm_base(x: np.ndarray) -> int:
    """The 8-bit scale grid for vectors x (..., d) as the cache stores them: its top ≥ 4× their
    largest norm (a group's least-squares scale is within ~1.2× of its norm, at most the head's).
    Measured on what is stored — K centered and (if chosen) smoothed: Qwen2.5's uncentered K norms
    are up to 50× larger, a grid set from them put a quarter of a layer's scales below its floor."""
    return tq.scale8_base(float(np.sqrt((x.astype(np.float64) ** 2).sum(-1)).max()))


def _with_base(cfgs: list[tq.KConfig], base: int | None) -> list[tq.KConfig]:
    """cfgs (fp16 scales) and, with a grid, each of them with 8-bit scales too: the byte saves 1/8 bit
    per value at d = 64 but its rounding adds ~1.6e-4 of a group's energy, more than the codes' own
    error at 6 bits and beyond (Lloyd–Max MSE ~7e-4 at 6 bits, 1e-2 at 4), so the proxy decides per
    layer and width."""
    return cfgs if base is None else cfgs + [c.with_scale_base(base) for c in cfgs]


# -- transforms computed from the statistics ----------------------------------------

def smoothing_scales(cal: Calibration) -> np.ndarray:
    """Per-pair K→Q scales s (L, Hk, P): K pair j is divided by s_j, Q multiplied.

    Score error of a rotated quantizer ≈ E‖q∘s‖²·E‖k/s‖²·D_b/d, minimised by
    s_j² = sqrt(E k_j² / E q_j²) (centered K energy per pair); normalised to a
    geometric mean of 1 and clamped to [1/8, 8]. With QK-norm (Qwen3, Gemma 3) the
    scales live in the per-head norm gains that every head shares, so one set per
    layer is computed from the energies summed over KV heads (docs/design.md §2)."""
    ek = Calibration.pairs(cal.k_energy(True))
    eq = Calibration.pairs(cal.q_energy())
    if _qk_norm(cal.arch):
        ek = np.broadcast_to(ek.sum(1, keepdims=True), ek.shape)
        eq = np.broadcast_to(eq.sum(1, keepdims=True), eq.shape)
    floor = 1e-12 * (ek.mean(-1, keepdims=True) + eq.mean(-1, keepdims=True))
    s = ((ek + floor) / (eq + floor)) ** 0.25
    s = s / np.exp(np.log(s).mean(-1, keepdims=True))
    return np.clip(s, 1 / SMOOTH_CLAMP, SMOOTH_CLAMP)


def _qk_norm(arch_name: str) -> bool:
    from ..base.errors import UnsupportedArchitecture
    from ..models.arch import from_gguf

    try:
        return from_gguf(arch_name).qk_norm
    except UnsupportedArchitecture:
        return False


def pair_order(cal: Calibration, scales: np.ndarray | None) -> np.ndarray:
    """(L, P) pairs by decreasing centered (smoothed) K energy summed over KV heads."""
    e = Calibration.pairs(cal.k_energy(True))
    if scales is not None:
        e = e / scales ** 2
    return np.argsort(-e.sum(1), axis=-1, kind="stable").astype(np.int32)


def measure_layer_sensitivity(cal: Calibration, scales: np.ndarray | None, order: np.ndarray, *, sink_tokens: int,
                              recent: int = 0, **kw) -> Sensitivity:
    """sensitivity.measure_sensitivity with this search's channel order and proxy errors (K with the
    layer's smoothing off, V centered) — the same codec (and recent window) the measurement runs."""
    def proxy(layer: int, cfg: tq.KConfig) -> tuple[float, float]:
        lay = _Layer(cal, layer, scales, order, sink_tokens, recent)
        return lay.k_error(Option(cfg, smooth=False)), lay.v_error(cfg, True)

    return measure_sensitivity(cal, pair_channels(order), proxy, sink_tokens=sink_tokens, recent=recent, **kw)


def k_configs(policy: Policy, d: int, base: int | None = None) -> list[tq.KConfig]:
    """Candidate K configs: uniform b bits; splits (the d/8, d/4 or d/2 channels of the
    highest-energy pairs at b+1 or b+2 bits, the rest at b); QJL variants. base: 8-bit scales
    on that grid (None: fp16 scales)."""
    cfgs = [tq.KConfig(d=d, lo_bits=b, hi_bits=b) for b in policy.k_bits]
    if policy.splits:
        cfgs += [tq.KConfig(d=d, n_hi=hi, hi_bits=b + dh, lo_bits=b) for hi in (d // 8, d // 4, d // 2)
                 for b in policy.k_bits for dh in (1, 2) if b + dh <= tq.MAX_BITS and b <= tq.MAX_LO_BITS]
    if policy.qjl:
        cfgs += [tq.KConfig(d=d, lo_bits=b, hi_bits=b, qjl_lo=True, qjl_hi=True) for b in policy.k_bits if b >= 2]
        if policy.splits:
            cfgs += [tq.KConfig(d=d, n_hi=d // 4, hi_bits=b + 2, lo_bits=b, qjl_lo=True)
                     for b in policy.k_bits if b >= 2]
    return _with_base(list(dict.fromkeys(cfgs)), base)


# -- allocation ----------------------------------------------------------------------

def allocate(costs: list[list[float]], errors: list[list[float]], budget: float) -> list[int]:
    """Per-layer option indices minimising Σ error with mean cost ≤ budget (exact DP).

    costs[l][i] are bits per value; they are multiples of 1/256 for every config
    (codes + 16- or 8-bit scales over d ≤ 512 values), so the DP runs on 1/256 units."""
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


def split_configs(policy: Policy, d: int, lo_bits: tuple[int, ...], base: int | None = None) -> list[tq.KConfig]:
    """The non-uniform K configs of k_configs() whose lo group has one of ``lo_bits`` bits
    (outlier splits, QJL variants)."""
    return [c for c in k_configs(policy, d, base) if (c.n_hi or c.qjl_hi or c.qjl_lo) and c.lo_bits in lo_bits]


class _LayerSearch:
    """The measured options of one layer, filled in two passes.

    Pass 1: K→Q smoothing and V centering are decided on a probe config (the
    policy's median bits), then every uniform K width and every V width is
    measured. Pass 2, once a budget allocation over uniform widths has put layer
    l at b_l bits: outlier splits with lo bits b_l − 1 and b_l (the ones that
    can beat uniform near that cost). Options far from any layer's operating
    point are never measured: about 20 proxy evaluations per layer instead of 37."""

    def __init__(self, cal: Calibration, pol: Policy, l: int, scales: np.ndarray, order: np.ndarray,
                 v_cfgs: list[tq.KConfig]):
        self.cal, self.pol, self.l, self.scales, self.order, self.v_cfgs = cal, pol, l, scales, order, v_cfgs
        self.k_base: int | None = None  # this layer's 8-bit scale grids (pol.scale8), set in pass 1
        self.kb_base: int | None = None  # ... of K in its calibrated basis (pol.k_basis)
        self.basis: np.ndarray | None = None  # (Hk, d, d) the layer's K basis (pol.k_basis), set in pass 1
        self.v_base: int | None = None
        self.smooth = False
        self.opts: list[Option] = []
        self.errs: dict[str, float] = {}
        self.verrs: dict[str, float] = {}

    def _layer(self) -> _Layer:
        # built again for pass 2 rather than kept from pass 1: ~0.15 s per layer against ~15 MB per layer
        # held for the whole search (a 7B's 28 layers would hold ~0.4 GB)
        lay = _Layer(self.cal, self.l, self.scales, self.order, self.pol.sink_tokens, self.pol.recent)
        lay.basis = self.basis
        return lay

    def pass1(self) -> None:
        pol, d, lay = self.pol, self.cal.head_dim, self._layer()
        probe = tq.KConfig(d=d, lo_bits=sorted(pol.k_bits)[len(pol.k_bits) // 2])
        if pol.smoothing:  # smoothing on for the layer if it lowers the error of the probe config
            for sm in (True, False):
                self.errs[_label(Option(probe, sm))] = lay.k_error(Option(probe, sm))
            self.smooth = self.errs[_label(Option(probe, True))] < self.errs[_label(Option(probe))]
        if pol.scale8:
            self.k_base = norm_base(lay._keys(self.smooth, True)[1])
        if pol.k_basis:  # fitted on what the cache sees once smoothing is decided, spread over a long context
            q, k = lay.fit_sample(self.smooth, pol.k_basis_block or kbasis.FIT_CTX)
            self.basis = lay.basis = np.stack([kbasis.fit_basis(q[h], k[h]) for h in range(self.cal.n_head_kv)])
            if pol.scale8:  # A is not orthogonal: a key's norm in the basis depends on its position too
                spread = np.concatenate([kbasis.apply(k[h], self.basis[h]) for h in range(self.cal.n_head_kv)])
                self.kb_base = max(norm_base(lay._keys(self.smooth, True, True)[1]), norm_base(spread))
        uniform = [tq.KConfig(d=d, lo_bits=b, hi_bits=b) for b in pol.k_bits]
        self._measure(lay, _with_base(uniform, self.k_base))
        if pol.k_basis:
            self._measure(lay, _with_base(uniform, self.kb_base), basis=True)
        if self.v_cfgs:
            vprobe = self.v_cfgs[len(self.v_cfgs) // 2]
            for ctr in (True, False):
                self.verrs[_v_label(vprobe, ctr)] = lay.v_error(vprobe, ctr)
            center = self.verrs[_v_label(vprobe, True)] <= self.verrs[_v_label(vprobe, False)]
            if pol.scale8:
                self.v_base = norm_base(lay.v - self.cal.v_mean[self.l] if center else lay.v)
                self.v_cfgs = _with_base(self.v_cfgs, self.v_base)
            for cfg in self.v_cfgs:
                if _v_label(cfg, center) not in self.verrs:
                    self.verrs[_v_label(cfg, center)] = lay.v_error(cfg, center)

    def pass2(self, uniform_bits: int) -> None:
        lo = tuple(b for b in (uniform_bits - 1, uniform_bits) if b >= 1)
        cfgs = split_configs(self.pol, self.cal.head_dim, lo, self.k_base)
        if cfgs:
            lay = self._layer()
            self._measure(lay, cfgs)
            if self.pol.k_basis:
                self._measure(lay, split_configs(self.pol, self.cal.head_dim, lo, self.kb_base), basis=True)

    def _measure(self, lay: _Layer, cfgs: list[tq.KConfig], basis: bool = False) -> None:
        for c in cfgs:
            o = Option(c, self.smooth, basis=basis)
            if _label(o) not in self.errs:
                self.errs[_label(o)] = lay.k_error(o)
            if o not in self.opts:
                self.opts.append(o)


def _workers(n_threads: int) -> int:
    return n_threads if n_threads > 0 else (os.cpu_count() or 1)


def _v_label(cfg: tq.KConfig, center: bool) -> str:
    return cfg.spec() + ("+center" if center else "")


def search(calib: Calibration | str | os.PathLike, *, policy: str | Policy = DEFAULT_POLICY,
           k_budget: float | None = None, v_budget: float | None = None, eval_text: str | None = None,
           check: bool = True, model: str | os.PathLike | None = None, n_chunks: int | None = None,
           n_threads: int = 0, progress: ProgressFn | None = None, cancel: threading.Event | None = None,
           sensitivity_tokens: list[int] | None = None) -> SearchResult:
    """Choose per-layer K/V configs for a calibration under the policy's budgets.

    check: convert the model (``model``, default the calibrated one) with the
    profile and measure it on ``eval_text`` (default: the calibration's held-out
    chunks) against the f16-cache run; the numbers go to profile.measured."""
    cal = calib if isinstance(calib, Calibration) else Calibration.load(calib)
    pol = resolve_policy(policy, k_budget, v_budget)
    if check and eval_text is None and len(cal.holdout) == 0:  # refuse before the long part
        raise InputError(f"{cal.path or 'the calibration'} has no held-out chunks to check the profile on; "
                         "give a check text (--text FILE or --austen eval) or skip the check (--no-check)")
    L, d = cal.n_layer, cal.head_dim
    check_budgets(pol, d, budget_ctx(pol, cal))
    scales = smoothing_scales(cal)
    order = pair_order(cal, scales if pol.smoothing else None)
    v_cfgs = [tq.KConfig(d=d, lo_bits=b, hi_bits=b) for b in pol.v_bits] if pol.v_budget is not None else []
    layers = [_LayerSearch(cal, pol, l, scales, order, v_cfgs) for l in range(L)]
    start_phase(progress, "search", "layer")
    done = [0.0]

    def run(passes, what: str) -> None:
        """Run the layers' passes on a thread pool (numpy and the C kernels release the GIL; BLAS
        on one thread, as the pool is the parallelism: base/blas.py)."""
        pool = ThreadPoolExecutor(max_workers=_workers(n_threads))
        try:
            with one_blas_thread():
                for f in as_completed([pool.submit(fn) for fn in passes]):
                    f.result()
                    check_cancel(cancel)
                    done[0] += 0.5
                    if progress:
                        progress(done[0], L, what)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on an error or a cancel: drop the queued layers

    run([ls.pass1 for ls in layers], "pass 1: uniform widths, V")
    s8 = Scale8Bases(tuple(ls.k_base for ls in layers), tuple(ls.v_base for ls in layers)) if pol.scale8 else None
    sens = measure_layer_sensitivity(cal, scales, order, sink_tokens=pol.sink_tokens, recent=pol.recent,
                                     tokens=sensitivity_tokens,
                                     n_threads=n_threads, progress=progress, cancel=cancel) if pol.sensitivity else None
    if sens is not None:  # back to the search's phase for pass 2
        start_phase(progress, "search", "layer")
    v_opts = list(dict.fromkeys((c, ctr) for ls in layers for c in ls.v_cfgs for ctr in (False, True)))
    uniform = rebudget(SearchResult(None, k_errors=[ls.errs for ls in layers],  # type: ignore[arg-type]
                                    v_errors=[ls.verrs for ls in layers], policy=pol,
                                    k_options=[ls.opts for ls in layers], v_options=v_opts, scales=scales,
                                    order=order, sensitivity=sens, scale8=s8,
                                    k_bases=[ls.basis for ls in layers]), cal)
    bits = [c.lo_bits for c in uniform.profile.k_configs() or []]
    run([lambda ls=ls, b=b: ls.pass2(b) for ls, b in zip(layers, bits)], "pass 2: outlier splits")
    k_opts, k_err, v_err = [ls.opts for ls in layers], [ls.errs for ls in layers], [ls.verrs for ls in layers]
    result = SearchResult(None, k_errors=k_err, v_errors=v_err, policy=pol,  # type: ignore[arg-type]
                          k_options=k_opts, v_options=v_opts, scales=scales, order=order, sensitivity=sens,
                          scale8=s8, k_bases=[ls.basis for ls in layers])
    result = rebudget(result, cal)
    if check:
        measure(result.profile, model or cal.model, cal, eval_text=eval_text, n_chunks=n_chunks,
                n_threads=n_threads, progress=progress, cancel=cancel)
        best = result.candidates[0]
        m = result.profile.measured
        best.kld, best.ppl, best.top1 = m.get("kld"), m.get("ppl"), m.get("top1")
    return result


def budget_ctx(pol: Policy, cal: Calibration) -> int:
    """The context the policy's budgets are stated at: its own, else the calibration's."""
    return pol.budget_ctx or cal.n_ctx


def exact_bits(pol: Policy, n_ctx: int) -> float:
    """Bits per value of a TurboQuant cache's exact rows (sinks, recent window) at n_ctx tokens."""
    return kvmeta.exact_bits(pol.sink_tokens, pol.recent, n_ctx)


def check_budgets(pol: Policy, d: int, n_ctx: int) -> None:
    """Refuse budgets below the cheapest candidate config (uniform at the fewest bits), before measuring."""
    sink = exact_bits(pol, n_ctx)
    for kind, budget, bits in (("K", pol.k_budget, pol.k_bits), ("V", pol.v_budget, pol.v_bits)):
        if budget is None:
            continue
        least = tq.KConfig(d=d, lo_bits=min(bits), hi_bits=min(bits),
                           scale_base=0 if pol.scale8 else None).bits_per_value() + sink
        if not budget >= least - 1e-9:
            raise InputError(f"a {kind} budget of {budget:g} bits per value is below the minimum {least:.3f} of the "
                             f"candidate configs ({min(bits)}-bit codes, scales and the exact rows at {n_ctx} tokens); "
                             "raise the budget or allow fewer bits (policy k_bits/v_bits)")


def rebudget(result: SearchResult, cal: Calibration, k_budget: float | None = None,
             v_budget: float | None = None) -> SearchResult:
    """The allocation of ``result``'s measured errors under new budgets (None: the policy's),
    without measuring anything again: cheap. Returns a new SearchResult."""
    pol = resolve_policy(result.policy, k_budget, v_budget)  # type: ignore[arg-type]
    L = cal.n_layer
    sink = exact_bits(pol, budget_ctx(pol, cal))  # the f16 sinks and recent rows are part of the budget
    k_opts, k_err = result.k_options, result.k_errors
    sens = result.sensitivity
    if pol.sensitivity and sens is None:
        raise InputError(f"policy {pol.name!r} weights the proxy by measured sensitivities: this search "
                         "result has none (search again with the policy)")
    kw, vw = (sens.k, sens.v) if sens is not None else ((1.0,) * L, (1.0,) * L)
    k_costs = [[o.bits + sink for o in opts] for opts in k_opts]
    k_errs = [[w * e[_label(o)] for o in opts] for w, e, opts in zip(kw, k_err, k_opts)]
    v_choice: list[tuple[tq.KConfig, bool]] = []
    if pol.v_budget is not None and result.v_options:
        per_layer = [[(c, ctr) for c, ctr in result.v_options if _v_label(c, ctr) in e] for e in result.v_errors]
        v_costs = [[c.bits_per_value() + sink for c, _ in opts] for opts in per_layer]
        v_errs = [[w * e[_v_label(c, ctr)] for c, ctr in opts] for w, e, opts in zip(vw, result.v_errors, per_layer)]
        if pol.joint:  # one budget: mean over K and V layers ≤ the mean of the two budgets
            picks = allocate(k_costs + v_costs, k_errs + v_errs, (pol.k_budget + pol.v_budget) / 2)
            k_pick, v_pick = picks[:L], picks[L:]
        else:
            k_pick, v_pick = allocate(k_costs, k_errs, pol.k_budget), allocate(v_costs, v_errs, pol.v_budget)
        v_choice = [opts[i] for opts, i in zip(per_layer, v_pick)]
    else:
        k_pick = allocate(k_costs, k_errs, pol.k_budget)
    k_choice = [opts[i] for opts, i in zip(k_opts, k_pick)]
    assert L == len(k_choice)
    prof = _profile(cal, pol, k_choice, v_choice, result.scales, result.order, result.k_bases)
    if sens is not None:
        prof.provenance["sensitivity"] = sens.to_json()
    out = replace(result, profile=prof, policy=pol)
    out.candidates = _uniform_candidates(cal, pol, k_err, k_choice, prof)
    return out


def _profile(cal: Calibration, pol: Policy, k_choice: list[Option], v_choice, scales, order,
             k_bases: list[np.ndarray | None] | None = None) -> Profile:
    L, Hk, d = cal.n_layer, cal.n_head_kv, cal.head_dim
    s = np.where(np.asarray([o.smooth for o in k_choice])[:, None, None], scales, 1.0)
    mean = cal.k_mean / np.concatenate([s, s], -1)
    v_mean = None
    if v_choice and any(ctr for _, ctr in v_choice):
        v_mean = np.where(np.asarray([ctr for _, ctr in v_choice])[:, None, None], cal.v_mean, 0.0)
    tr = Transforms(k_mean=mean.astype(np.float32), k_scale=s.astype(np.float32), pair_order=order.astype(np.int32),
                    v_mean=None if v_mean is None else v_mean.astype(np.float32))
    if any(o.basis for o in k_choice):  # identity on the layers that chose their plain channels
        tr.k_basis = np.stack([k_bases[l] if o.basis else kbasis.identity(1, Hk, d)[0] for l, o in enumerate(k_choice)])
        tr.k_basis_block = pol.k_basis_block
    shape = ModelShape(Path(cal.model).name, cal.arch, L, cal.n_head, Hk, d)
    # the policy's scale rules and codes are not in the proxies: written onto the chosen configs
    k_layers = [replace(o.cfg, scale=pol.k_scale_mode).with_codes(pol.codes).spec() for o in k_choice]
    v_layers = [replace(c, scale=pol.v_scale_mode).with_codes(pol.codes).spec() for c, _ in v_choice]
    prof = Profile(name=f"{shape.name.removesuffix('.gguf')}-{pol.name}", model=shape, k_type=TQ,
                   v_type=TQ if v_choice else "f16", k_layers=k_layers, v_layers=v_layers, transforms=tr,
                   policy=pol.name,
                   provenance={"model": cal.model, "fingerprint": cal.fingerprint, "text": cal.text_source,
                               "text_sha256": cal.text_sha256, "tokens": cal.n_tokens, "n_ctx": cal.n_ctx,
                               "calibration": str(cal.path) if cal.path else None},
                   sink_tokens=pol.sink_tokens, recent=pol.recent)
    kb, vb = prof.bits(budget_ctx(pol, cal))
    prof.measured = {"k_bpv": round(kb, 4), "v_bpv": round(vb, 4), "bpv_n_ctx": budget_ctx(pol, cal)}
    return prof


def _uniform_candidates(cal, pol, k_err, k_choice: list[Option], prof: Profile) -> list[Candidate]:
    """The chosen profile first, then uniform K configs for comparison (proxy errors summed over layers)."""
    kb, vb = prof.bits(budget_ctx(pol, cal))
    rows = [Candidate(prof.name, kb, vb, sum(e[_label(o)] for e, o in zip(k_err, k_choice)))]
    for b in pol.k_bits:
        cfg = tq.KConfig(d=cal.head_dim, lo_bits=b, hi_bits=b)
        err = sum(e.get(_label(Option(cfg)), e.get(_label(Option(cfg, True)), np.nan)) for e in k_err)
        rows.append(Candidate(f"uniform tq{b} K", cfg.bits_per_value() + exact_bits(pol, budget_ctx(pol, cal)), vb,
                              err))
    return rows


def measure(prof: Profile, model: str | os.PathLike, cal: Calibration | None = None, *, eval_text: str | None = None,
            n_ctx: int | None = None, n_chunks: int | None = None, n_threads: int = 0,
            progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> dict:
    """Convert ``model`` with ``prof`` to a temporary f16 GGUF and check it (check.check_file) on
    ``eval_text`` or the calibration's held-out chunks; fills prof.measured and returns it.
    (`kvconvert convert` checks the file it writes instead.)"""
    from .check import check_file, holdout_tokens
    from .writer import convert

    if eval_text is None and (cal is None or len(cal.holdout) == 0):
        raise InputError("no held-out text to check the profile on; give a check text (--text FILE)")
    n_ctx = n_ctx or (cal.n_ctx if cal else 512)
    with tempfile.TemporaryDirectory(prefix="kvconvert-check-") as tmp:
        out = Path(tmp) / "check.gguf"
        convert(model, out, weights="f16", profile=prof, cancel=cancel)
        kw = dict(text=eval_text) if eval_text is not None else \
            dict(token_ids=holdout_tokens(cal), text_name="calibration held-out chunks")
        res = check_file(out, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=n_threads, weights="f16",
                         progress=progress, cancel=cancel, **kw)
    prof.measured.update({k: v for k, v in res.to_dict().items() if k not in ("max_kld", "passed")})
    return prof.measured
