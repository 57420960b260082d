"""llama.cpp as a test oracle (skips cleanly where the package is missing;
scripts/test.sh installs it)."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp", reason="scripts/test.sh installs llama-cpp-python")

from kvconvert.kvcache.llama_cpp_peer import load, logits, quiet, tokenize  # noqa: E402,F401
