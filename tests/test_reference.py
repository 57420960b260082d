"""The numpy reference model against an independent oracle (HF transformers)
and against itself under the other RoPE pairing."""

from __future__ import annotations

import numpy as np
import pytest

from kvconvert.models.arch.base import deinterleave_pairs, interleave_pairs
from kvconvert.models.source import load_model
from kvconvert.models.reference import forward
from kvconvert.models.rope import apply_rope, base_inv_freq

TOKENS = [5, 17, 250, 3, 99, 42, 7, 300, 11, 12, 13, 200, 64, 1, 2, 77, 123, 8, 9, 10]


def test_pair_order_round_trip():
    w = np.random.default_rng(0).standard_normal((3 * 8, 5))
    inter = interleave_pairs(w, 3)
    assert np.array_equal(deinterleave_pairs(inter, 3), w)
    # head 1, pair 2 = rows (8+2, 8+6) in HF order -> rows (8+4, 8+5) interleaved
    assert np.array_equal(inter[8 + 4], w[8 + 2]) and np.array_equal(inter[8 + 5], w[8 + 6])


def test_rope_pairings_agree():
    """Rotating interleaved-order channels == rotating HF-order channels, then permuting."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 3, 16))
    f = base_inv_freq(16, 10000.0)
    pos = np.arange(7) + 5
    neox = apply_rope(x, pos, f, "neox")
    perm = interleave_pairs(np.eye(16), 1)  # row i of perm picks HF channel
    inter = apply_rope(x @ perm.T, pos, f, "interleaved")
    np.testing.assert_allclose(inter, neox @ perm.T, atol=1e-12)
    # rotation preserves norms per pair
    np.testing.assert_allclose(np.linalg.norm(neox, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)


def test_interleaved_weights_give_same_logits(tiny_models):
    """Reference on llama GGUF-order weights with interleaved RoPE == HF order with neox."""
    m = load_model(tiny_models["llama-hd64-tied"])
    weights, pairing = m.file_order()
    assert pairing == "interleaved"
    k = m.weights.get("model.layers.0.self_attn.k_proj.weight")
    assert np.array_equal(weights.get("model.layers.0.self_attn.k_proj.weight"), interleave_pairs(k, 2))
    hf = forward(m.args, m.weights, TOKENS, dtype=np.float64)
    gg = forward(m.args, weights, TOKENS, pairing=pairing, dtype=np.float64)
    np.testing.assert_allclose(gg, hf, rtol=1e-9, atol=1e-9)


def test_reference_matches_transformers(tiny_model):
    """Independent oracle: HF transformers (torch, CPU, float32) on the same checkpoint.

    Tolerance: max |Δlogit| <= 1e-4 * max |logit| (float32 accumulation-order noise).
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        want = model(torch.tensor([TOKENS])).logits[0].numpy()
    m = load_model(tiny_model)
    got = forward(m.args, m.weights, TOKENS)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * scale, np.abs(got - want).max() / scale
    # and the comparison is not vacuous: a different token sequence changes the logits
    other = forward(m.args, m.weights, TOKENS[::-1])
    assert np.abs(other[-1] - want[-1]).max() > 1e-2 * scale
