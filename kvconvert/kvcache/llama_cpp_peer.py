"""llama.cpp (the llama-cpp-python package) as the peer and independent oracle:
it loads a GGUF the way every user's tool will and computes logits with its own
kernels. Used by the tests and bench/peer.py; not needed at run time."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from .types import STANDARD

GGML_TYPES = {name: t.ggml_type for name, t in STANDARD.items()}  # llama.cpp has every standard type


@contextlib.contextmanager
def quiet():
    """llama.cpp prints to fd 2 from C; keep our output readable."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(2)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def load(path: Path, n_ctx: int = 512, *, logits_all: bool = True, vocab_only: bool = False, n_batch: int | None = None,
         type_k: str = "f32", type_v: str = "f32", n_threads: int = 2, **kw):
    import llama_cpp

    n_batch = n_batch or n_ctx
    with quiet():
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                               logits_all=logits_all, vocab_only=vocab_only, type_k=GGML_TYPES[type_k],
                               type_v=GGML_TYPES[type_v], n_threads=n_threads, n_threads_batch=n_threads,
                               verbose=False, seed=0, **kw)


def logits(llm, tokens) -> np.ndarray:
    """Logits (T, vocab) for tokens evaluated from position 0 (needs logits_all)."""
    llm.reset()
    with quiet():
        llm.eval([int(t) for t in tokens])
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def tokenize(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
