"""The README's main job: `kvconvert` with no arguments on the embedded default
(SmolLM2-135M-Instruct from the local fixture cache, the shipped profile
smollm2-135m-balanced, held-out Austen text)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvconvert.testdata import fixtures
from kvconvert.formats.gguf_io import field_value, open_gguf
from kvconvert.base.paths import cache_dir

DEMO = [sys.executable, "-m", "kvconvert.cli", "demo"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One demo run (1 chunk × 512 tokens to keep it short), stdout redirected to a file."""
    tmp = tmp_path_factory.mktemp("demo")
    out, js, log = tmp / "smol.gguf", tmp / "demo.json", tmp / "demo.log"
    with open(log, "w") as f:
        proc = subprocess.run(DEMO + ["--chunks", "1", "-o", str(out), "--json", str(js)], stdout=f,
                              stderr=subprocess.PIPE, text=True, timeout=600, cwd=tmp)
    return proc, out, json.loads(js.read_text()) if js.exists() else None, log.read_text()


def test_demo_exits_cleanly(demo_run):
    proc, out, res, _ = demo_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.exists() and res is not None


def test_demo_writes_the_profile_into_the_file(demo_run):
    """The written GGUF carries the shipped profile's per-layer TurboQuant caches."""
    from kvconvert.kvcache.kvmeta import CacheMeta
    from kvconvert.models.source import load_model
    from kvconvert.conversion.profile import load_profile

    _, out, _, _ = demo_run
    reader = open_gguf(out)
    assert field_value(reader, "general.architecture") == "llama"
    assert field_value(reader, "llama.block_count") == 30
    assert field_value(reader, "kvconvert.k_cache.type") == "tq"
    assert field_value(reader, "kvconvert.v_cache.type") == "tq"
    prof = load_profile("smollm2-135m-balanced")
    meta = CacheMeta.from_gguf(reader, load_model(out).args)
    assert [c.spec() for c in meta.k_configs] == [c.spec() for c in prof.k_configs()]
    assert [c.spec() for c in meta.v_configs] == [c.spec() for c in prof.v_configs()]


def test_demo_table_numbers(demo_run):
    """f16, q8_0 and the profile's cache measured on the written file: the compressed cache
    is under a third of f16's bytes with KLD > 0 and < 0.1; the f16 row, a second f16-cache run
    scored against the first, has KLD 0 up to the float16 rounding of the saved base log-probs
    (measured 4e-8) and 100% top-1 agreement (the runtime is deterministic)."""
    _, _, res, _ = demo_run
    rows = res["rows"]
    f16, q8, prof = rows["f16"], rows["q8_0"], rows["profile"]
    assert (f16["type_k"], f16["type_v"], q8["type_k"], q8["type_v"]) == ("f16", "f16", "q8_0", "q8_0")
    assert (prof["type_k"], prof["type_v"]) == ("tq", "tq")
    # bytes per token as the runtime allocates them agree with the bits per value shown
    values = 30 * 3 * 64  # layers × KV heads × head dim, per K or V
    for r in rows.values():
        assert r["kv_bytes_per_token"] == pytest.approx((r["k_bits"] + r["v_bits"]) * values / 8, rel=1e-6)
    assert f16["kv_bytes_per_token"] == 4 * values
    assert prof["kv_bytes_per_token"] < f16["kv_bytes_per_token"] / 3
    assert prof["kv_mib_32k"] < f16["kv_mib_32k"] / 3
    # the f16 row repeats the base run: only the base's float16 storage of log-probs separates them
    # (measured 4e-8 to 1.4e-5 depending on the profile's folded weights), far below q8_0's ~1e-3
    assert 0 <= f16["kld"] < 1e-4 and f16["top1"] == 1
    assert 0 < prof["kld"] < 0.1
    assert 0 < q8["kld"] < 0.01
    for r in rows.values():
        assert 3 < r["ppl"] < 100 and r["decode_tok_s"] > 0


def test_demo_plain_conversion_check(demo_run):
    """The written file with an f16 cache is the original's weights in f16: PPL within 2%."""
    _, _, res, _ = demo_run
    c = res["plain_check"]
    assert 3 < c["ppl_original"] < 100
    assert abs(c["ppl_written"] / c["ppl_original"] - 1) < 0.02
    assert c["ppl_written"] == res["rows"]["f16"]["ppl"]
    assert 0 <= c["kld"] < 0.02


def test_demo_output_redirected_reads_as_a_table(demo_run):
    """Redirected to a file: no terminal escapes, the table and summary with the measured numbers."""
    _, out, res, log = demo_run
    prof, q8 = res["rows"]["profile"], res["rows"]["q8_0"]
    assert "\x1b[" not in log
    assert "held-out Austen text (Pride & Prejudice + Persuasion)" in log and "1 × 512 tokens" in log
    for header in ("K / V bits", "KV bytes", "KV MiB", "PPL", "KLD", "top-1", "decode"):
        assert header in log
    assert f"{prof['kv_bytes_per_token']:,}" in log and f"{prof['kld']:.5f}" in log and f"{q8['kld']:.5f}" in log
    assert "Plain-conversion check" in log
    assert f"Wrote {out}" in log and f"q8_0's {q8['kld']:.4f}" in log
    table_lines = [line for line in log.splitlines() if "│" in line]
    assert len(table_lines) >= 3 and max(len(line) for line in table_lines) <= 120


@pytest.mark.parametrize("where", ["fetched", "imported"])
def test_demo_refuses_to_overwrite_its_inputs(where, tmp_path):
    if not fixtures.available(fixtures.SMOLLM2):
        pytest.skip("SmolLM2 fixture not cached (kvconvert fetch)")
    target = (fixtures.smollm2_gguf() if where == "fetched"
              else cache_dir() / "demo" / "SmolLM2-135M-Instruct" / "model.gguf")
    before = target.stat().st_mtime_ns if target.exists() else None
    proc = subprocess.run(DEMO + ["-o", str(target)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0 and "demo's input" in proc.stderr
    assert (target.stat().st_mtime_ns if target.exists() else None) == before


def test_demo_help_explains():
    proc = subprocess.run(DEMO + ["--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for word in ("smollm2-135m-balanced", "--output", "--weights", "--chunks", "--ctx", "held-out"):
        assert word in proc.stdout


def test_no_arguments_runs_the_demo(monkeypatch):
    from kvconvert import cli

    seen = []
    monkeypatch.setattr(cli, "_dispatch", lambda argv: seen.append(argv) or 0)
    assert cli.main([]) == 0 and seen == [["demo"]]
