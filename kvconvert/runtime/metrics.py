"""Perplexity, KL divergence and top-1 agreement, defined as llama.cpp's
perplexity tool defines them, so numbers are comparable with the peer.

Text is split into chunks of n_ctx tokens; each chunk is evaluated from an
empty cache (its first token replaced by BOS when the model adds one) and only
the second half is scored: the logits at position i predict token i+1 for
i in [n_ctx/2, n_ctx-1). PPL = exp(mean NLL), reported with the standard error
of the mean NLL carried through exp (as llama.cpp prints "PPL ± err").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Score:
    n: int
    mean_nll: float
    stderr_nll: float

    @property
    def ppl(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def ppl_err(self) -> float:
        return self.ppl * self.stderr_nll


def chunks(tokens: list[int] | np.ndarray, n_ctx: int, n_chunks: int | None = None,
           bos: int | None = None) -> list[np.ndarray]:
    tokens = np.asarray(tokens, dtype=np.int64)
    available = tokens.size // n_ctx
    if available < 1:
        raise ValueError(f"text has {tokens.size} tokens, fewer than one chunk of {n_ctx}")
    n = available if n_chunks is None else min(n_chunks, available)
    out = []
    for c in range(n):
        chunk = tokens[c * n_ctx:(c + 1) * n_ctx].copy()
        if bos is not None:
            chunk[0] = bos
        out.append(chunk)
    return out


def first_scored(n_ctx: int) -> int:
    return n_ctx // 2


def log_probs(logits: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis, float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def chunk_nll(logits: np.ndarray, chunk: np.ndarray) -> np.ndarray:
    """NLL of the scored tokens of one chunk; logits (n_ctx, vocab)."""
    f = first_scored(len(chunk))
    lp = log_probs(logits[f:-1])
    return -lp[np.arange(lp.shape[0]), chunk[f + 1:]]


def score(nll: np.ndarray) -> Score:
    nll = np.asarray(nll, dtype=np.float64)
    n = nll.size
    se = float(nll.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return Score(n, float(nll.mean()), se)


def kld(base_logprobs: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(base ‖ test) per position; base given as log-probs (positions, vocab)."""
    lq = log_probs(logits)
    lp = base_logprobs.astype(np.float64)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)
