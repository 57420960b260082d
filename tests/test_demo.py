"""The README's main job: `kvconvert` with no arguments on the embedded default."""

from __future__ import annotations

import re
import subprocess
import sys

from kvconvert.gguf_io import field_value, open_gguf


def test_demo_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kvconvert.cli", "demo", "--tokens", "64", "--weights", "q8_0",
                           "-o", str(tmp_path / "smol.gguf")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "wrote" in out and "perplexity" in out and "top-1 agreement" in out
    reader = open_gguf(tmp_path / "smol.gguf")
    assert field_value(reader, "general.architecture") == "llama"
    assert field_value(reader, "llama.block_count") == 30
    # the two perplexities printed are those of a trained model and agree closely
    ppls = [float(m) for m in re.findall(r"(?:original|written) \S+ GGUF\W+([\d.]+)", out)]
    assert len(ppls) == 2 and all(3 < p < 200 for p in ppls)
    assert abs(ppls[0] / ppls[1] - 1) < 0.05


def test_no_arguments_runs_the_demo(monkeypatch):
    from kvconvert import cli

    seen = []
    monkeypatch.setattr(cli, "_dispatch", lambda argv: seen.append(argv) or 0)
    assert cli.main([]) == 0 and seen == [["demo"]]
