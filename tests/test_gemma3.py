"""Gemma 3 270M (base, Q4_K_M; the gemma-3-270m fixture, ../shared/DATA.md) end to end
(issue 18.1): SentencePiece tokenizer, import-gguf, the numpy reference against
transformers, the native runtime against llama.cpp. Text: Austen evaluation part."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kvconvert import import_gguf
from kvconvert.testdata import fixtures
from kvconvert.runtime import metrics
from kvconvert.runtime.engine import Model
from kvconvert.models.source import load_model
from kvconvert.models.reference import forward
from tests import oracle_llama_cpp as oracle

pytestmark = pytest.mark.slow


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def gemma():
    return fixtures.gemma3_gguf()


def test_gemma3_tokenizer_matches_llama_cpp(gemma):
    """Token ids of the whole Austen eval text (272,698 tokens) identical to llama.cpp's."""
    text = fixtures.austen_text("eval")
    ours = Model(gemma).tokenize(text, add_bos=False)
    theirs = oracle.tokenize(oracle.load(gemma, n_ctx=64, vocab_only=True), text)
    assert len(ours) > 270_000 and list(ours) == list(theirs)


def test_gemma3_import_reference_and_transformers(gemma, tmp_path):
    """import-gguf (f32) → config.json, tokenizer.json, safetensors that transformers loads; on 600
    tokens (past the 512-token window of the local layers) the reference computes transformers'
    logits (‖Δ‖/‖logits‖ ≤ 1e-4), and not without the window; the runtime on the Q4_K_M file (its
    8-bit activations) stays within 8% of the reference on the dequantized weights (measured 4.8%)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = tmp_path / "hf"
    import_gguf(gemma, hf, dtype="f32")
    text = fixtures.austen_text("eval")[:4000]
    m = Model(gemma)
    ids = m.tokenize(text)[:600]
    assert transformers.AutoTokenizer.from_pretrained(hf)(text)["input_ids"][:600] == ids
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    src = load_model(hf)
    got = forward(src.args, src.weights, ids)
    assert rel(got, want) <= 1e-4, rel(got, want)
    unwindowed = forward(dataclasses.replace(src.args, sliding_window=0), src.weights, ids)
    assert rel(unwindowed[512:], want[512:]) > 1e-2  # the window matters past 512 tokens
    rt = m.context(n_ctx=1024, type_k="f32", type_v="f32", n_threads=2).eval(ids, all_logits=True)
    assert rel(rt, got) <= 0.08, rel(rt, got)


def test_gemma3_runtime_matches_llama_cpp(gemma):
    """Same file, same token chunks (2 × 1024: the local layers' window is exercised): perplexity
    within 1% of llama.cpp's and KLD(llama.cpp ‖ kvconvert) ≤ 0.02 (measured 19.802 vs 19.872,
    KLD 0.0062 — both engines round activations to 8 bits)."""
    m = Model(gemma)
    n_ctx = 1024
    text = fixtures.austen_text("eval")[: 6 * n_ctx * 2]
    chunks = metrics.chunks(m.tokenize(text, add_bos=False), n_ctx, 2, bos=m.source.tokenizer_spec().bos_id)
    ctx = m.context(n_ctx=n_ctx, type_k="f16", type_v="f16", n_threads=2)
    llm = oracle.load(gemma, n_ctx=n_ctx)
    ours, theirs, kld = [], [], []
    first = metrics.first_scored(n_ctx)
    for c in chunks:
        ctx.reset()
        a, b = ctx.eval(c, all_logits=True), oracle.logits(llm, c)
        ours.append(metrics.chunk_nll(a, c))
        theirs.append(metrics.chunk_nll(b, c))
        la = a[first:-1].astype(np.float64)
        lb = b[first:-1].astype(np.float64)
        la -= np.logaddexp.reduce(la, axis=-1, keepdims=True)
        lb -= np.logaddexp.reduce(lb, axis=-1, keepdims=True)
        kld.append((np.exp(lb) * (lb - la)).sum(-1))
    p_ours = metrics.score(np.concatenate(ours)).ppl
    p_theirs = metrics.score(np.concatenate(theirs)).ppl
    assert abs(p_ours / p_theirs - 1) <= 0.01, (p_ours, p_theirs)
    assert np.concatenate(kld).mean() <= 0.02


def test_gemma3_import_convert_back_runs_in_llama_cpp(gemma, tmp_path):
    """import-gguf (f32) → convert (f16) → a GGUF with the same tokenizer that llama.cpp runs: PPL on
    2 × 512 tokens within 1% of the original Q4_K_M's (measured 17.935 vs 18.051), and kvconvert's
    runtime on it within 0.5% of llama.cpp's (measured equal)."""
    from kvconvert import convert

    hf, back = tmp_path / "hf", tmp_path / "back.gguf"
    import_gguf(gemma, hf, dtype="f32")
    convert(hf, back, weights="f16")
    text = fixtures.austen_text("eval")
    m0, m1 = Model(gemma), Model(back)
    assert m1.tokenize(text[:50_000]) == m0.tokenize(text[:50_000])
    chunks = metrics.chunks(m0.tokenize(text[: 6 * 512 * 2], add_bos=False), 512, 2,
                            bos=m0.source.tokenizer_spec().bos_id)

    def ppl(logits_of) -> float:
        return metrics.score(np.concatenate([metrics.chunk_nll(logits_of(c), c) for c in chunks])).ppl

    cpp0, cpp1 = oracle.load(gemma, n_ctx=512), oracle.load(back, n_ctx=512)
    p0, p1 = ppl(lambda c: oracle.logits(cpp0, c)), ppl(lambda c: oracle.logits(cpp1, c))
    assert abs(p1 / p0 - 1) <= 0.01, (p0, p1)
    ctx = m1.context(n_ctx=512, type_k="f16", type_v="f16", n_threads=2)

    def ours(c):
        ctx.reset()
        return ctx.eval(c, all_logits=True)

    assert abs(ppl(ours) / p1 - 1) <= 0.005
