"""A built wheel (not only an editable install) carries the data and the TUI."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contents(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("kvconvert-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "kvconvert/profiles/README.md" in names
    assert "kvconvert/tui/__init__.py" in names
    assert "kvconvert/kvcache/data/turboquant_codebooks.npz" in names
    assert "kvconvert/models/arch/qwen2.py" in names and "kvconvert/commands/convert.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kvconvert = kvconvert.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
