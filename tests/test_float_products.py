"""Float products (ContextParams.float_products, kvc.h): a quantized-weight model's products with
unrounded activations — quantized rows expanded to float, then the float GEMM.

  * Oracle: the same file re-encoded with f32 weights (the writer dequantizes them; an independent
    path through gguf-py). With float products the quantized file computes that file's logits:
    the same float GEMM on the same float rows, so bit for bit (asserted: max |Δ| <= 1e-6 of the
    largest logit; measured 0 on every type below and on SmolLM2-135M Q4_1).
  * Without them the runtime rounds activations to the weights' 8-bit dot type: the logits differ
    (asserted > 1e-4 of the largest logit, so the flag is seen to act).
  * The reason it exists, on the real SmolLM2 Q4_1 file: with rounded activations even an exact
    f32 cache is at KLD ~0.004 from an f16 cache (any change re-rounds later layers); with float
    products they agree to < 1e-5.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

from tests import ggufmix

runtime = pytest.importorskip("kvconvert.runtime.engine")
pytest.importorskip("kvconvert._kvc", reason="native runtime not built (pip install -e .)")
from kvconvert import convert  # noqa: E402
from kvconvert.runtime._native import NativeError  # noqa: E402

TOKENS = [5, 17, 250, 3, 99, 42, 7, 300, 11, 12, 13, 200, 64, 1, 2, 77, 123, 8, 9, 10, 31, 32, 33, 34]


def logits(path, **kw):
    ctx = runtime.Model(path).context(n_ctx=64, n_batch=16, type_k="f32", type_v="f32", n_threads=2, **kw)
    return np.concatenate([ctx.eval(TOKENS[:10], all_logits=True), ctx.eval(TOKENS[10:], all_logits=True)])


CASES = [(n, w) for n in ("qwen2-hd64", "llama-hd64-tied") for w in ("Q8_0", "Q4_1", "Q5_0")] + \
    [("qwen2-hd64", "Q4_K"), ("qwen2-hd64", "Q6_K")]  # K-quants need rows of 256


@pytest.mark.parametrize("name,wtype", CASES)
def test_float_products_equal_the_dequantized_file(tiny_ggufs, tmp_path, name, wtype):
    q = tmp_path / f"{wtype}.gguf"
    ggufmix.rewrite(tiny_ggufs[name], q, {"weight": gguf.GGMLQuantizationType[wtype]})
    f32 = convert(q, tmp_path / "f32.gguf", weights="f32").output
    assert runtime.Model(q).quantized_weights and not runtime.Model(f32).quantized_weights
    want = logits(f32)
    got = logits(q, float_products=True)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-6 * scale
    assert np.abs(logits(q) - want).max() > 1e-4 * scale  # rounded activations: another computation


def test_eval_multi_refuses_mixed_products(tiny_ggufs, tmp_path):
    q = tmp_path / "q8.gguf"
    ggufmix.rewrite(tiny_ggufs["qwen2-hd64"], q, {"weight": gguf.GGMLQuantizationType.Q8_0})
    m = runtime.Model(q)
    a = m.context(n_ctx=16, n_threads=1)
    b = m.context(n_ctx=16, n_threads=1, float_products=True)
    with pytest.raises(NativeError, match="float_products"):
        runtime.eval_multi([a, b], [5, 6])
    assert a.n_past == 0 and b.n_past == 0


def test_eval_cli_float_products(tiny_ggufs, tmp_path, capsys):
    from kvconvert.cli import main

    q = tmp_path / "q4.gguf"
    ggufmix.rewrite(tiny_ggufs["qwen2-hd64"], q, {"weight": gguf.GGMLQuantizationType.Q4_1})
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 40)
    base = tmp_path / "base.logits"
    assert main(["eval", str(q), "--text", str(text), "--ctx", "64", "--chunks", "2", "--ctk", "f16", "--ctv", "f16",
                 "--save-logits", str(base)]) == 0
    capsys.readouterr()
    assert main(["eval", str(q), "--text", str(text), "--ctx", "64", "--chunks", "2", "--kld-base", str(base)]) == 0
    assert "weights are quantized" in " ".join(capsys.readouterr().out.split())  # the note on rounding noise
    assert main(["eval", str(q), "--text", str(text), "--ctx", "64", "--chunks", "2", "--float-products",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["float_products"] and r["quantized_weights"]


def test_real_smollm2_rounding_noise():
    from kvconvert.runtime import metrics
    from kvconvert.testdata import fixtures

    if not fixtures.available("smollm2-135m") or not fixtures.available("austen"):
        pytest.skip("fixture smollm2-135m not fetched (kvconvert fetch all)")
    m = runtime.Model(fixtures.smollm2_gguf())
    toks = m.tokenize(fixtures.austen_text("eval"), add_bos=True)[:512]

    def run(cache, fp):
        ctx = m.context(n_ctx=512, n_batch=512, n_threads=2, type_k=cache, type_v=cache, float_products=fp)
        return ctx.eval(toks, all_logits=True)[256:-1]

    def kld(a, b):
        return float(metrics.kld(metrics.log_probs(a), b).mean())

    assert kld(run("f16", False), run("f32", False)) > 1e-3  # measured 0.0040 (8 chunks), 2026-12-07
    assert kld(run("f16", True), run("f32", True)) < 1e-5  # measured 7e-7
