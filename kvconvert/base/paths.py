"""Where kvconvert keeps downloads and reusable intermediate files."""

from __future__ import annotations

import os
import re
from pathlib import Path


def cache_dir() -> Path:
    """Root of kvconvert's cache: ``$KVCONVERT_CACHE`` or ``~/.cache/kvconvert``."""
    root = os.environ.get("KVCONVERT_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "kvconvert"


_HF_CACHE_DIR = re.compile(r"^models--([A-Za-z0-9][\w.\-]*)--([\w.\-]+)$")


def repo_of_cache_path(path: str | os.PathLike) -> str | None:
    """The Hub repo id of a path inside the huggingface_hub cache
    (``…/models--OWNER--NAME/snapshots/REVISION/…``), else None."""
    parts = Path(path).parts
    for i, part in enumerate(parts[:-1]):
        m = _HF_CACHE_DIR.match(part)
        if m and parts[i + 1] == "snapshots":
            return f"{m.group(1)}/{m.group(2)}"
    return None


def public_name(value: str) -> str:
    """What may be shared about a model or file location: a Hub repo id as is; a path inside the
    Hugging Face cache as its repo id (plus the file name for a file in a snapshot); any other path
    as its last component. Never a local directory."""
    s = str(value)
    if not s or ("/" not in s and os.sep not in s):
        return s
    repo = repo_of_cache_path(s)
    if repo is not None:
        parts = Path(s).parts
        tail = parts[parts.index("snapshots") + 2:] if "snapshots" in parts else ()
        return f"{repo}/{'/'.join(tail)}" if tail else repo
    p = Path(s)
    if not p.is_absolute() and not s.startswith((".", "~")) and len(p.parts) == 2 and not p.exists():
        return s  # OWNER/NAME: a repo id, not a local path
    return p.name
