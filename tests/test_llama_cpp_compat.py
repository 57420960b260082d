"""Files written by kvconvert load unchanged in llama.cpp and compute what the
reference model computes (llama.cpp's own kernels as the independent oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from kvconvert import convert
from kvconvert.models.source import load_model
from kvconvert.models.reference import forward
from tests import oracle_llama_cpp as oracle

TOKENS = [5, 17, 250, 3, 99, 42, 7, 300, 11, 12, 13, 200, 64, 1, 2, 77, 123, 8, 9, 10]


@pytest.mark.parametrize("weights,tol", [("f32", 2e-3), ("q8_0", 3e-2)])
def test_llama_cpp_logits_match_reference(tiny_model, tmp_path, weights, tol):
    """max |Δlogit| / max |logit| <= tol: f32 bounds llama.cpp's own op order and
    f16 intermediates; q8_0 adds its int8 activation quantization."""
    out = tmp_path / "m.gguf"
    convert(tiny_model, out, weights=weights)
    m = load_model(out)
    tokens = TOKENS
    if m.args.model_type == "mistral":  # llama.cpp runs arch llama unwindowed: compare where the window is moot
        tokens = TOKENS[:m.args.sliding_window]
    want = forward(m.args, m.weights, tokens)
    got = oracle.logits(oracle.load(out, n_ctx=64), tokens)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= tol, err
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
