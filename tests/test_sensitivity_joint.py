"""Issue 19: sensitivity-weighted proxy errors and one budget shared by K and V.

The weights turn each layer's proxy error into an estimate of end-to-end KLD
(sensitivity.py); with them, a joint allocation spends bits where the logits
care — on V when V's weights dominate, on K when K's do — and keeps the mean
of the K and V bits per value within the mean of the two budgets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from kvconvert.base.errors import InputError
from kvconvert.conversion.calibrate import calibrate
from kvconvert.conversion.profile import Policy, load_profile
from kvconvert.conversion.search import rebudget, search
from kvconvert.conversion.sensitivity import FLOOR, Sensitivity, weights
from tests.tiny import CORPUS

TEXT = " ".join(CORPUS) * 30


@pytest.fixture(scope="module")
def cal(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "c.npz"
    return calibrate(tiny_models["qwen2-hd64"], text=TEXT, tokens=256, n_ctx=64, n_windows=2, holdout=1, out=out)


def _sens(k, v) -> Sensitivity:
    return Sensitivity(tuple(k), tuple(v), tuple(k), tuple(v), 3, 64)


def test_weights_are_ratios_with_a_floor():
    w = weights(np.array([0.02, -0.001, 0.06, 0.0]), np.array([1.0, 1.0, 2.0, 4.0]))
    med = np.median([0.02, 0.0, 0.03, 0.0])
    np.testing.assert_allclose(w, [0.02, FLOOR * med, 0.03, FLOOR * med])
    with pytest.raises(ValueError):
        weights(np.array([0.1]), np.array([0.0]))


def test_joint_needs_sensitivity_and_v_budget():
    pol = load_profile("balanced")
    assert isinstance(pol, Policy)
    with pytest.raises(InputError, match="joint"):
        replace(pol, joint=True)
    with pytest.raises(InputError, match="joint"):
        replace(pol, joint=True, sensitivity=True, v_budget=None)
    got = Policy.from_json({**pol.to_json(), "sensitivity": True, "joint": True})
    assert got.joint and got.sensitivity


def test_joint_allocation_follows_the_weights(cal):
    """One budget for K and V: V gets the bits when its weights are 100× K's, K when K's are,
    and the mean of K and V bits per value stays within the mean budget."""
    res = search(cal, policy="balanced", check=False)
    pol = replace(res.policy, sensitivity=True, joint=True, k_budget=4.0, v_budget=4.0)
    L = cal.n_layer
    res = replace(res, policy=pol)
    bits = {}
    for name, k, v in (("v", [1.0] * L, [100.0] * L), ("k", [100.0] * L, [1.0] * L)):
        out = rebudget(replace(res, sensitivity=_sens(k, v)), cal)
        kb, vb = out.profile.budget_bits()
        assert (kb + vb) / 2 <= 4.0 + 1e-9
        bits[name] = (kb, vb)
    assert bits["v"][1] > bits["v"][0] + 0.5  # V-heavy weights: V above K
    assert bits["k"][0] > bits["k"][1] + 0.5
    # the separate allocation with the same weights keeps each within its own budget
    sep = rebudget(replace(res, policy=replace(pol, joint=False), sensitivity=_sens([1.0] * L, [100.0] * L)), cal)
    kb, vb = sep.profile.budget_bits()
    assert kb <= 4.0 + 1e-9 and vb <= 4.0 + 1e-9


def test_weighted_allocation_moves_k_bits_to_the_sensitive_layer(cal):
    res = search(cal, policy="balanced", check=False)
    L = cal.n_layer
    pol = replace(res.policy, sensitivity=True)
    plain = rebudget(replace(res, policy=pol, sensitivity=_sens([1.0] * L, [1.0] * L)), cal)
    for hot in range(L):
        w = [1.0] * L
        w[hot] = 1e4
        out = rebudget(replace(res, policy=pol, sensitivity=_sens(w, [1.0] * L)), cal)
        b = [c.bits_per_value() for c in out.profile.k_configs()]
        b0 = [c.bits_per_value() for c in plain.profile.k_configs()]
        assert b[hot] >= b0[hot] and b[hot] == max(b)


def test_rebudget_refuses_a_sensitivity_policy_without_weights(cal):
    res = search(cal, policy="balanced", check=False)
    with pytest.raises(InputError, match="sensitivit"):
        rebudget(replace(res, policy=replace(res.policy, sensitivity=True)), cal)


def test_measure_sensitivity_and_search_with_it(cal):
    """The measurement runs the model 2·L + 3 times; weights are positive, one per layer, and a
    search with a joint policy uses them (and keeps the joint budget)."""
    from kvconvert.conversion.search import measure_layer_sensitivity, pair_order, smoothing_scales

    sc = smoothing_scales(cal)
    s = measure_layer_sensitivity(cal, sc, pair_order(cal, sc), sink_tokens=1)
    assert len(s.k) == len(s.v) == cal.n_layer
    assert all(x > 0 and np.isfinite(x) for x in s.k + s.v)
    assert any(x > 0 for x in s.k_kld) and any(x > 0 for x in s.v_kld)  # quantizing a layer to 3 bits shows
    pol = replace(load_profile("balanced"), sensitivity=True, joint=True, k_budget=4.0, v_budget=4.0)
    res = search(cal, policy=pol, check=False)
    assert res.sensitivity is not None
    kb, vb = res.profile.budget_bits()
    assert (kb + vb) / 2 <= 4.0 + 1e-9
