"""What kvconvert keeps in its cache directory (paths.cache_dir), and freeing it.

Everything in the cache can be made again; ``clean`` removes by kind:

- ``copy``: f16 GGUF copies of Hugging Face models the runtime cannot read as they are
  (calibration/*.f16.gguf);
- ``calibration``: calibration statistics and sample windows (calibration/*.calib.npz, with
  their resume checkpoints) and the model-generated calibration text (calibration/gen-*.json);
- ``demo``: the demo's imported model and outputs (demo/);
- ``fixtures``: the real test models and text (fixtures/, `kvconvert fetch` downloads them again);
- ``other``: anything else (bench/, results/ of the benchmark scripts, the llama.cpp wheel cache).

Temporary files of writers that are still running are never touched (atomic.py's names).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .paths import cache_dir

KINDS = ("copy", "calibration", "demo", "fixtures", "other")
DEFAULT_CLEAN = ("copy", "calibration", "demo")  # what `kvconvert cache clean` frees without --kind
_LIVE_PART = re.compile(r"^\..+?\.(\d+)\.[a-z0-9_]+\.part$")  # atomic.py's temporary names: .NAME.PID.RAND.part


@dataclass
class Entry:
    path: Path
    kind: str
    bytes: int
    modified: float  # seconds since the epoch

    @property
    def age_days(self) -> float:
        return max(0.0, (time.time() - self.modified) / 86400)


def _size(path: Path) -> tuple[int, float]:
    if path.is_symlink() or not path.is_dir():
        st = path.lstat()
        return st.st_size, st.st_mtime
    total, newest = 0, path.lstat().st_mtime
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            total += st.st_size
            newest = max(newest, st.st_mtime)
    return total, newest


def _kind(rel: Path) -> str:
    top = rel.parts[0]
    if top == "calibration":
        return "copy" if rel.name.endswith(".f16.gguf") else "calibration"
    return top if top in ("demo", "fixtures") else "other"


def _in_use(path: Path) -> bool:
    """A temporary file of a writer that still runs."""
    m = _LIVE_PART.match(path.name)
    if not m:
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True


def entries(root: Path | None = None) -> list[Entry]:
    """The cache's contents: each file of calibration/ on its own, every other top-level
    directory (one per fixture or demo model) as one entry. Largest first."""
    root = root or cache_dir()
    out: list[Entry] = []
    if not root.is_dir():
        return out
    for top in sorted(root.iterdir()):
        children = sorted(top.iterdir()) if top.is_dir() and not top.is_symlink() else [top]
        if top.name not in ("calibration", "fixtures", "demo"):
            children = [top]
        for p in children:
            if _in_use(p):
                continue
            size, mtime = _size(p)
            out.append(Entry(p, _kind(p.relative_to(root)), size, mtime))
    return sorted(out, key=lambda e: -e.bytes)


def clean(kinds=DEFAULT_CLEAN, older_than_days: float | None = None, dry_run: bool = False,
          root: Path | None = None) -> list[Entry]:
    """Remove the entries of ``kinds`` (optionally only those untouched for ``older_than_days``);
    returns what was (or, with dry_run, would be) removed."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        from .errors import InputError

        raise InputError(f"unknown cache kind {sorted(unknown)[0]!r} (choose from {', '.join(KINDS)})")
    gone = [e for e in entries(root) if e.kind in kinds and
            (older_than_days is None or e.age_days >= older_than_days)]
    if not dry_run:
        for e in gone:
            if e.path.is_dir() and not e.path.is_symlink():
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                e.path.unlink(missing_ok=True)
    return gone
