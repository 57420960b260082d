"""The pure helpers of the issue-19 long-context benchmarks (bench/long_quality.py, bench/needle.py,
bench/agreement.py): which logits rows are scored, how a pass is cut into feed slices, needle
placement and answer parsing, and the agreement counts. No model runs here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
# bench/ on sys.path only while these import: left there, its kernels.py would shadow the
# `kernels` package that transformers looks for in every later test
sys.path.insert(0, str(BENCH))
try:
    import agreement  # noqa: E402
    import long_quality  # noqa: E402
    import longctx  # noqa: E402
    import needle  # noqa: E402
finally:
    sys.path.remove(str(BENCH))


def test_scored_rows_predict_the_last_n_tokens():
    rows = long_quality.scored_rows([8192, 16384], 1024)
    assert rows == {8192: (7167, 8191), 16384: (15359, 16383)}
    a, b = rows[8192]
    assert b - a == 1024 and b + 1 == 8192  # rows a..b-1 predict tokens a+1..b, the window's last 1024
    with pytest.raises(ValueError):
        long_quality.scored_rows([512], 512)


def test_segments_cover_the_pass_and_never_straddle_a_scored_range():
    rows = long_quality.scored_rows([1000, 2048], 300)
    segs = long_quality.segments(2048, rows, step=512)
    assert segs[0][0] == 0 and segs[-1][1] == 2048
    assert all(e0 == s1 for (_, e0, _), (s1, _, _) in zip(segs, segs[1:]))
    assert all(0 < e - s <= 512 for s, e, _ in segs)
    wanted = sum(e - s for s, e, w in segs if w)
    assert wanted == 2 * 300
    for s, e, w in segs:
        inside = [a <= s and e <= b for a, b in rows.values()]
        overlap = [s < b and a < e for a, b in rows.values()]
        assert w == any(inside) and inside == overlap  # wholly in or wholly out


def test_p999():
    assert long_quality.p999([0.0] * 999 + [5.0]) == pytest.approx(0.005, abs=1e-9)


def test_agreement_counts():
    assert agreement.compare([1, 2, 3, 4], [1, 2, 9, 4]) == (2, 3, 4)
    assert agreement.compare([1, 2], [1, 2, 3]) == (2, 2, 2)
    assert agreement.cut([5, 6, 7, 6], {7}) == [5, 6, 7]
    s = agreement.stats([[1, 2, 7, 0], [3, 3]], [[1, 2, 7, 9], [4, 3]], {7})
    assert s["prefix_mean"] == 1.5 and s["identical"] == 1 and s["share_same"] == pytest.approx(4 / 5)
    assert len(agreement.PROMPTS) == 20


def test_needle_helpers():
    assert needle.answer_key("48213<|im_end|>") == "48213"
    assert needle.answer_key("The key is 915610.") == "915610"
    assert needle.answer_key("no idea") is None
    assert [needle.bucket(x) for x in (0.0, 0.3, 0.5, 0.99, 1.0)] == ["0-25%", "25-50%", "50-75%", "75-100%",
                                                                     "75-100%"]
    p0, p1 = needle.place(needle.FRACTIONS, 6, 0, 32768), needle.place(needle.FRACTIONS, 6, 1, 32768)
    assert len(p0) == 6 and p0 == sorted(p0) and all(b > a for a, b in zip(p0, p1)) and max(p1) < 32768


def test_build_document_inserts_needles_at_paragraph_boundaries():
    paras = [[1, 1, 1], [2, 2], [3, 3, 3, 3]]
    doc, starts = needle.build_document(paras, [(4, [9, 9]), (0, [8])], 20)
    assert len(doc) == 20
    assert doc[starts[0]] == 8 and starts[0] == 0
    assert doc[starts[1]:starts[1] + 2] == [9, 9] and starts[1] >= 4
    assert doc[:starts[1]] == [8, 1, 1, 1]  # the first boundary at or after position 4


def test_configs():
    cs = longctx.parse_configs("all")
    assert [c.name for c in cs] == ["f16", "q8_0", "balanced", "long-context", "max-quality", "balanced+w32",
                                    "long-context+w32", "max-quality+w32", "llama-f16", "llama-q8_0", "llama-q4_0"]
    assert longctx.CONFIGS["tq3+qjl-k"].type_k == "tq3:qjl=lo"
    from kvconvert.kvcache.turboquant import KConfig

    for name in ("tq4-k", "tq3+qjl-k", "tq3-k", "tq2+qjl-k"):
        cfg = KConfig.parse(longctx.CONFIGS[name].type_k, 64)
        assert cfg.qjl_lo == ("qjl" in name)


def test_config_names_match_their_window_and_sinks():
    """A "+wN" config runs with an N-position recent window and "+sN" with N sinks; a plain profile
    config runs without a window (so the tables compare what their labels say)."""
    import re

    for name, cfg in longctx.CONFIGS.items():
        w = re.search(r"\+w(\d+)", name)
        s = re.search(r"\+s(\d+)", name)
        if cfg.engine == "kvc" and cfg.file != "base":
            assert cfg.recent == (int(w.group(1)) if w else 0), name
        assert cfg.sink == (int(s.group(1)) if s else None), name
        assert (w is None) == (f"window {cfg.recent}" not in cfg.label), name


def test_profile_json_configs(tmp_path):
    """A profile JSON on disk is a config ("PATH.json", "PATH.json+wN" with a recent window); a "+w"
    inside a directory name is part of the path; unknown names are refused."""
    d = tmp_path / "a+wb"
    d.mkdir()
    prof = d / "p.json"
    prof.write_text("{}")
    got = longctx.parse_configs(f"{prof}+w16,{prof},f16")
    assert [(c.file, c.recent, c.study) for c in got[:2]] == [(str(prof), 16, True), (str(prof), None, True)]
    assert got[2] is longctx.CONFIGS["f16"]
    with pytest.raises(SystemExit, match="unknown config"):
        longctx.parse_configs(str(d / "missing.json"))


def test_model_switch_and_per_model_tables():
    """--model points the files at another fixture's slug (and back); each table shows only its
    model's records, records from before --model counting as Qwen's; an unknown model is refused."""
    rec = dict(config="f16", label="kvconvert f16", length=4096, scored=1024, start=0, ppl=20.0, ppl_err=0.1,
               kld=0.0, kld_p999=0.0, top1=1.0)
    recs = [rec, {**rec, "model": "smollm2-135m", "ppl": 21.5}]
    try:
        assert longctx.slug() == "qwen2.5-coder-0.5b"
        assert "| 20.000" in long_quality.table(recs) and "21.500" not in long_quality.table(recs)
        longctx.use_model("smollm2")
        assert longctx.slug() == "smollm2-135m"
        assert "| 21.500" in long_quality.table(recs) and "20.000" not in long_quality.table(recs)
        ask = dict(config="f16", doc=0, context=4096, depth=0.5, colour="red", correct=True)
        asks = [ask, {**ask, "model": "smollm2-135m", "correct": False}]
        assert "| 0/1 |" in needle.table(asks)
        longctx.use_model("qwen")
        assert "| 1/1 |" in needle.table(asks)
        with pytest.raises(SystemExit, match="unknown model"):
            longctx.use_model("gpt2")
    finally:
        longctx.use_model("qwen")
