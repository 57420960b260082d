"""run / eval / bench commands and the samplers, on a tiny model."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from kvconvert import convert
from kvconvert.cli import main

pytest.importorskip("kvconvert._kvc", reason="native runtime not built (pip install -e .)")
from kvconvert.runtime.generate import SamplerParams, generate_tokens, sample  # noqa: E402
from kvconvert.models.source import load_model  # noqa: E402
from kvconvert.models.reference import forward  # noqa: E402
from kvconvert.runtime.engine import Model  # noqa: E402
from tests.tiny import CORPUS  # noqa: E402


@pytest.fixture(scope="module")
def tiny_gguf(tiny_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.gguf"
    convert(tiny_models["qwen2-hd64"], path, weights="f32")
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(" ".join(CORPUS * 6), encoding="utf-8")
    return path


def test_greedy_generation_follows_reference(tiny_gguf):
    model = Model(tiny_gguf)
    prompt = model.tokenize("It is a truth universally")
    greedy = SamplerParams(temperature=0, repeat_penalty=1.0)
    out = list(generate_tokens(model, prompt, 6, greedy, stop_at_eos=False))
    assert len(out) == 6
    m = load_model(tiny_gguf)
    seq = list(prompt)
    for tok in out:  # each greedy token is the reference's argmax given everything before it
        assert tok == int(forward(m.args, m.weights, seq)[-1].argmax())
        seq.append(tok)


def test_samplers():
    rng = np.random.default_rng(0)
    logits = np.array([1.0, 3.0, 2.9, -1.0, 0.5])
    assert sample(logits, SamplerParams(temperature=0, repeat_penalty=1.0), [], rng) == 1
    assert sample(logits, SamplerParams(top_k=1), [], rng) == 1
    # a strong repetition penalty on token 1 hands the greedy choice to token 2
    assert sample(logits, SamplerParams(temperature=0, repeat_penalty=2.0), [1], rng) == 2
    draws = [sample(logits, SamplerParams(temperature=1.0, top_k=0, top_p=1.0, repeat_penalty=1.0), [], rng)
             for _ in range(4000)]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    freq = np.bincount(draws, minlength=5) / len(draws)
    assert np.abs(freq - p).max() < 0.03  # sampling follows softmax(logits / T)
    draws = {sample(logits, SamplerParams(temperature=1.0, top_k=0, top_p=0.5, repeat_penalty=1.0), [], rng)
             for _ in range(200)}
    assert draws <= {1, 2}  # top-p 0.5 keeps only the smallest set reaching half the mass


def test_run_command(capsys, tiny_gguf):
    assert main(["run", str(tiny_gguf), "-p", "It is a truth", "-n", "5", "--temp", "0", "--ctx", "64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("It is a truth") and len(out) > len("It is a truth\n")


def test_eval_kld_against_saved_base(capsys, tiny_gguf, text_file, tmp_path):
    base = tmp_path / "base.logp"
    common = [str(tiny_gguf), "--text", str(text_file), "--ctx", "32", "--chunks", "3", "--json"]
    assert main(["eval", *common, "--save-logits", str(base)]) == 0
    r0 = json.loads(capsys.readouterr().out)
    assert r0["n_chunks"] == 3 and r0["n_scored"] == 3 * 15 and np.isfinite(r0["ppl"]) and r0["ppl"] > 1
    assert main(["eval", *common, "--kld-base", str(base)]) == 0
    r1 = json.loads(capsys.readouterr().out)
    assert r1["kld"] < 1e-4 and r1["top1"] == 1.0 and abs(r1["ppl"] - r0["ppl"]) < 1e-3 * r0["ppl"]
    assert main(["eval", *common, "--kld-base", str(base), "--ctk", "q4_0", "--ctv", "q4_0"]) == 0
    r2 = json.loads(capsys.readouterr().out)
    assert r2["kld"] > 10 * max(r1["kld"], 1e-6) and r2["kv_bytes_per_token"] < r0["kv_bytes_per_token"] / 3
    # a base made with other settings is refused with the reason
    assert main(["eval", *common[:-3], "--chunks", "2", "--kld-base", str(base)]) == 2
    assert "n_chunks" in capsys.readouterr().err


def test_saved_base_is_streamed_and_removed_on_cancel(tiny_gguf, text_file, tmp_path):
    """The base log-probs go to the file chunk by chunk (memory stays one chunk: a whole novel's base
    once held tens of GB), its header counts what follows; a run cancelled midway leaves no file and
    no temporary one."""
    import threading

    from kvconvert.base.progress import Cancelled
    from kvconvert.runtime.evaluate import evaluate, read_base

    text = text_file.read_text()
    base = tmp_path / "base.logp"
    r = evaluate(tiny_gguf, text, n_ctx=32, n_chunks=3, type_k="f16", type_v="f16", save_logits=base)
    header, data = read_base(base)
    assert header["n_positions"] == data.shape[0] == r.n_chunks * 15 and np.all(np.isfinite(data))
    assert base.stat().st_size == data.offset + data.nbytes  # nothing after the last chunk's rows
    cancel, out = threading.Event(), tmp_path / "cancelled.logp"

    def progress(done, total, what):
        if done >= 1:
            cancel.set()

    with pytest.raises(Cancelled):
        evaluate(tiny_gguf, text, n_ctx=32, n_chunks=3, save_logits=out, progress=progress, cancel=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.logp"]


def test_bench_command(capsys, tiny_gguf):
    assert main(["bench", str(tiny_gguf), "--depths", "0,16", "--prefill", "16", "--decode", "4", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["prefill_tokens_per_s"] > 0 and [d["depth"] for d in r["decode"]] == [0, 16]
    assert all(d["tokens_per_s"] > 0 for d in r["decode"]) and r["kv_bytes_per_token"] > 0 and r["peak_rss_mib"] > 0


def test_timed_depths_visits_each_depth_on_one_fill():
    """The timing loop's contract with an engine: decode at depth d starts from exactly d cached
    tokens of the shared stream, fills are not repeated, and progress ends at its total."""
    from kvconvert.runtime.bench import FILL_CHUNK, timed_depths

    cache: list[int] = []
    evals: list[tuple[int, int]] = []  # (context length before the call, tokens in the call)

    def eval_tokens(ids):
        evals.append((len(cache), len(ids)))
        cache.extend(ids)

    cuts: list[int] = []

    def truncate(n):
        cuts.append(n)
        del cache[n:]

    tokens = list(range(3000))
    seen = []
    prefill, rows = timed_depths(eval_tokens, truncate, tokens, [1500, 0, 600], 40, 5,
                                 lambda d, t, w: seen.append((d, t)))
    assert prefill > 0 and [r.depth for r in rows] == [0, 600, 1500]
    singles = [e for e in evals if e[1] == 1]
    assert [e[0] for e in singles] == [0, 1, 2, 3, 4, 600, 601, 602, 603, 604, 1500, 1501, 1502, 1503, 1504]
    filled = sum(n for start, n in evals if n > 1) - 16 - 40  # minus warm-up and prefill
    assert filled == 1500 - 2 * 5 and max(n for _, n in evals) <= max(FILL_CHUNK, 40)  # decoded tokens stay
    assert cache == tokens[:1505]  # the stream is evaluated in order, decoded tokens included
    assert set(cuts) == {0}  # never a rewind but to empty: windowed caches cannot go back far
    assert seen[-1] == (40 + 1490 + 3 * 5, 40 + 1490 + 3 * 5)
    # depths closer together than the decode steps start again from empty
    cache.clear(), evals.clear(), cuts.clear(), seen.clear()
    _, rows = timed_depths(eval_tokens, truncate, tokens, [0, 3], 8, 5, lambda d, t, w: seen.append((d, t)))
    assert [e[0] for e in evals if e[1] == 1] == [0, 1, 2, 3, 4, 3, 4, 5, 6, 7] and cache == tokens[:8]
    assert seen[-1][0] == seen[-1][1] == 8 + 3 + 2 * 5


def test_bench_with_a_recent_window(capsys, tiny_gguf):
    """A TurboQuant cache with a recent window can rewind only 16 positions; the depths loop must not
    need more (24 decode steps per depth here). Before the fix `bench --depths 4096,16384` failed on
    every shipped profile."""
    assert main(["bench", str(tiny_gguf), "--depths", "0,40,80", "--prefill", "16", "--decode", "24",
                 "--ctk", "tq4", "--ctv", "tq4", "--recent", "4", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [d["depth"] for d in r["decode"]] == [0, 40, 80] and all(d["tokens_per_s"] > 0 for d in r["decode"])


def test_eval_bad_text(capsys, tiny_gguf, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00broken")
    assert main(["eval", str(tiny_gguf), "--text", str(bad)]) == 2
    assert "bad.txt" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert main(["eval", str(tiny_gguf), "--text", str(short), "--ctx", "512"]) == 2
    assert "fewer than one chunk" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS builds have the Metal backend")
def test_backend_option(tiny_gguf, capsys, monkeypatch):
    """--backend cpu runs; --backend metal off macOS is one line and exit 2; KVC_BACKEND is restored."""
    monkeypatch.delenv("KVC_BACKEND", raising=False)
    assert main(["run", str(tiny_gguf), "-p", "the", "-n", "2", "--backend", "cpu"]) == 0
    assert main(["run", str(tiny_gguf), "-p", "the", "-n", "2", "--backend", "auto"]) == 0
    capsys.readouterr()
    assert main(["run", str(tiny_gguf), "-p", "the", "-n", "2", "--backend", "metal"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metal" in err and "macOS" in err
    assert "KVC_BACKEND" not in os.environ
