"""The recent exact window of TurboQuant caches (issue 19, kvc_context_params.n_recent):
each query uses the last n_recent positions (its own included) exactly — the f16 key's
score, the value through its f16 correction v − v̂ — with the sinks' formulas.

Checked: a window covering the whole context gives the same bits as making every
position a sink (and f16-cache accuracy); a window of w matches a numpy twin (the numpy
TurboQuant of kvconvert/kvcache/turboquant.py and a plain attention that swaps in the
exact rows); batch, pieces, token by token and batched decode agree; a rewind then
re-evaluation equals a fresh run, and a rewind below the ring's floor is refused;
sliding-window layers; the ring's bytes in kv_bytes; metadata; the Metal backend
refuses it."""

from __future__ import annotations

import numpy as np
import pytest

from kvconvert.kvcache import kbasis, turboquant as tq
from kvconvert.kvcache.kvmeta import RECENT_SLACK, recent_bits
from kvconvert.models import reference as R
from kvconvert.models.rope import apply_rope
from kvconvert.models.source import load_model

runtime = pytest.importorskip("kvconvert.runtime.engine")
pytest.importorskip("kvconvert._kvc", reason="native runtime not built (pip install -e .)")

TOKENS = [5, 17, 250, 3, 99, 42, 7, 300, 11, 12, 13, 200, 64, 1, 2, 77, 123, 8, 9, 10, 31, 32, 33, 34]


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def means(model, seed=9):
    a = model.args
    rng = np.random.default_rng(seed)
    shape = (a.num_hidden_layers, a.num_key_value_heads, a.head_dim)
    return dict(k_mean=rng.standard_normal(shape) * 3, v_mean=rng.standard_normal(shape))


def test_window_covering_the_context_equals_all_sinks(tiny_ggufs):
    """With every key inside the window, every TurboQuant score and value is replaced by the
    exact one: the same bits as making every position a sink (same formulas, same f16
    rows), within f16-cache accuracy of an f32 cache (bound 1e-3 as test_sinks_are_exact),
    and far from the window-less 2-bit cache."""
    for name, path in tiny_ggufs.items():
        model = runtime.Model(path)
        kw = dict(n_ctx=64, type_k="tq2", type_v="tq2", **means(model))
        exact = model.context(n_ctx=64, type_k="f32", type_v="f32").eval(TOKENS, all_logits=True)
        sinks = model.context(n_sink=len(TOKENS), **kw).eval(TOKENS, all_logits=True)
        window = model.context(n_sink=0, n_recent=len(TOKENS), **kw).eval(TOKENS, all_logits=True)
        both = model.context(n_sink=3, n_recent=64, n_batch=5, **kw).eval(TOKENS, all_logits=True)
        none = model.context(n_sink=0, n_recent=0, **kw).eval(TOKENS, all_logits=True)
        np.testing.assert_array_equal(window, sinks, err_msg=name)
        assert rel(both, sinks) <= 1e-6, (name, rel(both, sinks))
        assert rel(window, exact) <= 1e-3, (name, rel(window, exact))
        assert rel(none, exact) > 0.1, name


def twin_logits(path, tokens, w: int, spec_k: str, spec_v: str, seed: int, k_basis: np.ndarray | None = None,
                k_basis_block: int = 0):
    """The numpy twin: reference.forward's blocks with an attention whose keys are TurboQuant
    round trips (no QJL, no centering: score = q·k̂) except those within w of the query,
    scored with fp16(k); values v̂ plus, for the window's keys, fp16(v − v̂). k_basis (layers,
    kv heads, d, d): keys coded as k·A, so k̂ = rt(k·A)·A⁻¹ (kvcache/kbasis.py); k_basis_block > 0:
    each key turned back to its block's start by RoPE first (and forward after)."""
    m = load_model(path)
    weights, pairing = m.file_order()  # the cache holds head rows in the file's channel order
    args = m.args
    mm = R._Model(args, R._Typed(weights, np.dtype(np.float32)))
    blk, d = mm.block, args.head_dim
    ck, cv = tq.KConfig.parse(spec_k, d), tq.KConfig.parse(spec_v, d)
    f16 = lambda x: x.astype(np.float16).astype(np.float32)  # noqa: E731
    rt = lambda x, cfg, layer: tq.decode(tq.encode(x.reshape(-1, d), cfg, seed, layer), cfg, seed, layer,  # noqa: E731
                                         qjl=False).reshape(x.shape).astype(np.float32)

    def attention(layer, x, pos):
        t = x.shape[0]
        q = mm.linear(x, layer, "wq", "bq").reshape(t, args.num_attention_heads, d)
        k = mm.linear(x, layer, "wk", "bk").reshape(t, args.num_key_value_heads, d)
        v = mm.linear(x, layer, "wv", "bv").reshape(t, args.num_key_value_heads, d)
        if blk.qk_norm:
            q, k = mm.norm(q, "q_norm", layer), mm.norm(k, "k_norm", layer)
        q = apply_rope(q, pos, blk.inv_freq[layer], pairing).astype(np.float32)
        k = apply_rope(k, pos, blk.inv_freq[layer], pairing).astype(np.float32)
        kh, vh = rt(k, ck, layer), rt(v, cv, layer)
        if k_basis is not None:
            kh = kbasis.read_back(k, k_basis[layer], lambda x: rt(x, ck, layer),
                                  kbasis.block_starts(pos, k_basis_block),
                                  lambda x, p: apply_rope(x, p, blk.inv_freq[layer], pairing))
        rep = lambda a: np.repeat(a, args.n_rep, axis=1)  # noqa: E731
        dist = pos[:, None] - pos[None, :]
        win = (dist >= 0) & (dist < w)
        est = np.einsum("thd,shd->hts", q, rep(kh))
        ex = np.einsum("thd,shd->hts", q, rep(f16(k)))
        scores = np.where(win[None], ex, est) * np.float32(blk.attn_scale)
        mask = dist < 0
        if blk.windows[layer]:
            mask |= dist >= blk.windows[layer]
        scores[:, mask] = -np.inf
        p = R.softmax(scores)
        out = np.einsum("hts,shd->thd", p, rep(vh)) + np.einsum("hts,shd->thd", p * win[None], rep(f16(v - vh)))
        return mm.linear(out.reshape(t, args.q_dim), layer, "wo", "bo")

    pos = np.arange(len(tokens))
    x = mm("tok_embd")[np.asarray(tokens)] * np.float32(blk.embed_scale)
    for layer in range(args.num_hidden_layers):
        h = attention(layer, mm.norm(x, "attn_norm", layer), pos)
        x = x + (mm.norm(h, "attn_post_norm", layer) if blk.post_norms else h)
        h = R.mlp(mm, layer, mm.norm(x, "ffn_norm", layer))
        x = x + (mm.norm(h, "ffn_post_norm", layer) if blk.post_norms else h)
    x = mm.norm(x, "output_norm")
    return x @ (mm("output") if mm.has("output") else mm("tok_embd")).T


@pytest.mark.parametrize("name", ["qwen2-hd64", "llama-hd128-bias-rope3", "mistral-hd64-swa8"])
def test_window_matches_numpy_twin(tiny_ggufs, name):
    """A window of 5 (and none) against the numpy twin: equal within float rounding
    (summation order, the twin's f32 TurboQuant; measured 7e-7 .. 3e-5, bound 2e-4), while
    the window moves the logits by far more than that."""
    path = tiny_ggufs[name]
    model = runtime.Model(path)
    seed = 1234
    kw = dict(n_ctx=64, n_batch=7, type_k="tq3", type_v="tq2", k_center=False, n_sink=0, tq_seed=seed, n_threads=2)
    got = {w: model.context(n_recent=w, **kw).eval(TOKENS, all_logits=True) for w in (0, 5)}
    want = {w: twin_logits(path, TOKENS, w, "tq3", "tq2", seed) for w in (0, 5)}
    for w in (0, 5):
        assert rel(got[w], want[w]) <= 2e-4, (name, w, rel(got[w], want[w]))
    assert rel(got[5], got[0]) > 10 * rel(got[5], want[5]), name


@pytest.mark.parametrize("spec_k,spec_v", [("tq3:scale=proj", "tq2"), ("tq3", "tq2:scale=proj"),
                                           ("tq3:scale=norm", "tq2:scale=proj")])
def test_per_side_scale_modes_match_numpy_twin(tiny_ggufs, spec_k, spec_v):
    """K and V with different TurboQuant scales (kvc_context_params.tq_v_scale_mode) against
    the numpy twin encoding each side with its own scale (bound 2e-4 as above), and far from
    the run with both sides on K's scale: V's mode is really used."""
    path = tiny_ggufs["qwen2-hd64"]
    model = runtime.Model(path)
    seed = 77
    kw = dict(n_ctx=64, n_batch=7, k_center=False, n_sink=0, tq_seed=seed, n_threads=2)
    for w in (0, 5):
        got = model.context(type_k=spec_k, type_v=spec_v, n_recent=w, **kw).eval(TOKENS, all_logits=True)
        want = twin_logits(path, TOKENS, w, spec_k, spec_v, seed)
        assert rel(got, want) <= 2e-4, (spec_k, spec_v, w, rel(got, want))
        k_scale = tq.KConfig.parse(spec_k, 64).scale
        same = model.context(type_k=spec_k, type_v=f"tq2:scale={k_scale}", n_recent=w, **kw).eval(TOKENS,
                                                                                                  all_logits=True)
        assert rel(same, got) > 10 * rel(got, want), (spec_k, spec_v, w)


def test_metal_refuses_different_scale_modes():
    """host.h's create refuses K and V TurboQuant caches on different scale modes with
    KVC_ERR_UNSUPPORTED (its kernels take one mode), so auto runs them on the CPU; a V-only cache
    takes V's mode (checked in the source: no Metal device here)."""
    from pathlib import Path

    src = (Path(__file__).resolve().parent.parent / "native" / "src" / "metal" / "host.h").read_text()
    i = src.index("different K and V TurboQuant scale modes run on the CPU backend only")
    assert "c->k_tq && c->v_tq && kvc_v_scale_mode(p) != p->tq_scale_mode" in src[i - 300:i]
    assert "KVC_ERR_UNSUPPORTED" in src[i - 200:i]
    assert "c->scale_mode = c->k_tq ? p->tq_scale_mode : kvc_v_scale_mode(p);" in src


@pytest.mark.parametrize("mode", [-1, 4])
def test_bad_v_scale_mode_is_refused(tiny_ggufs, mode):
    from kvconvert.runtime._native import ffi, lib

    model = runtime.Model(tiny_ggufs["qwen2-hd64"])
    p = ffi().new("kvc_context_params *")
    p.n_ctx, p.n_batch, p.n_threads, p.type_k, p.type_v = 16, 4, 1, lib().KVC_TYPE_F16, lib().KVC_TYPE_F16
    p.tq_v_scale_mode = mode
    out, err = ffi().new("kvc_context **"), ffi().new("char[256]")
    assert lib().kvc_context_create(model._ptr, p, out, err, 256) != 0
    assert b"tq_v_scale_mode must be 0" in ffi().string(err)


@pytest.mark.parametrize("spec_k,spec_v,n_sink,w", [("tq4", "tq4", 0, 4), ("tq4", "tq4", 3, 6),
                                                    ("tq:split=32,hi=8,lo=3,qjl=hi", "tq3", 1, 9),
                                                    ("tq4", "f16", 2, 5), ("f16", "tq4", 5, 3)])
def test_batch_pieces_tokens_and_multi_agree(tiny_ggufs, spec_k, spec_v, n_sink, w):
    """One batch, batches of 5, token by token and kvc_eval_multi give the same logits
    (tolerance 1e-6; a score or value does not depend on the block it is computed in),
    with K centering, a K permutation, V centering and sinks; and the window changes them."""
    for name, path in tiny_ggufs.items():
        model = runtime.Model(path)
        a = model.args
        rng = np.random.default_rng(5)
        kw = dict(n_ctx=64, type_k=spec_k, type_v=spec_v, k_center=True, n_sink=n_sink, n_threads=2, **means(model))
        if spec_k.startswith("tq"):
            kw["k_perm"] = np.stack([rng.permutation(a.head_dim) for _ in range(a.num_hidden_layers)])
        batch = model.context(n_recent=w, **kw).eval(TOKENS, all_logits=True)
        ctx = model.context(n_recent=w, **kw)
        one = np.concatenate([ctx.eval([t], all_logits=True) for t in TOKENS])
        assert rel(one, batch) <= 1e-6, (name, rel(one, batch))
        ctx = model.context(n_recent=w, n_batch=5, **kw)
        parts = np.concatenate([ctx.eval(TOKENS[:13], all_logits=True), ctx.eval(TOKENS[13:], all_logits=True)])
        assert rel(parts, batch) <= 1e-6, (name, rel(parts, batch))
        ctxs = [model.context(n_recent=w, n_batch=4, **kw) for _ in range(2)]
        for c in ctxs:
            c.eval(TOKENS[:10])
        multi = np.stack([runtime.eval_multi(ctxs, [t, t])[1] for t in TOKENS[10:]])
        assert rel(multi, batch[10:]) <= 1e-6, (name, rel(multi, batch[10:]))
        off = model.context(n_recent=0, **kw).eval(TOKENS, all_logits=True)
        assert rel(batch, off) > 1e-4, name


def test_rewind_then_reeval_equals_fresh(tiny_ggufs):
    """The ring keeps n_recent + RECENT_SLACK rows (the batch's own rows sit in a buffer until the
    layer's attention is done): after 40 tokens in batches of 4 with w = 3 it holds positions
    21..39, so a rewind may go back to 23 (its window needs 21, 22): then other tokens give a
    fresh run's logits; 22 is refused (rewind_floor), 0 always works."""
    model = runtime.Model(tiny_ggufs["qwen2-hd64"])
    kw = dict(n_ctx=64, n_batch=4, type_k="tq3", type_v="tq3", n_sink=1, n_recent=3, n_threads=2, **means(model))
    toks = (TOKENS * 2)[:40]
    other = [40, 41, 42, 43, 44, 45, 46]
    ctx = model.context(**kw)
    ctx.eval(toks)
    assert RECENT_SLACK == 16 and ctx.rewind_floor == 40 - RECENT_SLACK - 1 == 23
    with pytest.raises(runtime.NativeError, match="cannot rewind to 22 tokens"):
        ctx.reset(22)
    ctx.reset(23)
    got = ctx.eval(other, all_logits=True)
    fresh = model.context(**kw).eval(toks[:23] + other, all_logits=True)[23:]
    assert rel(got, fresh) <= 1e-6, rel(got, fresh)
    ctx.reset(27)  # a short rewind inside the re-evaluated tokens
    got = ctx.eval(TOKENS[:3], all_logits=True)
    fresh = model.context(**kw).eval(toks[:23] + other[:4] + TOKENS[:3], all_logits=True)[27:]
    assert rel(got, fresh) <= 1e-6, rel(got, fresh)
    ctx.reset(0)
    assert ctx.rewind_floor == 1
    np.testing.assert_allclose(ctx.eval(TOKENS, all_logits=True), model.context(**kw).eval(TOKENS, all_logits=True),
                               rtol=1e-6, atol=1e-6)


def test_longer_rewinds_with_n_rewind(tiny_ggufs):
    """n_rewind widens the ring: with 30 rows beyond a window of 3, a rewind may go ~30 positions back
    (bench/needle.py's questions need ~40), gives a fresh run's logits, and kv_bytes grows by the
    extra rows; out-of-range values are refused."""
    model = runtime.Model(tiny_ggufs["qwen2-hd64"])
    kw = dict(n_ctx=64, n_batch=4, type_k="tq3", type_v="tq3", n_sink=1, n_recent=3, n_threads=2, **means(model))
    toks = (TOKENS * 2)[:40]
    ctx = model.context(n_rewind=30, **kw)
    ctx.eval(toks)
    assert ctx.rewind_floor == 40 - (3 + 30) + 3 - 1 == 9  # the ring holds 7..39; position 9's window is 7..9
    with pytest.raises(runtime.NativeError, match="cannot rewind to 8 tokens"):
        ctx.reset(8)
    ctx.reset(9)
    got = ctx.eval([40, 41, 42], all_logits=True)
    fresh = model.context(**kw).eval(toks[:9] + [40, 41, 42], all_logits=True)[9:]
    assert rel(got, fresh) <= 1e-6, rel(got, fresh)
    a = model.args
    extra = (30 - RECENT_SLACK) * a.num_hidden_layers * a.num_key_value_heads * a.head_dim * 2 * 2  # K, V; f16
    assert model.context(n_rewind=30, **kw).kv_bytes - model.context(**kw).kv_bytes == extra
    with pytest.raises(runtime.NativeError, match="n_rewind must be 0..4096"):
        model.context(n_rewind=-1, **kw)


@pytest.mark.parametrize("name", ["gemma3-hd64-swa8", "mistral-hd64-swa8"])
def test_sliding_window_layers(tiny_ggufs, name):
    """Sliding-window layers (window 8) with a larger exact window (12): the exact keys stay
    inside the sliding window; the trimmed cache and the keep-all cache give the same bits,
    and batch equals token by token."""
    model = runtime.Model(tiny_ggufs[name])
    kw = dict(n_ctx=64, n_batch=4, type_k="tq3", type_v="tq3", n_recent=12, n_threads=2, **means(model))
    toks = list(np.random.default_rng(0).integers(0, 300, 40))
    full = model.context(kv_keep_all=True, **kw).eval(toks, all_logits=True)
    np.testing.assert_array_equal(model.context(**kw).eval(toks, all_logits=True), full)
    win = model.context(**kw)
    one = np.concatenate([win.eval([t], all_logits=True) for t in toks])
    assert rel(one, full) <= 1e-6, rel(one, full)
    assert rel(full, model.context(kv_keep_all=True, **(kw | dict(n_recent=0))).eval(toks, all_logits=True)) > 1e-4


def test_ring_bytes_and_limits(tiny_ggufs):
    """kv_bytes counts the ring: (n_recent + RECENT_SLACK) f16 rows per layer and KV head, and one
    batch of rows for all layers, for each TurboQuant cache; kv_bytes_per_token does not change;
    recent_bits counts the ring's rows. 0..256; a standard cache ignores it."""
    model = runtime.Model(tiny_ggufs["qwen2-hd64"])
    a = model.args
    row = a.num_hidden_layers * a.num_key_value_heads * a.head_dim * 2
    batch = 8 * a.num_key_value_heads * a.head_dim * 2
    for tk, tv, n in (("tq3", "tq3", 2), ("tq3", "f16", 1), ("f16", "f16", 0)):
        base = model.context(n_ctx=64, n_batch=8, type_k=tk, type_v=tv, n_recent=0)
        ring = model.context(n_ctx=64, n_batch=8, type_k=tk, type_v=tv, n_recent=16)
        assert ring.kv_bytes - base.kv_bytes == n * (row * (16 + RECENT_SLACK) + batch), (tk, tv)
        assert ring.kv_bytes_per_token == base.kv_bytes_per_token
        if n:  # the per-value bits of the profile and search: the ring's rows over n_ctx, per cache
            assert recent_bits(16, 64) == pytest.approx((ring.kv_bytes - base.kv_bytes - n * batch) * 8
                                                        / (n * 64 * row / 2))
    small = model.context(n_ctx=20, n_batch=8, type_k="tq3", type_v="tq3", n_recent=16)  # the ring is at most n_ctx
    assert small.kv_bytes - model.context(n_ctx=20, n_batch=8, type_k="tq3", type_v="tq3", n_recent=0).kv_bytes \
        == 2 * (row * 20 + batch)
    with pytest.raises(runtime.NativeError, match="n_recent must be 0..256"):
        model.context(n_ctx=64, type_k="tq4", n_recent=257)


def test_metadata_and_default(tiny_models, tmp_path):
    """kvconvert.recent_window: written and read like the sink key; the runtime takes it
    unless told otherwise (ContextParams.n_recent); without it the window is off."""
    from kvconvert import convert
    from kvconvert.kvcache.kvmeta import CacheMeta

    src = load_model(tiny_models["qwen2-hd64"])
    a = src.args
    configs = [tq.KConfig.parse("tq3", a.head_dim)] * a.num_hidden_layers
    out = tmp_path / "m.gguf"
    convert(src, out, weights="f32", kv_meta=CacheMeta(k_type="tq", v_type="tq", k_configs=configs,
                                                       v_configs=configs, n_sink=1, n_recent=5))
    model = runtime.Model(out)
    assert model.cache_meta.n_recent == 5
    auto = model.context(n_ctx=32)
    assert auto.params.n_recent == 5
    got = auto.eval(TOKENS, all_logits=True)
    np.testing.assert_array_equal(model.context(n_ctx=32, n_recent=5).eval(TOKENS, all_logits=True), got)
    assert not np.array_equal(model.context(n_ctx=32, n_recent=0).eval(TOKENS, all_logits=True), got)
    f16 = runtime.Model(out).context(n_ctx=32, type_k="f16", type_v="f16")
    assert f16.params.n_recent == 5 and f16.kv_bytes == model.context(n_ctx=32, type_k="f16", type_v="f16",
                                                                         n_recent=0).kv_bytes  # no TQ: no ring


def test_metal_refuses_a_window():
    """host.h's create refuses n_recent > 0 on TurboQuant caches with KVC_ERR_UNSUPPORTED, so
    that auto runs the context on the CPU (checked in the source: no Metal device here)."""
    from pathlib import Path

    src = (Path(__file__).resolve().parent.parent / "native" / "src" / "metal" / "host.h").read_text()
    i = src.index("the recent exact window (n_recent) runs on the CPU backend only")
    assert "(c->k_tq || c->v_tq) && p->n_recent > 0" in src[i - 300:i] and "KVC_ERR_UNSUPPORTED" in src[i - 100:i]


def test_cli_recent(capsys, tiny_ggufs, tmp_path):
    """--recent N on the commands that take --sink: eval reports the window and the bits per
    value it adds at the chunk length (the ring's min(N + slack, n_ctx) rows · 16 / n_ctx);
    argparse refuses N > 256."""
    import json

    from kvconvert.cli import main
    from tests.tiny import CORPUS

    text = tmp_path / "t.txt"
    text.write_text(" ".join(CORPUS * 6))
    common = [str(tiny_ggufs["qwen2-hd64"]), "--text", str(text), "--ctx", "32", "--chunks", "2", "--json",
              "--ctk", "tq3", "--ctv", "tq3"]
    res = {}
    for n in ("0", "8"):
        assert main(["eval", *common, "--recent", n]) == 0
        res[n] = json.loads(capsys.readouterr().out)
    assert res["8"]["n_recent"] == 8 and res["8"]["recent_bpv"] == pytest.approx(min(8 + RECENT_SLACK, 32) * 16 / 32)
    assert res["0"]["n_recent"] == 0 and res["0"]["recent_bpv"] == 0.0
    assert res["8"]["ppl"] != res["0"]["ppl"]
    with pytest.raises(SystemExit) as exc:
        main(["eval", *common, "--recent", "257"])
    assert exc.value.code == 2


@pytest.mark.parametrize("spec_k,spec_v", [("tq3:code=trellis", "tq2:code=trellis,scale=proj"),
                                           ("tq:split=16,hi=5,lo=2,code=trellis", "tq3")])
def test_trellis_codes_match_numpy_twin(tiny_ggufs, spec_k, spec_v):
    """Trellis codes through the whole runtime (encode in the cache, scalar score and V kernels,
    the window on top) against the numpy twin with the same codes (bound 2e-4 as above), and far
    from the same bits on Lloyd–Max codes: the trellis path really runs."""
    path = tiny_ggufs["qwen2-hd64"]
    model = runtime.Model(path)
    seed = 5
    kw = dict(n_ctx=64, n_batch=7, k_center=False, n_sink=0, tq_seed=seed, n_threads=2)
    for w in (0, 5):
        got = model.context(type_k=spec_k, type_v=spec_v, n_recent=w, **kw).eval(TOKENS, all_logits=True)
        want = twin_logits(path, TOKENS, w, spec_k, spec_v, seed)
        assert rel(got, want) <= 2e-4, (spec_k, spec_v, w, rel(got, want))
        plain = model.context(type_k=spec_k.replace(",code=trellis", "").replace(":code=trellis", ""),
                              type_v=spec_v.replace(",code=trellis", "").replace("code=trellis,", ""), n_recent=w,
                              **kw).eval(TOKENS, all_logits=True)
        assert rel(plain, got) > 10 * rel(got, want), (spec_k, spec_v, w)
