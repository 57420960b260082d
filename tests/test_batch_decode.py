"""Batched decode of independent sequences (kvc_eval_multi / runtime.eval_multi /
generate.generate_batch) against each sequence decoded alone, its errors, and the
data-free calibration text written with it.

Tolerance: none. The batched products give every row exactly its decode matvec
result: the float types' GEMM tiles equal their vec_dot, and on x86 the integer
types' tiles and AVX-512's packed panels (8+ rows; the 13-context test takes them)
are all bit-identical to the scalar reference (cpu/dot_x86.h, gemm_panel.h; tested
in test_kernels.py); activations are quantized per row and attention runs per context,
so eval_multi's logits equal each context's own single-token kvc_eval exactly. That
is what was measured (max |Δlogit| = 0) on the tiny models in f32, f16, bf16, q8_0,
q4_1, q4_K and q6_K weights, every cache type, and SmolLM2-135M (q4_1); the tests
assert it, and with it that greedy and seeded batched generation give each
sequence exactly its solo tokens.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from tests import ggufmix

runtime = pytest.importorskip("kvconvert.runtime.engine")
pytest.importorskip("kvconvert._kvc", reason="native runtime not built (pip install -e .)")

from kvconvert.runtime._native import NativeError  # noqa: E402
from kvconvert.runtime.generate import BatchDecoder, SamplerParams, generate_batch, generate_tokens  # noqa: E402

TOKENS = [5, 17, 250, 3, 99, 42, 7, 300, 11, 12, 13, 200, 64, 1, 2, 77, 123, 8, 9, 10, 31, 32, 33, 34]
LENS = [3, 7, 12, 1, 9]  # prompt lengths: the contexts decode at different positions


def twins(model, lens, **kw):
    """Two identical sets of contexts, each prefilled with TOKENS[:len]."""
    a = [model.context(**kw) for _ in lens]
    b = [model.context(**kw) for _ in lens]
    for x, y, n in zip(a, b, lens):
        if n:
            x.eval(TOKENS[:n])
            y.eval(TOKENS[:n])
    return a, b


def assert_multi_equals_single(a, b, steps=4):
    for step in range(steps):
        toks = [TOKENS[(c.n_past + 3 * step) % len(TOKENS)] for c in a]
        got = runtime.eval_multi(a, toks)
        want = np.stack([c.eval([t]) for c, t in zip(b, toks)])
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)  # bit-identical: see the module docstring
    assert [c.n_past for c in a] == [c.n_past for c in b]


@pytest.mark.parametrize("ctype", ["f32", "f16", "q8_0", "tq4"])
def test_eval_multi_equals_single_evals(tiny_ggufs, tiny_model, ctype):
    model = runtime.Model(tiny_ggufs[tiny_model.name])
    a, b = twins(model, LENS, n_ctx=48, type_k=ctype, type_v=ctype, n_threads=2)
    assert_multi_equals_single(a, b)


@pytest.mark.parametrize("wtype", ["Q8_0", "Q4_1", "Q4_K"])
def test_eval_multi_quantized_weights(tiny_ggufs, tmp_path, wtype):
    """Quantized weights: activations are quantized per row, so still exact; 13 rows
    (past the 8 where quantization moves to the thread pool, and several GEMM tiles)."""
    path = tmp_path / f"{wtype}.gguf"
    ggufmix.rewrite(tiny_ggufs["qwen2-hd64"], path, {"weight": gguf.GGMLQuantizationType[wtype]})
    model = runtime.Model(path)
    a, b = twins(model, [1 + i for i in range(13)], n_ctx=40, type_k="q8_0", type_v="f16", n_threads=2)
    assert_multi_equals_single(a, b, steps=2)


def test_eval_multi_mixed_contexts(tiny_ggufs):
    """One batch of contexts that differ in cache types, K centering, sinks, sizes and
    thread counts (attention runs on the fewest-threaded context's count)."""
    model = runtime.Model(tiny_ggufs["llama-hd64-tied"])
    kws = [dict(n_ctx=48, type_k="f16", type_v="f16", n_threads=2),
           dict(n_ctx=32, type_k="tq4", type_v="tq4", n_threads=1, n_batch=4),
           dict(n_ctx=64, type_k="q8_0", type_v="q4_0", n_threads=3, k_center=True),
           dict(n_ctx=40, type_k="tq3", type_v="f32", n_threads=2, n_sink=0),
           dict(n_ctx=48, type_k="f32", type_v="tq4", n_threads=2, n_sink=2)]
    a, b = [], []
    for kw, n in zip(kws, LENS):
        x, y = twins(model, [n], **kw)
        a += x
        b += y
    assert_multi_equals_single(a, b, steps=3)
    # a context's first eval may be a single batched token (K mean from that token)
    fresh_a, fresh_b = twins(model, [0, 0], n_ctx=16, type_k="tq4", type_v="tq4", n_threads=2)
    assert_multi_equals_single(fresh_a + a[:1], fresh_b + b[:1], steps=2)


def test_eval_multi_errors_change_nothing(tiny_ggufs):
    model = runtime.Model(tiny_ggufs["qwen2-hd64"])
    other = runtime.Model(tiny_ggufs["qwen2-hd64"])  # same file, another model handle
    a, b = twins(model, [3, 15, 5], n_ctx=16, n_batch=3, type_k="f16", type_v="f16", n_threads=2)
    before = [c.n_past for c in a]
    with pytest.raises(NativeError, match="another model"):
        runtime.eval_multi([a[0], other.context(n_ctx=16)], [1, 2])
    with pytest.raises(NativeError, match="1 to n_batch \\(3\\)"):
        runtime.eval_multi(a + twins(model, [1])[0], [1, 2, 3, 4])
    with pytest.raises(NativeError, match="context 2 is also context 0"):
        runtime.eval_multi([a[0], a[2], a[0]], [1, 2, 3])
    with pytest.raises(NativeError, match="token id 10000 at index 1"):
        runtime.eval_multi(a, [1, 10_000, 2])
    with pytest.raises(ValueError, match="one token per context"):
        runtime.eval_multi(a, [1, 2])
    assert runtime.eval_multi(a, [4, 5, 6]).shape == (3, model.args.vocab_size)  # a[1] now holds 16: full
    with pytest.raises(NativeError, match="context 1 is full: 16 of 16"):
        runtime.eval_multi(a, [7, 8, 9])
    assert [c.n_past for c in a] == [n + 1 for n in before]  # nothing appended by the failed calls
    for x, y, t in zip(b, a, [4, 5, 6]):  # and the caches hold exactly what they held
        y.reset(y.n_past - 1)
        np.testing.assert_array_equal(runtime.eval_multi([y], [t])[0], x.eval([t]))
    a[1].reset(10)  # a full context that makes room takes part again
    b[1].reset(10)
    np.testing.assert_array_equal(runtime.eval_multi([a[1]], [7])[0], b[1].eval([7]))


def prompts_for(model):
    return [model.tokenize(t) for t in ("Once upon a time", "def f(x):\n", "Q: why?\nA:", "1, 2, 3,")]


@pytest.mark.parametrize("sampler", [SamplerParams(temperature=0.0), SamplerParams(seed=7)])
def test_generate_batch_equals_generating_alone(tiny_ggufs, sampler):
    """Each sequence gets its solo tokens (greedy, and seeded sampling: each sequence
    has its own random stream); different lengths drop out of the batch at different steps."""
    model = runtime.Model(tiny_ggufs["qwen2-hd128-bf16"])
    prompts = prompts_for(model)
    limits = [12, 5, 20, 1]
    samplers = [sampler if sampler.seed is None else SamplerParams(seed=sampler.seed + i) for i in range(4)]
    params = runtime.ContextParams(n_ctx=32, n_batch=8, type_k="f16", type_v="f16", n_threads=2)
    got: list[list[int]] = [[] for _ in prompts]
    for i, tok in generate_batch(model, prompts, limits, samplers, params, stop_at_eos=False):
        got[i].append(tok)
    want = [list(generate_tokens(model, p, k, s, params, stop_at_eos=False))
            for p, k, s in zip(prompts, limits, samplers)]
    assert got == want
    assert [len(g) for g in got] == limits


def test_generate_batch_stops(tiny_ggufs, monkeypatch):
    """Stop at EOS (that sequence only), at a full context, and in groups of n_batch."""
    from kvconvert.runtime import generate

    model = runtime.Model(tiny_ggufs["llama-hd64-tied"])
    prompts = prompts_for(model)
    greedy = SamplerParams(temperature=0.0)
    params = runtime.ContextParams(n_ctx=16, n_batch=2, type_k="f16", type_v="f16", n_threads=2)
    free = [list(generate_tokens(model, p, 40, greedy, params, stop_at_eos=False)) for p in prompts]
    assert [len(f) for f in free] == [16 - len(p) + 1 for p in prompts]  # the last token is not evaluated
    got: list[list[int]] = [[] for _ in prompts]
    for i, tok in generate_batch(model, prompts, 40, greedy, params, stop_at_eos=False):
        got[i].append(tok)
    assert got == free
    stop = free[1][3]  # make this token of sequence 1 its EOS
    monkeypatch.setattr(generate, "_stop_ids", lambda m: {stop})
    got = [[] for _ in prompts]
    for i, tok in generate_batch(model, prompts, 40, greedy, params):
        got[i].append(tok)
    for g, f in zip(got, free):
        assert g == (f[:f.index(stop)] if stop in f else f)


def test_batch_decoder_adds_sequences_between_steps(tiny_ggufs):
    """Continuous batching: a sequence that joins a running batch (and one with no
    tokens to write) still gets its solo tokens; ids are given in order of adding."""
    model = runtime.Model(tiny_ggufs["llama-hd128-bias-rope3"])
    prompts = prompts_for(model)
    samplers = [SamplerParams(seed=100 + i) for i in range(4)]
    params = runtime.ContextParams(n_ctx=40, n_batch=4, type_k="tq4", type_v="q8_0", n_threads=2)
    dec = BatchDecoder(model, params, stop_at_eos=False)
    assert [dec.add(prompts[i], 10 + i, samplers[i]) for i in range(2)] == [0, 1]
    got: dict[int, list[int]] = {i: [] for i in range(4)}
    done: list[int] = []
    for n_step in range(40):
        if n_step == 3:
            assert dec.add(prompts[2], 7, samplers[2]) == 2 and dec.add(prompts[3], 0, samplers[3]) == 3
        tokens, finished = dec.step()
        assert len(tokens) == dec.n_running + len(finished) - (n_step == 3)  # the empty one ends without a token
        for i, tok in tokens:
            got[i].append(tok)
        done += finished
        if not dec.n_running:
            break
    assert sorted(done) == [0, 1, 2, 3] and not dec.step()[0]
    for i in range(4):
        assert got[i] == list(generate_tokens(model, prompts[i], [10, 11, 7, 0][i], samplers[i], params,
                                              stop_at_eos=False)), i


def test_generate_text_contract(tiny_ggufs, monkeypatch):
    """Batched calibration text: sequences of at most n_ctx tokens, each its seed prompt
    then at least 9 generated tokens, n_tokens in all, the same text on a rerun, and the
    same as writing the sequences one at a time (each sequence's own seed). EOS is off,
    so that no sequence ends early and the layout of the text is known."""
    from kvconvert.conversion import calibrate
    from kvconvert.runtime import generate

    monkeypatch.setattr(generate, "_stop_ids", lambda m: set())
    model = runtime.Model(tiny_ggufs["llama-hd64-tied"])
    seen = []
    seqs = calibrate.generate_text(model, 200, 32, progress=lambda d, t, msg: seen.append((d, t)))
    assert sum(map(len, seqs)) >= 200 and all(len(s) <= 32 for s in seqs)
    prompts = [model.tokenize(p)[:16] for p in calibrate.SEED_PROMPTS]
    for i, s in enumerate(seqs):  # 200 tokens, 32 per sequence: 7 sequences, none stopped early
        assert s[:len(prompts[i])] == prompts[i] and len(s) > len(prompts[i]) + 8
    assert seen and all(t == 200 for _, t in seen) and max(d for d, _ in seen) <= sum(map(len, seqs))
    assert calibrate.generate_text(model, 200, 32) == seqs
    assert calibrate.generate_text(model, 200, 32, batch=1) == seqs
    threads, init = [], generate.BatchDecoder.__init__  # calibrate(n_threads=...) reaches the generation

    def spy(self, model, ctx_params=None, stop_at_eos=True):
        threads.append(ctx_params.n_threads)
        init(self, model, ctx_params, stop_at_eos)

    monkeypatch.setattr(generate.BatchDecoder, "__init__", spy)
    assert calibrate.generate_text(model, 200, 32, n_threads=1) == seqs and threads == [1]


def test_generate_text_gives_up_when_the_model_stops(tiny_ggufs, monkeypatch):
    from kvconvert.runtime import generate
    from kvconvert.conversion.calibrate import generate_text
    from kvconvert.base.errors import InputError

    model = runtime.Model(tiny_ggufs["qwen2-hd64"])
    monkeypatch.setattr(generate, "_stop_ids", lambda m: set(range(m.args.vocab_size)))  # EOS at once
    with pytest.raises(InputError, match="stops generating almost at once"):
        generate_text(model, 64, 32)


def test_generate_text_cancels(tiny_ggufs):
    import threading

    from kvconvert.conversion.calibrate import generate_text
    from kvconvert.base.progress import Cancelled

    model = runtime.Model(tiny_ggufs["qwen2-hd64"])
    cancel = threading.Event()

    def progress(done, total, msg):
        cancel.set()

    with pytest.raises(Cancelled):
        generate_text(model, 400, 64, progress=progress, cancel=cancel)
