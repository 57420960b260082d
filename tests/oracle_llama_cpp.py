"""llama.cpp (llama-cpp-python) as an independent oracle: it loads a GGUF the
way every user's tool will, and computes logits with its own kernels."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="scripts/test.sh installs llama-cpp-python")

GGML_TYPE_F32 = 0


@contextlib.contextmanager
def _quiet():
    """llama.cpp prints to fd 2 from C; keep test output readable."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(2)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def load(path: Path, n_ctx: int = 512, vocab_only: bool = False):
    with _quiet():
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                               logits_all=True, vocab_only=vocab_only, type_k=GGML_TYPE_F32,
                               type_v=GGML_TYPE_F32, n_threads=2, n_threads_batch=2, verbose=False,
                               seed=0)


def logits(llm, tokens: list[int]) -> np.ndarray:
    """Logits (T, vocab) for tokens evaluated from position 0 (f32 KV cache)."""
    llm.reset()
    with _quiet():
        llm.eval(list(tokens))
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def tokenize(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
