"""kvconvert: rotation-ready GGUFs and compressed KV caches for local LLMs.

The public API is a set of plain functions; the CLI and the TUI only call them.
"""

from __future__ import annotations

from ._version import __version__

# Imported eagerly: binding the functions here also keeps `kvconvert.convert`
# the function (the whole job: pipeline.convert), not the submodule of the same name.
from .conversion.pipeline import convert  # noqa: E402
from .conversion.import_gguf import import_gguf  # noqa: E402
from .models.source import load_model  # noqa: E402

__all__ = ["__version__", "convert", "import_gguf", "load_model"]
