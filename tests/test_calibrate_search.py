"""Issue 5: calibration, the weight transforms (both layouts), search and
convert with a profile — on the tiny models (exactness, plumbing) and on real
SmolLM2 (quality, in test_real_profiles)."""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import replace

import numpy as np
import pytest

from kvconvert import convert
from kvconvert.kvcache import kbasis, turboquant as tq
from kvconvert.conversion.calibrate import Calibration, calibrate
from kvconvert.base.errors import InputError
from kvconvert.models.source import load_model
from kvconvert.conversion.profile import ModelShape, Policy, Profile, Transforms, load_profile, shipped_names
from kvconvert.base.progress import Cancelled
from kvconvert.runtime.engine import ContextParams, Model
from kvconvert.conversion.search import allocate, search
from tests.tiny import CORPUS

TEXT = " ".join(CORPUS) * 30
TRANSFORMS = ("k_scale", "pair_order", "k_mean", "v_mean")


def random_profile(src, rng, keep=TRANSFORMS, k_type="f32", v_type="f32") -> Profile:
    a = src.args
    L, Hk, d = a.num_hidden_layers, a.num_key_value_heads, a.head_dim
    P = d // 2
    full = dict(k_mean=rng.normal(size=(L, Hk, d)).astype(np.float32),
                k_scale=np.exp(rng.normal(size=(L, 1 if src.arch.qk_norm else Hk, P)) * 0.5 +
                               np.zeros((L, Hk, P))).astype(np.float32),  # QK-norm: one set per layer
                pair_order=np.stack([rng.permutation(P) for _ in range(L)]).astype(np.int32),
                v_mean=rng.normal(size=(L, Hk, d)).astype(np.float32))
    tr = Transforms(**{k: (v if k in keep else None) for k, v in full.items()})
    return Profile(name="random", model=ModelShape.of("tiny", src.arch.name, a), k_type=k_type, v_type=v_type,
                   transforms=tr)


def logits(path, toks, **kw) -> np.ndarray:
    ctx = Model(path).context(ContextParams(n_ctx=64, n_batch=16, **({"type_k": "f32", "type_v": "f32"} | kw)))
    return ctx.eval(toks, all_logits=True)


@pytest.fixture(scope="module")
def plain(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    return {n: convert(p, root / f"{n}.gguf", weights="f32").output for n, p in tiny_models.items()}


# -- transforms: every fold leaves the f32-cache logits unchanged ------------------------

@pytest.mark.parametrize("layout", ["portable", "folded"])
@pytest.mark.parametrize("keep", [("k_scale",), ("pair_order",), ("k_mean",), ("v_mean",), TRANSFORMS],
                         ids=lambda k: "+".join(k))
def test_transforms_keep_logits(tiny_model, plain, tmp_path, layout, keep):
    src = load_model(tiny_model)
    prof = random_profile(src, np.random.default_rng(1), keep)
    if layout == "folded" and src.arch.qk_norm:  # b_k would be normalised away: refused
        with pytest.raises(InputError, match="portable layout"):
            convert(tiny_model, tmp_path / "p.gguf", weights="f32", profile=prof, layout=layout)
        return
    out = convert(tiny_model, tmp_path / "p.gguf", weights="f32", profile=prof, layout=layout).output
    toks = list(np.random.default_rng(2).integers(0, src.args.vocab_size, 40))
    ref = logits(plain[tiny_model.name], toks)
    got = logits(out, toks)
    # f32 weights and cache: the folds change only float64-then-float32 rounding
    assert np.abs(got - ref).max() <= 2e-5 * np.abs(ref).max()
    meta = Model(out).cache_meta
    assert meta.layout == layout
    if layout == "folded":
        assert Model(out).source.arch.name.startswith("kvc-")


@pytest.mark.parametrize("layout", ["portable", "folded"])
def test_tq8_with_profile_close_to_f32(tiny_models, plain, tmp_path, layout):
    """A TurboQuant 8-bit K/V cache with centering, permutation and smoothing stays as close to
    the f32 cache as q8_0 K/V are (the tiny random models are sensitive: q8_0 moves logits ~3%)."""
    path = tiny_models["qwen2-hd64"]
    src = load_model(path)
    prof = random_profile(src, np.random.default_rng(3), k_type="tq", v_type="tq")
    prof.k_layers = ["tq:split=16,hi=8,lo=8"] * src.args.num_hidden_layers
    prof.v_layers = ["tq8"] * src.args.num_hidden_layers
    out = convert(path, tmp_path / "p.gguf", weights="f32", profile=prof, layout=layout).output
    toks = list(range(3, 43))
    ref = logits(plain["qwen2-hd64"], toks)
    got = Model(out).context(ContextParams(n_ctx=64, n_batch=16)).eval(toks, all_logits=True)  # metadata caches
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    q8 = logits(plain["qwen2-hd64"], toks, type_k="q8_0", type_v="q8_0")
    assert rel < 1.5 * np.abs(q8 - ref).max() / np.abs(ref).max(), rel
    assert rel > 0  # the TurboQuant cache really was used


def test_portable_runs_in_llama_cpp_folded_refused(tiny_models, plain, tmp_path):
    from kvconvert.kvcache import llama_cpp_peer as peer

    for name in ("qwen2-hd64", "llama-hd64-tied"):
        src = load_model(tiny_models[name])
        prof = random_profile(src, np.random.default_rng(4))
        port = convert(src, tmp_path / f"{name}-p.gguf", weights="f32", profile=prof).output
        fold = convert(src, tmp_path / f"{name}-f.gguf", weights="f32", profile=prof, layout="folded").output
        toks = list(range(5, 40))
        ref = peer.logits(peer.load(plain[name], n_ctx=64), toks)
        got = peer.logits(peer.load(port, n_ctx=64), toks)
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
        with pytest.raises(ValueError):
            peer.load(fold, n_ctx=64)


# -- calibration --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_cal(tiny_models, tmp_path_factory) -> Calibration:
    out = tmp_path_factory.mktemp("cal") / "qwen.calib.npz"
    return calibrate(tiny_models["qwen2-hd64"], text=TEXT, tokens=256, n_ctx=64, n_windows=2, holdout=1, out=out)


def test_calibration_statistics_match_reference_model(tiny_models, tiny_cal):
    """Sums from the native capture equal the numpy reference model's pre-RoPE q/k/v."""
    from kvconvert.models import reference
    from kvconvert.conversion.calibrate import runtime_gguf

    src = load_model(tiny_models["qwen2-hd64"])

    m = Model(runtime_gguf(src))
    ids = m.tokenize(TEXT, add_bos=False)
    bos = m.source.tokenizer_spec()
    pre = [bos.bos_id] if bos.effective_add_bos() and bos.bos_id is not None else []
    body = 64 - len(pre)
    chunks = [pre + ids[i:i + body] for i in range(0, len(ids) - body + 1, body)][:tiny_cal.n_tokens // 64]
    k_sum, k_sq = np.zeros_like(tiny_cal.k_sum), np.zeros_like(tiny_cal.k_sum)
    q_sq = np.zeros_like(tiny_cal.q_sq)
    Hk = src.args.num_key_value_heads
    for ch in chunks:
        cap = {}
        reference.forward(src.args, src.weights, ch, capture=lambda l, n, x: cap.__setitem__((l, n), x.astype(np.float64)))
        for l in range(src.args.num_hidden_layers):
            k_sum[l] += cap[(l, "k")].sum(0)
            k_sq[l] += (cap[(l, "k")] ** 2).sum(0)
            q = cap[(l, "q")]
            q_sq[l] += (q * q).reshape(len(ch), Hk, -1, q.shape[-1]).sum((0, 2))
    assert tiny_cal.n_tokens == sum(len(c) for c in chunks)
    # the runtime ran the f16 conversion of the model (the reference: float32 weights)
    np.testing.assert_allclose(tiny_cal.k_sum, k_sum, rtol=1e-3, atol=1e-3 * np.abs(k_sum).max())
    np.testing.assert_allclose(tiny_cal.q_sq, q_sq, rtol=1e-3)
    # the tiny Qwen's large k_proj bias shows up as K energy in the mean
    n = tiny_cal.n_tokens
    share = ((k_sum / n) ** 2).sum(-1) / (k_sq / n).sum(-1)  # (L, Hk)
    got = [s.k_mean_share for s in tiny_cal.layer_summary()]
    np.testing.assert_allclose(got, share.mean(-1), rtol=1e-3)
    assert min(got) > 0.2


def test_calibration_resumes_after_cancel(tiny_models, tiny_cal, tmp_path):
    out = tmp_path / "c.npz"
    cancel = threading.Event()
    seen = []

    def progress(done, total, what):
        seen.append(done)
        if done >= 2 * 64:  # progress counts tokens: two 64-token chunks done
            cancel.set()

    with pytest.raises(Cancelled):
        calibrate(tiny_models["qwen2-hd64"], text=TEXT, tokens=256, n_ctx=64, n_windows=2, holdout=1, out=out,
                  progress=progress, cancel=cancel)
    assert not out.exists() and out.with_name(out.name + ".partial").exists()
    seen.clear()
    cal = calibrate(tiny_models["qwen2-hd64"], text=TEXT, tokens=256, n_ctx=64, n_windows=2, holdout=1, out=out,
                    progress=lambda d, t, w: seen.append(d))
    assert seen[0] == 3 * 64  # resumed after the two finished chunks
    np.testing.assert_allclose(cal.k_sum, tiny_cal.k_sum, rtol=1e-6)
    np.testing.assert_array_equal(cal.win_k, tiny_cal.win_k)
    assert not out.with_name(out.name + ".partial").exists()


def test_calibration_data_free(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("KVCONVERT_CACHE", str(tmp_path / "cache"))
    cal = calibrate(tiny_models["llama-hd64-tied"], tokens=128, n_ctx=32, n_windows=1, holdout=1)
    assert "generated" in cal.text_source and cal.n_tokens >= 64
    assert cal.path.exists() and cal.path.is_relative_to(tmp_path / "cache")
    again = calibrate(tiny_models["llama-hd64-tied"], tokens=128, n_ctx=32, n_windows=1, holdout=1)
    assert again.text_sha256 == cal.text_sha256  # the generated text is cached and reused


def test_corrupt_calibration_is_refused(tmp_path, tiny_cal):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(tiny_cal.path.read_bytes()[:1000])
    with pytest.raises(InputError, match="corrupt or unreadable calibration"):
        Calibration.load(bad)
    with pytest.raises(InputError, match="no such calibration file"):
        Calibration.load(tmp_path / "missing.npz")


# -- search --------------------------------------------------------------------------

def test_allocate_is_optimal():
    rng = np.random.default_rng(0)
    costs = [[3.25, 4.25, 4.5, 5.25]] * 4
    errors = [list(np.sort(rng.random(4))[::-1]) for _ in range(4)]
    for budget in (3.25, 4.0, 4.5, 5.0):
        pick = allocate(costs, errors, budget)
        best = min((sum(errors[l][i] for l, i in enumerate(c)), c) for c in itertools.product(range(4), repeat=4)
                   if sum(costs[0][i] for i in c) <= budget * 4 + 1e-9)
        assert sum(errors[l][i] for l, i in enumerate(pick)) == pytest.approx(best[0])
    with pytest.raises(InputError, match="below the minimum"):
        allocate(costs, errors, 3.0)


def test_search_tiny_profile_applies(tiny_models, tiny_cal, tmp_path):
    pol = Policy(name="t", description="test", k_budget=4.5, v_budget=4.5, k_bits=(3, 4, 5), v_bits=(3, 4, 5))
    res = search(tiny_cal, policy=pol, check=True, n_chunks=1)
    prof = res.profile
    kb, vb = prof.bits(tiny_cal.n_ctx)  # the f16 sink position counted at the calibration context
    assert kb <= 4.5 + 1e-9 and vb <= 4.5 + 1e-9
    assert prof.sink_tokens == pol.sink_tokens == 1 and kb == pytest.approx(prof.bits()[0] + 16 / tiny_cal.n_ctx)
    assert prof.measured["k_bpv"] == pytest.approx(kb, abs=1e-4)
    assert {"kld", "ppl", "ppl_f16", "top1"} <= set(prof.measured)
    assert res.candidates[0].proxy_error <= min(c.proxy_error for c in res.candidates[1:] if c.k_bpv <= kb)
    # more bits, less error (per layer, uniform configs)
    for l, e in enumerate(res.k_errors):
        sfx = f":s8={res.scale8.k[l]}"  # the policy's 8-bit scales
        errs = [e.get(f"tq{b}{sfx}", e.get(f"tq{b}{sfx}+smooth")) for b in (3, 4, 5)]
        assert errs[0] > errs[1] > errs[2]
    path = prof.save(tmp_path / "p.json")
    back = load_profile(path)
    assert back.k_layers == prof.k_layers and back.v_layers == prof.v_layers and back.sink_tokens == 1
    out = convert(tiny_models["qwen2-hd64"], tmp_path / "o.gguf", weights="f32", profile=path).output
    meta = Model(out).cache_meta
    assert meta.n_sink == 1 and meta.n_recent is None  # no window unless the profile has one
    assert [c.spec() for c in meta.k_configs] == prof.k_layers
    assert [c.spec() for c in meta.v_configs] == prof.v_layers
    prof.recent = 6  # a profile's recent window travels to the file and the runtime uses it
    out = convert(tiny_models["qwen2-hd64"], tmp_path / "w.gguf", weights="f32", profile=prof).output
    m = Model(out)
    assert m.cache_meta.n_recent == 6 and m.context(n_ctx=64).params.n_recent == 6


def test_policy_scale_modes_reach_the_file(tiny_models, tiny_cal, tmp_path):
    """Policy k_scale_mode / v_scale_mode: the search allocates as with the default scales (the proxies
    use least-squares scales) and writes the chosen configs with each side's scale; the file carries
    them and the runtime uses them (other logits than the default's)."""
    kw = dict(name="t", description="test", k_budget=4.0, v_budget=3.5, k_bits=(3, 4, 5), v_bits=(2, 3, 4))
    plain = search(tiny_cal, policy=Policy(**kw), check=False).profile
    prof = search(tiny_cal, policy=Policy(**kw, k_scale_mode="proj"), check=False).profile
    parse = lambda specs: [tq.KConfig.parse(x, tiny_cal.head_dim) for x in specs]  # noqa: E731
    assert parse(prof.k_layers) == [replace(c, scale="proj") for c in parse(plain.k_layers)]
    assert prof.v_layers == plain.v_layers and prof.bits() == plain.bits()
    files = {}
    for name, p in (("plain", plain), ("proj", prof)):
        files[name] = convert(tiny_models["qwen2-hd64"], tmp_path / f"{name}.gguf", weights="f32", profile=p).output
    meta = Model(files["proj"]).cache_meta
    assert {c.scale for c in meta.k_configs} == {"proj"} and {c.scale for c in meta.v_configs} == {"ls"}
    toks = list(range(5, 45))
    got = {n: Model(f).context(n_ctx=64).eval(toks, all_logits=True) for n, f in files.items()}
    assert not np.array_equal(got["plain"], got["proj"])
    with pytest.raises(InputError, match="v_scale_mode"):
        Policy(**kw, v_scale_mode="nope")


def test_policy_trellis_codes_reach_the_file(tiny_models, tiny_cal, tmp_path):
    """Policy codes "trellis": the same allocation, written with trellis codes where a layer admits
    them (a QJL candidate keeps Lloyd–Max codes); the file carries them and the runtime decodes them
    (its logits differ from the Lloyd–Max file's and are closer to the f32 cache's)."""
    kw = dict(name="t", description="test", k_budget=4.0, v_budget=3.5, k_bits=(3, 4, 5), v_bits=(2, 3, 4))
    plain = search(tiny_cal, policy=Policy(**kw), check=False).profile
    prof = search(tiny_cal, policy=Policy(**kw, codes="trellis"), check=False).profile
    parse = lambda specs: [tq.KConfig.parse(x, tiny_cal.head_dim) for x in specs]  # noqa: E731
    assert parse(prof.k_layers) == [c.with_codes("trellis") for c in parse(plain.k_layers)]
    assert parse(prof.v_layers) == [c.with_codes("trellis") for c in parse(plain.v_layers)]
    assert prof.bits() == plain.bits()
    assert all(c.trellis for c in parse(prof.v_layers))
    files = {n: convert(tiny_models["qwen2-hd64"], tmp_path / f"{n}.gguf", weights="f32", profile=p).output
             for n, p in (("lloyd", plain), ("trellis", prof))}
    meta = Model(files["trellis"]).cache_meta
    assert [c.trellis for c in meta.k_configs] == [c.trellis for c in parse(prof.k_layers)]
    toks = list(range(5, 45))
    exact = Model(files["lloyd"]).context(n_ctx=64, type_k="f32", type_v="f32").eval(toks, all_logits=True)
    got = {n: Model(f).context(n_ctx=64, n_recent=0).eval(toks, all_logits=True) for n, f in files.items()}
    err = {n: float(np.linalg.norm(g - exact)) for n, g in got.items()}
    assert err["trellis"] < err["lloyd"], err
    with pytest.raises(InputError, match="codes"):
        Policy(**kw, codes="lattice")


@pytest.mark.parametrize("layout", ["portable", "folded"])
def test_policy_k_basis_reaches_the_file(tiny_models, tiny_cal, tmp_path, layout, monkeypatch):
    """Policy k_basis: every K option is measured in the plain channels and in the layer's calibrated
    basis, the allocation picks per layer (identity bases where plain won); the file carries the
    profile's bases bit for bit (either layout: they live in the cache's channel order) and the
    runtime applies them (identity bases in their place change the logits). The fit spreads positions
    over the calibration's own 64 tokens here: the untrained tiny model gains nothing from a basis
    fitted for 8k positions, and the test needs layers that chose one."""
    from kvconvert.kvcache import kbasis

    monkeypatch.setattr(kbasis, "FIT_CTX", tiny_cal.n_ctx)

    kw = dict(name="t", description="test", k_budget=3.5, v_budget=3.5, k_bits=(2, 3, 4), v_bits=(2, 3, 4))
    res = search(tiny_cal, policy=Policy(**kw, k_basis=True), check=False)
    prof, L, Hk, d = res.profile, tiny_cal.n_layer, tiny_cal.n_head_kv, tiny_cal.head_dim
    shape = lambda o: (o.cfg.n_hi, o.cfg.hi_bits, o.cfg.lo_bits, o.cfg.qjl_hi, o.cfg.qjl_lo)  # noqa: E731
    for opts in res.k_options:
        assert {shape(o) for o in opts if o.basis} == {shape(o) for o in opts if not o.basis}
    used = kbasis.used(prof.transforms.k_basis, L)
    assert any(used), "no layer of the tiny model chose its basis: the test would check nothing"
    for l in range(L):
        if not used[l]:
            np.testing.assert_array_equal(prof.transforms.k_basis[l], np.broadcast_to(np.eye(d), (Hk, d, d)))
    out = convert(tiny_models["qwen2-hd64"], tmp_path / "kb.gguf", weights="f32", profile=prof, layout=layout).output
    m = Model(out)
    np.testing.assert_array_equal(m.cache_meta.k_basis, prof.transforms.k_basis.astype(np.float32))
    toks = list(range(5, 45))
    got = m.context(n_ctx=64).eval(toks, all_logits=True)
    same = m.context(n_ctx=64).eval(toks, all_logits=True)
    eye = m.context(n_ctx=64, k_basis=kbasis.identity(L, Hk, d)).eval(toks, all_logits=True)
    np.testing.assert_array_equal(got, same)
    assert np.abs(got - eye).max() > 1e-4


def test_policy_k_basis_block_reaches_the_file(tiny_models, tiny_cal, tmp_path):
    """Policy k_basis_block: the profile and the file carry the block, the runtime reads it from the
    file (run with the block turned off the logits change: 40 tokens span three blocks of 16)."""
    kw = dict(name="t", description="test", k_budget=3.5, v_budget=3.5, k_bits=(2, 3, 4), v_bits=(2, 3, 4))
    prof = search(tiny_cal, policy=Policy(**kw, k_basis=True, k_basis_block=16), check=False).profile
    assert prof.transforms.k_basis_block == 16 and any(kbasis.used(prof.transforms.k_basis, tiny_cal.n_layer))
    m = Model(convert(tiny_models["qwen2-hd64"], tmp_path / "kbb.gguf", weights="f32", profile=prof).output)
    assert m.cache_meta.k_basis_block == 16
    toks = list(range(5, 45))
    got = m.context(n_ctx=64).eval(toks, all_logits=True)
    fixed = m.context(n_ctx=64, k_basis_block=0).eval(toks, all_logits=True)
    assert np.abs(got - fixed).max() > 1e-4
    with pytest.raises(InputError, match="k_basis_block needs"):
        Policy(**kw, k_basis_block=16)


@pytest.mark.parametrize("name", ["qwen3-hd64", "mistral-hd64-swa8", "gemma3-hd64-swa8"])
def test_new_families_calibrate_search_convert(tiny_models, plain, tmp_path, name):
    """Issue 18: calibrate → search → convert on QK-norm and sliding-window families. The capture
    is what the cache sees before RoPE (after QK-norm), as in the reference; with QK-norm the
    smoothing is one set per layer, folded into the q_norm/k_norm gains (W_q, W_k untouched),
    and the written file computes the original logits with an f32 cache."""
    from kvconvert.formats.gguf_io import dequantize, open_gguf, tensor_map
    from kvconvert.models import reference

    src = load_model(tiny_models[name])
    cal = calibrate(tiny_models[name], text=TEXT, tokens=192, n_ctx=32, n_windows=1, holdout=1,
                    out=tmp_path / "c.npz")
    cap = {}
    m = Model(plain[name])
    ids = m.tokenize(TEXT, add_bos=False)[:32]
    weights, pairing = m.source.file_order()  # the capture is in the file's channel order
    reference.forward(src.args, weights, ids, pairing=pairing, capture=lambda l, n, x: cap.__setitem__((l, n), x))
    ctx = Model(plain[name]).context(ContextParams(n_ctx=32, n_batch=32, type_k="f32", type_v="f32"))
    q, k, v = ctx.capture()
    ctx.eval(ids)
    np.testing.assert_allclose(k[0, :32].reshape(cap[(0, "k")].shape), cap[(0, "k")], rtol=1e-4, atol=1e-4)
    pol = Policy(name="t", description="test", k_budget=4.5, v_budget=4.5, k_bits=(3, 4, 5), v_bits=(3, 4, 5))
    prof = search(cal, policy=pol, check=True, n_chunks=1).profile
    s = prof.transforms.k_scale
    if src.arch.qk_norm:
        assert np.allclose(s, s[:, :1]) and not np.allclose(s, 1)  # shared by the KV heads of a layer
    out = convert(tiny_models[name], tmp_path / "o.gguf", weights="f32", profile=prof).output
    toks = list(np.random.default_rng(2).integers(0, src.args.vocab_size, 40))
    ref = logits(plain[name], toks)
    assert np.abs(logits(out, toks) - ref).max() <= 2e-5 * np.abs(ref).max()
    if src.arch.qk_norm:
        t0, t1 = tensor_map(open_gguf(plain[name])), tensor_map(open_gguf(out))
        assert np.array_equal(dequantize(t0["blk.0.attn_q.weight"]), dequantize(t1["blk.0.attn_q.weight"]))
        assert not np.allclose(dequantize(t0["blk.0.attn_k_norm.weight"]), dequantize(t1["blk.0.attn_k_norm.weight"]))


# -- bad input -----------------------------------------------------------------------

def test_profile_for_another_model_is_refused(tiny_models, tiny_cal, tmp_path):
    src = load_model(tiny_models["qwen2-hd64"])
    prof = random_profile(src, np.random.default_rng(0))
    with pytest.raises(InputError, match=r"does not match this model \(n_head 4 vs 6; head_dim|n_head"):
        convert(tiny_models["llama-hd64-tied"], tmp_path / "x.gguf", profile=prof)
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_policy_and_bad_profile_files(tmp_path):
    with pytest.raises(InputError, match="unknown profile or policy 'nope'"):
        load_profile("nope")
    bad = tmp_path / "b.json"
    bad.write_text('{"schema": 1, "kind": "profile", "name": "x"}')
    with pytest.raises(InputError, match="not a valid kvconvert profile"):
        load_profile(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot read the profile"):
        load_profile(bad)
    assert {"balanced", "max-quality", "long-context"} <= set(shipped_names())
    for name in ("balanced", "max-quality", "long-context"):
        assert isinstance(load_profile(name), Policy)


def test_proxy_keeps_sink_positions_exact(tiny_cal):
    """The search proxy replays windows that start a sequence: its sink positions are
    exact like the runtime's, so with every position a sink both errors vanish, and
    one sink changes the K error."""
    from kvconvert.conversion.proxy import _Layer
    from kvconvert.conversion.search import Option, pair_order, smoothing_scales

    sc = smoothing_scales(tiny_cal)
    order = pair_order(tiny_cal, sc)
    cfg = tq.KConfig(d=tiny_cal.head_dim, lo_bits=2, hi_bits=2)
    T = tiny_cal.win_k.shape[2]
    errs = {n: _Layer(tiny_cal, 0, sc, order, n_sink=n) for n in (0, 1, T)}
    assert abs(errs[T].k_error(Option(cfg))) <= 1e-7 and errs[T].v_error(cfg, True) == 0  # f32 log-softmax rounding
    assert errs[0].k_error(Option(cfg)) > 1e-4 and errs[0].v_error(cfg, True) > 1e-3
    assert errs[1].k_error(Option(cfg)) != errs[0].k_error(Option(cfg))


def test_bad_sink_tokens_in_profile_files(tmp_path):
    pol = load_profile("balanced").to_json()
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({**pol, "sink_tokens": 100}))
    with pytest.raises(InputError, match="sink_tokens 100 outside 0..64"):
        load_profile(bad)


def test_budget_below_minimum(tiny_cal):
    with pytest.raises(InputError, match="below the minimum"):
        search(tiny_cal, policy="balanced", k_budget=2.0, check=False)


# -- CLI ---------------------------------------------------------------------------

def test_cli_calibrate_search_convert(tiny_models, tiny_cal, tmp_path, capsys):
    from tests.test_bad_input import assert_one_line_error, run_cli

    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    cal = tmp_path / "c.npz"
    assert run_cli(capsys, "calibrate", str(tiny_models["qwen2-hd64"]), "--text", str(text), "--tokens", "128",
                   "--ctx", "64", "-o", str(cal))[0] == 0
    prof = tmp_path / "p.json"
    assert run_cli(capsys, "search", str(cal), "--budget", "4.5", "--no-check", "-o", str(prof))[0] == 0
    k_only = tmp_path / "k.json"
    assert run_cli(capsys, "search", str(cal), "--budget", "4", "--v-budget", "none", "--no-check",
                   "-o", str(k_only))[0] == 0
    assert load_profile(k_only).v_type == "f16" and load_profile(prof).v_type == "tq"
    out = tmp_path / "o.gguf"
    from kvconvert.cli import main

    capsys.readouterr()
    rc = main(["convert", str(tiny_models["qwen2-hd64"]), "--profile", str(prof), "--layout", "folded", "-o", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0 and Model(out).cache_meta.layout == "folded"
    # the summary says which KV cache the profile gave the file, not only the weights
    p = load_profile(prof)
    kb, vb = p.bits(32768)
    assert f"KV cache profile {p.name}" in stdout and f"{kb:.2f}" in stdout and "8-bit scales" in stdout
    n_tc = sum(c.trellis > 0 for c in p.k_configs())
    assert "trellis codes" in stdout and f"{n_tc} of {len(p.k_configs())} layers" in stdout
    assert "KV cache at a 32k context" in stdout
    # bad input: one line, non-zero exit, nothing written
    assert_one_line_error(*run_cli(capsys, "search", str(cal), "--budget", "1.5", "-o", str(tmp_path / "x.json")),
                          "below the minimum")
    assert_one_line_error(*run_cli(capsys, "convert", str(tiny_models["qwen2-hd64"]), "--profile", "nope",
                                   "-o", str(tmp_path / "y.gguf")), "unknown profile or policy")
    assert_one_line_error(*run_cli(capsys, "convert", str(tiny_models["llama-hd64-tied"]), "--profile", str(prof),
                                   "-o", str(tmp_path / "z.gguf")), "does not match this model")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    assert_one_line_error(*run_cli(capsys, "search", str(bad), "-o", str(tmp_path / "w.json")), "corrupt")
    assert not any((tmp_path / n).exists() for n in ("x.json", "y.gguf", "z.gguf", "w.json"))


def test_shipped_calibrated_profiles_are_complete():
    """profiles/<model>-<policy>.json: valid, within their policy's budgets, with provenance and
    the held-out measurements bench/results.py wrote into them."""
    calibrated = [n for n in shipped_names() if isinstance(load_profile(n), Profile)]
    assert calibrated, "no calibrated profiles shipped"
    for name in calibrated:
        prof = load_profile(name)
        pol = load_profile(prof.policy)
        kb, vb = prof.budget_bits()
        assert kb <= pol.k_budget + 1e-9 and vb <= pol.v_budget + 1e-9, name
        assert {"kld", "ppl", "ppl_f16", "top1", "chunks"} <= set(prof.measured), name
        assert prof.provenance["tokens"] > 0 and len(prof.provenance["text_sha256"]) == 64
        t = prof.transforms
        assert t.k_mean is not None and t.k_scale is not None and t.pair_order is not None
        d = prof.model.head_dim  # the configs carry the scale modes of the policy they were searched with
        assert {tq.KConfig.parse(x, d).scale for x in prof.k_layers} == {pol.k_scale_mode}, name
        assert {tq.KConfig.parse(x, d).scale for x in prof.v_layers} <= {pol.v_scale_mode}, name
        for x in prof.k_layers + prof.v_layers:  # and its codes, wherever a layer admits them
            cfg = tq.KConfig.parse(x, d)
            assert cfg == cfg.with_codes(pol.codes), (name, x)
        assert (t.k_basis is not None) == pol.k_basis, name  # searched with the policy's K basis option
