"""The search's proxy (issue 13's faster search) against its reference twins:
the C TurboQuant round trip equals the numpy twin bit for bit, the KL formula
without a second softmax equals KL computed from two log-softmaxes, the query
sample is bounded whatever the head count, and the two-pass search finds the
same allocation as measuring every candidate when the budget keeps layers near
their uniform widths; held-out tokens of generated text are split by tokens."""

from __future__ import annotations

import numpy as np
import pytest

from kvconvert.kvcache import turboquant as tq
from kvconvert.conversion.calibrate import calibrate, holdout_rows, split_generated
from kvconvert.kvcache.types import DEFAULT_SEED as TQ_SEED
from kvconvert.runtime.engine import tq_roundtrip
from kvconvert.conversion.proxy import _Layer, _log_softmax, _scores, query_rows
from kvconvert.conversion.search import (
    Option,
    _label,
    allocate,
    k_configs,
    pair_order,
    resolve_policy,
    search,
    smoothing_scales,
)
from tests.tiny import CORPUS

TEXT = " ".join(CORPUS) * 30


@pytest.fixture(scope="module")
def cal(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "c.npz"
    return calibrate(tiny_models["qwen2-hd64"], text=TEXT, tokens=256, n_ctx=64, n_windows=2, holdout=1, out=out)


@pytest.mark.parametrize("cfg", [tq.KConfig(d=64, lo_bits=3, hi_bits=3), tq.KConfig(d=64, n_hi=8, hi_bits=6, lo_bits=4),
                                 tq.KConfig(d=64, n_hi=16, hi_bits=5, lo_bits=2),
                                 tq.KConfig(d=128, n_hi=32, hi_bits=8, lo_bits=4)])
def test_c_roundtrip_equals_numpy_twin(cfg):
    rng = np.random.default_rng(cfg.n_hi + cfg.lo_bits)
    x = (rng.standard_normal((3, 40, 2, cfg.d)) * rng.uniform(0.1, 20, (1, 1, 1, cfg.d))).astype(np.float32)
    want = tq.decode(tq.encode(x, cfg, TQ_SEED, 5), cfg, TQ_SEED, 5, qjl=False)
    np.testing.assert_array_equal(tq_roundtrip(x, cfg, TQ_SEED, 5), want)  # same codes, same float32 decode


def kl_long_way(cal, lay, o: Option, w: int = 0) -> float:
    """k_error recomputed from two log-softmaxes (float64), the score errors of each query's last
    w keys zeroed (the recent window), sink position 0 exact."""
    from kvconvert.models.rope import apply_rope

    q, k = lay._keys(o.smooth, True)
    dk = tq.decode(tq.encode(k, o.cfg, TQ_SEED, 1), o.cfg, TQ_SEED, 1).astype(np.float64) - k
    dk[:, :1] = 0
    pos = np.arange(lay.T)
    exact = _scores(lay._heads(lay.q_rot), apply_rope(lay.k_raw, pos, cal.rope_freqs, "neox")) / 8.0
    err = _scores(q.astype(np.float64), dk) / 8.0
    err = np.where(window_mask(lay, w), 0.0, err)
    logp = _log_softmax(np.where(lay.mask, exact, -np.inf))
    logq = _log_softmax(np.where(lay.mask, exact + err, -np.inf))
    lp, lq = np.where(lay.mask, logp, 0), np.where(lay.mask, logq, 0)
    return float((np.exp(logp) * (lp - lq)).sum(-1).mean())


def window_mask(lay, w: int) -> np.ndarray:
    """(rep·nq, T): key j is in the recent window of scored query row i."""
    rows = np.tile(lay.rows, lay.rep)
    return (rows[:, None] - np.arange(lay.T)[None, :] < w) & lay.mask


def test_kl_formula_equals_two_softmaxes(cal):
    """k_error computes KL(p‖q) as log Σ p·exp(e) − Σ p·e; recompute it the long way."""
    sc = smoothing_scales(cal)
    lay = _Layer(cal, 1, sc, pair_order(cal, sc), n_sink=1)
    o = Option(tq.KConfig(d=64, lo_bits=2, hi_bits=2), smooth=True)
    assert lay.k_error(o) == pytest.approx(kl_long_way(cal, lay, o), rel=2e-3)  # float32 scores in k_error


def test_query_sample_is_bounded(cal):
    W, _, T, H, _ = cal.win_q.shape
    sc = smoothing_scales(cal)
    for budget in (1 << 12, 1 << 14, 1 << 30):
        lay = _Layer(cal, 0, sc, pair_order(cal, sc), max_pairs=budget)
        n = len(lay.rows)
        assert n >= 1 and (W * H * n * T <= budget or n == 1)
        assert np.all(lay.rows >= 4) and np.all(np.diff(lay.rows) >= 2)  # from MIN_QUERY on, at most every other
    assert len(query_rows(512, 10**9)) == (512 - 4 + 1) // 2


def test_two_pass_search_matches_exhaustive_allocation(cal):
    """Measure every candidate of k_configs() on every layer, allocate: the two-pass search
    (splits only around each layer's uniform width) picks the same K configs here."""
    from dataclasses import replace

    pol = replace(resolve_policy("balanced", None, None), k_basis=False, k_basis_block=0)  # plain channels only
    res = search(cal, policy=pol, check=False)
    sc = smoothing_scales(cal)
    order = pair_order(cal, sc)
    opts, errs = [], []
    for l in range(cal.n_layer):
        lay = _Layer(cal, l, sc, order, pol.sink_tokens)
        smooth = res.k_options[l][0].smooth
        o = [Option(c, smooth) for c in k_configs(pol, cal.head_dim, res.scale8.k[l])]
        opts.append(o)
        errs.append([lay.k_error(x) for x in o])
    from kvconvert.kvcache.kvmeta import sink_bits
    sink = sink_bits(pol.sink_tokens, cal.n_ctx)
    picks = allocate([[x.bits + sink for x in o] for o in opts], errs, pol.k_budget)
    full = sum(e[i] for e, i in zip(errs, picks))
    two_pass = sum(res.k_errors[l][_label(o)] for l, o in enumerate(  # the proxies measure Lloyd–Max codes
        [Option(tq.KConfig.parse(s, 64).with_codes("lloyd"), opts[l][0].smooth)
         for l, s in enumerate(res.profile.k_layers)]))
    assert two_pass <= full * 1.05  # the pruned search loses at most 5% of the exhaustive proxy optimum
    assert sum(len(e) for e in res.k_errors) < sum(len(o) for o in opts)  # and measured fewer options


def test_generated_sequences_split_by_tokens():
    bos = [1]
    seqs = [[1] + [7] * n for n in (300, 120, 98, 306, 40)]  # unequal lengths, as the model ends them
    cal, held = split_generated(seqs, 2 * 64, bos)
    assert len(held) >= 128 and 1 not in held  # BOS excluded from the held-out stream
    assert len(cal) >= 1 and sum(len(s) for s in cal) + len(held) + len(seqs) - len(cal) == sum(map(len, seqs))
    rows = holdout_rows(held, 64, 2)
    assert rows.shape == (2, 64)
    one, _ = split_generated([[1] + [7] * 500], 10**6, bos)
    assert len(one) == 1  # at least one sequence always stays for calibration


def test_recent_window_masks_exactly_the_window(cal):
    """n_recent = w: a query at r sees keys/values r−w+1..r exactly. Recompute both proxies the
    long way (quantization error zeroed inside each row's window), and check the limits: w = 0 is
    the plain proxy, w ≥ T leaves no error, and a window only lowers the error."""
    sc = smoothing_scales(cal)
    order = pair_order(cal, sc)
    o = Option(tq.KConfig(d=64, lo_bits=2, hi_bits=2), smooth=False)
    plain = _Layer(cal, 1, sc, order, n_sink=1)
    w = 8
    lay = _Layer(cal, 1, sc, order, n_sink=1, n_recent=w)
    assert lay.k_error(o) == pytest.approx(kl_long_way(cal, lay, o, w), rel=2e-3)  # K: the window's errors zeroed
    assert 0 < lay.k_error(o) < plain.k_error(o)
    # V: attention output error with the window's values exact
    mu = cal.v_mean[1].astype(np.float32)
    vc = lay.v - mu
    dv = tq_roundtrip(vc, o.cfg, TQ_SEED, 1) - vc
    dv[:, :1] = 0
    p = lay.p.astype(np.float64) * ~window_mask(lay, w)
    diff = p @ dv.astype(np.float64).transpose(0, 2, 1, 3)
    out = lay.p.astype(np.float64) @ lay.v.astype(np.float64).transpose(0, 2, 1, 3)
    assert lay.v_error(o.cfg, True) == pytest.approx((diff ** 2).sum() / (out ** 2).sum(), rel=1e-3)
    assert 0 < lay.v_error(o.cfg, True) < plain.v_error(o.cfg, True)
    whole = _Layer(cal, 1, sc, order, n_sink=1, n_recent=lay.T)
    assert whole.k_error(o) < 1e-7 and whole.v_error(o.cfg, True) == 0  # K: log Σp of float32 p, ~0
    assert _Layer(cal, 1, sc, order, n_sink=1, n_recent=0).k_error(o) == plain.k_error(o)


def test_search_with_recent_window_counts_it_and_writes_it(cal, tmp_path):
    """A policy's recent window reaches the profile (and its JSON), its f16 rows are counted in
    the budget at the policy's budget context, and the proxy errors drop."""
    from dataclasses import replace
    from kvconvert.conversion.profile import Policy, Profile, load_profile
    from kvconvert.kvcache.kvmeta import recent_bits
    base = replace(resolve_policy("balanced", 4.0, 4.0), recent=0, budget_ctx=None)
    win = replace(base, recent=8, budget_ctx=4096)
    r0, r1 = search(cal, policy=base, check=False), search(cal, policy=win, check=False)
    assert r1.profile.recent == 8 and r0.profile.recent == 0
    kb, vb = r1.profile.budget_bits()
    assert r1.profile.measured["bpv_n_ctx"] == 4096 and kb <= 4.0 + 1e-9 and vb <= 4.0 + 1e-9
    codes_k = np.mean([c.bits_per_value() for c in r1.profile.k_configs()])
    assert kb == pytest.approx(codes_k + recent_bits(8, 4096) + 16 / 4096)
    assert r1.profile.bits(64)[0] == pytest.approx(codes_k + recent_bits(8, 64) + 16 / 64)  # at the calibration context
    same = lambda r: sum(r.k_errors[l][_label(Option(tq.KConfig(d=64, lo_bits=3, hi_bits=3,  # noqa: E731
                                                                scale_base=r.scale8.k[l]),
                                                       r.k_options[l][0].smooth))] for l in range(cal.n_layer))
    assert r0.scale8 == r1.scale8  # the same calibration: the same grids
    assert same(r1) < same(r0)
    p = r1.profile.save(tmp_path / "p.json")
    back = load_profile(p)
    assert isinstance(back, Profile) and back.recent == 8 and back.budget_bits() == pytest.approx((kb, vb))
    pol = Policy.from_json({**win.to_json()}, "pol.json")
    assert pol.recent == 8 and pol.budget_ctx == 4096
    with pytest.raises(Exception, match="recent"):
        Policy.from_json({**win.to_json(), "recent": 1000}, "pol.json")


def test_search_scale8_candidates(cal):
    """8-bit scales (Policy.scale8, the default) add each candidate again with one byte per group
    on a grid per layer and side: its top is 4x..4.1x above the largest norm of what the cache stores,
    both formats are measured, and the allocation over the superset never has a larger proxy error
    than over fp16 scales alone; "scale8": false keeps every layer at fp16."""
    from dataclasses import replace
    from kvconvert.conversion.profile import Policy
    from kvconvert.conversion.search import norm_base

    pol = resolve_policy("long-context", None, None)
    assert pol.scale8 and not Policy.from_json({**pol.to_json(), "scale8": False}, "p.json").scale8
    with8, fp16 = search(cal, policy=pol, check=False), search(cal, policy=replace(pol, scale8=False), check=False)
    assert fp16.scale8 is None and not any("s8=" in s for s in fp16.profile.k_layers + fp16.profile.v_layers)
    b = with8.scale8
    assert len(b.k) == len(b.v) == cal.n_layer
    sc, order = smoothing_scales(cal), pair_order(cal, smoothing_scales(cal))
    for l, e in enumerate(with8.k_errors):
        lay = _Layer(cal, l, sc, order, pol.sink_tokens, pol.recent)
        k = lay._keys(with8.k_options[l][0].smooth, True)[1]  # as the cache stores them: centered (smoothed)
        top = tq.scale8_values(b.k[l])[255]
        assert 4 * np.linalg.norm(k, axis=-1).max() <= top < 4 * np.linalg.norm(k, axis=-1).max() * 2 ** (1 / 32)
        assert b.v[l] in (norm_base(lay.v), norm_base(lay.v - cal.v_mean[l]))
        s8 = [k for k in e if "s8=" in k]  # every measured 8-bit option also in fp16 (the probe is fp16 only)
        assert s8 and all(k.replace(f":s8={b.k[l]}", "").replace(f",s8={b.k[l]}", "") in e for k in s8)
    lloyd = lambda s: tq.KConfig.parse(s, cal.head_dim).with_codes("lloyd").spec()  # noqa: E731 (what was measured)
    err = lambda r: sum(e[lab] for e, lab in zip(r.k_errors, (  # noqa: E731
        f"{lloyd(s)}{'+smooth' if o[0].smooth else ''}" for s, o in zip(r.profile.k_layers, r.k_options))))
    assert err(with8) <= err(fp16) * (1 + 1e-9)
    kb, _ = with8.profile.budget_bits()
    assert kb <= pol.k_budget + 1e-9


def test_basis_fit_sample_is_the_cache_view_at_other_positions(cal):
    """_Layer.fit_sample: the same queries and keys as _keys (centered, smoothed, permuted), only
    rotated to other positions — every RoPE pair's norm per vector is unchanged (pairs sit at
    channels 2j, 2j+1 after the permutation), the positions really differ (n_ctx 1 puts them all at
    0: the pre-RoPE vectors), and the basis fitted on them keeps every score."""
    from kvconvert.kvcache import kbasis

    sc = smoothing_scales(cal)
    lay = _Layer(cal, 1, sc, pair_order(cal, sc), n_sink=1)
    q0, k0 = lay._keys(True, True)
    q, k = lay.fit_sample(True, 4096)
    Hk, d = lay.Hk, lay.d
    pair_norm = lambda x: np.sqrt((x.reshape(*x.shape[:-1], d // 2, 2).astype(np.float64) ** 2).sum(-1))  # noqa: E731
    np.testing.assert_allclose(pair_norm(k), pair_norm(k0.transpose(2, 0, 1, 3).reshape(Hk, -1, d)), rtol=1e-5)
    qh = q0.transpose(1, 0, 2, 3).reshape(Hk, -1, d)  # (Hk, W·rep·nq, d) in the same row order
    assert q.shape == qh.shape
    assert np.abs(k - k0.transpose(2, 0, 1, 3).reshape(Hk, -1, d)).max() > 0.1 * np.abs(k).max()
    _, k1 = lay.fit_sample(True, 1)  # every key at position 0: the pre-RoPE vectors, permuted
    s2 = np.concatenate([sc[1], sc[1]], -1)
    pre = ((lay.k_raw - cal.k_mean[1]) / s2)[..., lay.perm].reshape(-1, Hk, d).transpose(1, 0, 2)
    np.testing.assert_allclose(k1, pre, rtol=1e-5, atol=1e-6 * np.abs(pre).max())
    a = kbasis.fit_basis(q[0], k[0])
    qa, ka = q[0][:20] @ kbasis.query_basis(a), k[0][:20] @ a
    np.testing.assert_allclose(qa @ ka.T, q[0][:20].astype(np.float64) @ k[0][:20].T.astype(np.float64), rtol=1e-6,
                               atol=1e-6 * np.abs(qa @ ka.T).max())
