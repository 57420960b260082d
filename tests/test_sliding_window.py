"""Sliding-window layers (Mistral, Gemma 3's local layers) cache only what their
window can still see (issue 18.1): the same logits, bit for bit, as a cache that
keeps every position, in every cache type, batch size, incremental decode, batched
decode of several contexts and small rewinds; far rewinds are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from kvconvert.runtime.engine import ContextParams, Model, NativeError, eval_multi

pytest.importorskip("kvconvert._kvc", reason="native runtime not built (pip install -e .)")

WINDOWED = ["gemma3-hd64-swa8", "mistral-hd64-swa8"]  # window 8; n_ctx 64 below: the cache holds 2·8 + 2·n_batch
TOKENS = list(np.random.default_rng(0).integers(0, 300, 60))


def pair(path, **kw):
    p = dict(n_ctx=64, n_threads=2) | kw
    return (Model(path).context(ContextParams(kv_keep_all=True, **p)),
            Model(path).context(ContextParams(**p)))


@pytest.mark.parametrize("name", WINDOWED)
@pytest.mark.parametrize("ctk,ctv", [("f32", "f32"), ("q8_0", "q4_0"), ("tq4", "tq4"),
                                     ("tq:split=16,hi=8,lo=3,qjl=hi", "f16")])
@pytest.mark.parametrize("n_batch", [4, 7])
def test_window_cache_is_exact(tiny_ggufs, name, ctk, ctv, n_batch):
    full, win = pair(tiny_ggufs[name], n_batch=n_batch, type_k=ctk, type_v=ctv)
    np.testing.assert_array_equal(win.eval(TOKENS, all_logits=True), full.eval(TOKENS, all_logits=True))
    m = Model(tiny_ggufs[name])
    a = m.args
    windowed = [w > 0 for w in m.source.arch.block(a).windows]
    row = full.kv_bytes // (a.num_hidden_layers * 64)  # K+V bytes of one position of one layer (uniform caches)
    cap = min(64, 2 * 8 + 2 * n_batch)
    assert win.kv_bytes == row * sum(cap if w else 64 for w in windowed) < full.kv_bytes


@pytest.mark.parametrize("name", WINDOWED)
def test_window_cache_decode_rewind_and_batches(tiny_ggufs, name):
    full, win = pair(tiny_ggufs[name], n_batch=4, type_k="tq4", type_v="tq4")
    a = np.stack([full.eval([t]) for t in TOKENS])
    np.testing.assert_array_equal(np.stack([win.eval([t]) for t in TOKENS]), a)
    assert win.rewind_floor > 1 and full.rewind_floor == 1
    win.reset(57), full.reset(57)  # within the kept batch: fine
    np.testing.assert_array_equal(win.eval(TOKENS[57:]), full.eval(TOKENS[57:]))
    with pytest.raises(NativeError, match="cannot rewind to 20 tokens: this cache can go back to"):
        win.reset(20)
    win.reset(0)
    np.testing.assert_array_equal(win.eval(TOKENS, all_logits=True)[-1], a[-1])
    # several contexts decoded as one batch, each compacting its own cache
    m = Model(tiny_ggufs[name])  # eval_multi: contexts of one model
    kw = dict(n_ctx=64, n_threads=2, n_batch=4, type_k="q8_0", type_v="q8_0")
    ctxs = [(m.context(ContextParams(kv_keep_all=True, **kw)), m.context(ContextParams(**kw))) for _ in range(2)]
    for (f, w), start in zip(ctxs, (10, 30)):
        f.eval(TOKENS[:start]), w.eval(TOKENS[:start])
    for t in TOKENS[30:]:
        got = eval_multi([w for _, w in ctxs], [t, t])
        want = eval_multi([f for f, _ in ctxs], [t, t])
        np.testing.assert_array_equal(got, want)


def test_chat_restarts_below_the_rewind_floor(tiny_ggufs):
    """A chat whose new prompt shares only a prefix shorter than what the window cache still holds
    (rewind_floor) prefills again from 0 instead of failing; the logits are a fresh context's."""
    from kvconvert.runtime.engine import ContextParams, Model
    from kvconvert.runtime.generate import SamplerParams
    from kvconvert.serving.chat import ChatSession

    model = Model(tiny_ggufs["mistral-hd64-swa8"])
    params = ContextParams(n_ctx=256, n_batch=4, n_threads=1)
    s = ChatSession(model, params, SamplerParams(temperature=0.0))
    first = list(range(5, 65))
    s._sync(first)
    assert s.ctx.rewind_floor > 3  # the window cache no longer holds position 3's past
    second = first[:3] + [7] * 40
    got = s._sync(second)
    assert s.prefilled == len(second)  # everything again, not a failed rewind
    want = model.context(params).eval(second)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["gemma3-hd64-swa8", "mistral-hd64-swa8", "qwen2-hd64"])
@pytest.mark.parametrize("n_ctx,n_batch", [(64, 4), (256, 16), (24, 8)])
def test_cache_rows_are_what_the_runtime_allocates(tiny_ggufs, name, n_ctx, n_batch):
    """models.arch.cache_rows (every KV-MiB figure the CLI, card and TUI show) against the bytes the
    C runtime holds for an f16 cache."""
    from kvconvert.models.arch import from_hf

    model = Model(tiny_ggufs[name])
    a = model.args
    rows = from_hf(a.architecture).cache_rows(a, n_ctx, n_batch)
    ctx = model.context(ContextParams(n_ctx=n_ctx, n_batch=n_batch, type_k="f16", type_v="f16", n_threads=1))
    assert ctx.kv_bytes == sum(rows) * a.num_key_value_heads * a.head_dim * 2 * 2
