"""Issue 16, deliverable 4: `kvconvert info` shows a GGUF's KV patch."""

from __future__ import annotations

import re

import numpy as np

from kvconvert import convert
from kvconvert.cli import main
from kvconvert.models.source import load_model
from tests.test_calibrate_search import random_profile


def info(capsys, path) -> str:
    assert main(["info", str(path)]) == 0
    return capsys.readouterr().out


def test_info_shows_the_patch(tiny_ggufs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    gg = tiny_ggufs["qwen2-hd64"]
    src = load_model(gg)
    a = src.args
    L, Hk, d = a.num_hidden_layers, a.num_key_value_heads, a.head_dim
    prof = random_profile(src, np.random.default_rng(1), k_type="tq", v_type="tq")
    prof.k_layers = ["tq:split=16,hi=6,lo=4,qjl=hi" if l % 2 else "tq4" for l in range(L)]
    prof.v_layers = ["tq3:scale=proj"] * L
    prof.sink_tokens = 2
    kept = convert(gg, tmp_path / "k.gguf", profile=prof).output
    out = info(capsys, kept)
    assert "K ls (least-squares); V proj (‖y‖²/⟨y, c⟩: inner products unshrunk)" in out
    assert "kept byte for byte" in out and "portable" in out
    assert "applied by the runtime (k_cache.smooth)" in out
    assert "first 2 positions kept in f16" in out
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"│\s+(\d+) │\s+tq .*", out)}
    assert sorted(rows) == list(range(L))
    cells = lambda l: [c.strip() for c in rows[l].split("│")[1:-1]]  # noqa: E731
    # split 16 at 6 bits + 48 at 4 bits, QJL on the hi group: (16·6 + 16 + 16 + 16 + 48·4 + 16) / 64 bits
    assert cells(1) == ["1", "tq", "16", "6", "4", "hi", "fp16", f"{(96 + 48 + 192 + 16) / 64:.2f}", "tq", "—", "—",
                        "3", "fp16", f"{(64 * 3 + 16) / 64:.2f}"]
    assert cells(0)[1:8] == ["tq", "—", "—", "4", "—", "fp16", "4.25"]
    k_bits = np.mean([(96 + 48 + 192 + 16) / 64 if l % 2 else 4.25 for l in range(L)]) + 2 * 16 / 32768
    v_bits = (64 * 3 + 16) / 64 + 2 * 16 / 32768
    mib = L * Hk * d * 32768 * (k_bits + v_bits) / 8 / 2**20
    assert f"K {k_bits:.2f} / V {v_bits:.2f} bits per value at a 32k context" in out
    assert f"KV cache at 32k: {mib:.1f} MiB" in out

    reencoded = convert(gg, tmp_path / "r.gguf", weights="f32", profile=prof).output
    out = info(capsys, reencoded)
    assert "re-encoded by kvconvert" in out and "in the weights" in out
    folded = convert(gg, tmp_path / "f.gguf", weights="f32", profile=prof, layout="folded").output
    out = info(capsys, folded)
    assert "folded" in out and "renamed architecture" in out
    plain = convert(gg, tmp_path / "p.gguf").output
    assert "KV patch: none" in info(capsys, plain)


def test_info_counts_the_trellis_layers_and_their_lloyd_max_outlier_groups(tiny_ggufs, tmp_path, capsys,
                                                                            monkeypatch):
    """The codes row: how many layers carry trellis codes, and how many of them keep a 7–8-bit outlier
    group on Lloyd–Max codes (code=trellis codes each group of 1–6 bits)."""
    monkeypatch.setenv("COLUMNS", "240")
    gg = tiny_ggufs["qwen2-hd64"]
    src = load_model(gg)
    L = src.args.num_hidden_layers
    prof = random_profile(src, np.random.default_rng(2), k_type="tq", v_type="tq")
    prof.k_layers = ["tq:split=8,hi=7,lo=5,code=trellis" if l % 2 else "tq4:code=trellis" for l in range(L)]
    prof.v_layers = ["tq3"] * L
    out = info(capsys, convert(gg, tmp_path / "t.gguf", profile=prof).output)
    assert (f"K bitshift trellis on {L} of {L} layers, {L // 2} of them with a 7–8-bit outlier group on "
            "Lloyd–Max codes") in out
    assert "V Lloyd–Max" in out
