"""kvconvert: rotation-ready GGUFs and compressed KV caches for local LLMs.

The public API is a set of plain functions; the CLI and the TUI only call them.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Imported eagerly: binding the functions here also keeps `kvconvert.convert`
# the function (the whole job: pipeline.convert), not the submodule of the same name.
from .pipeline import convert  # noqa: E402
from .import_gguf import import_gguf  # noqa: E402
from .model import load_model  # noqa: E402

__all__ = ["__version__", "convert", "import_gguf", "load_model"]
