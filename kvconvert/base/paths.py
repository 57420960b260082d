"""Where kvconvert keeps downloads and reusable intermediate files."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of kvconvert's cache: ``$KVCONVERT_CACHE`` or ``~/.cache/kvconvert``."""
    root = os.environ.get("KVCONVERT_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "kvconvert"
