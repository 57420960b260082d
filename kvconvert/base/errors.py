"""Error types shared by the library, the CLI and the TUI.

Every error a user can cause (bad file, unknown architecture, missing
download, unwritable output) is a ``KVConvertError`` whose message is one line
saying what is wrong, with which file, and what to do. The CLI prints that line
and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class KVConvertError(Exception):
    """A problem the user can fix; ``str(err)`` is the whole message."""

    exit_code = 2


class InputError(KVConvertError):
    """A model, GGUF, profile or text file that cannot be used as given."""


class UnsupportedArchitecture(InputError):
    """A model whose architecture kvconvert does not know."""


class OutputError(KVConvertError):
    """The output path cannot be written."""


class FixtureError(KVConvertError):
    """A real model or text could not be fetched from the package registries."""
