"""Reference forward pass in numpy: the oracle of every other test.

Deliberately plain: one function per block, no cache, no fusion. Weights are
read by Hugging Face name from any object with ``get(name) -> ndarray`` (HF
row order for pairing "neox"; a llama GGUF's own order for "interleaved").
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from .arch import from_hf
from .config import ModelArgs
from ..formats.gguf_keys import HF
from .rope import apply_rope, inv_freq


class Weights(Protocol):
    def get(self, name: str) -> np.ndarray: ...


# capture(layer, name, array): optional hook to observe q/k/v (pre-RoPE) per layer
Capture = Callable[[int, str, np.ndarray], None]
# kv_round(name, array): what a KV cache stores for "k" (post-RoPE) or "v", (T, Hk, D) -> same shape
KVRound = Callable[[str, np.ndarray], np.ndarray]


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(var + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


class _Typed:
    """Weights cast to the compute dtype on access."""

    def __init__(self, w: Weights, dtype: np.dtype):
        self.w, self.dtype = w, dtype

    def __call__(self, name: str) -> np.ndarray:
        return np.asarray(self.w.get(name)).astype(self.dtype, copy=False)

    def has(self, name: str) -> bool:
        has = getattr(self.w, "has", None)
        if has is not None:
            return has(name)
        try:
            self.w.get(name)
            return True
        except KeyError:
            return False


def _linear(x: np.ndarray, w: _Typed, prefix: str, bias: bool) -> np.ndarray:
    y = x @ w(prefix + ".weight").T
    if bias:
        y = y + w(prefix + ".bias")
    return y


def attention(args: ModelArgs, w: _Typed, layer: int, x: np.ndarray, positions: np.ndarray,
              freqs: np.ndarray, pairing: str, capture: Capture | None,
              kv_round: KVRound | None = None) -> np.ndarray:
    """Causal GQA self-attention of x (T, hidden)."""
    t, d = x.shape[0], args.head_dim
    arch = from_hf(args.architecture)
    qkv_bias = arch.has_qkv_bias(args)
    q = _linear(x, w, HF.Q.format(bid=layer), qkv_bias).reshape(t, args.num_attention_heads, d)
    k = _linear(x, w, HF.K.format(bid=layer), qkv_bias).reshape(t, args.num_key_value_heads, d)
    v = _linear(x, w, HF.V.format(bid=layer), qkv_bias).reshape(t, args.num_key_value_heads, d)
    if capture:
        capture(layer, "q", q)
        capture(layer, "k", k)
        capture(layer, "v", v)
    q = apply_rope(q, positions, freqs, pairing)
    k = apply_rope(k, positions, freqs, pairing)
    if kv_round:
        k, v = kv_round("k", k), kv_round("v", v)
    k = np.repeat(k, args.n_rep, axis=1)  # (T, H, d): query head h uses kv head h // n_rep
    v = np.repeat(v, args.n_rep, axis=1)
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(d)
    mask = np.triu(np.ones((t, t), dtype=bool), k=1)
    scores[:, mask] = -np.inf
    out = np.einsum("hts,shd->thd", softmax(scores), v).reshape(t, args.q_dim)
    return _linear(out, w, HF.O.format(bid=layer), arch.has_o_bias(args))


def mlp(w: _Typed, layer: int, x: np.ndarray) -> np.ndarray:
    gate = x @ w(HF.GATE.format(bid=layer)).T
    up = x @ w(HF.UP.format(bid=layer)).T
    return (silu(gate) * up) @ w(HF.DOWN.format(bid=layer)).T


def forward(args: ModelArgs, weights: Weights, tokens: np.ndarray | list[int], *,
            pairing: str = "neox", dtype: type = np.float32, capture: Capture | None = None,
            kv_round: KVRound | None = None) -> np.ndarray:
    """Logits (T, vocab) for a token sequence starting at position 0."""
    dt = np.dtype(dtype)
    w = _Typed(weights, dt)
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError("tokens must be a non-empty 1-D sequence")
    if tokens.min() < 0 or tokens.max() >= args.vocab_size:
        raise ValueError(f"token id out of range [0, {args.vocab_size})")
    positions = np.arange(tokens.size)
    freqs = inv_freq(args)
    x = w(HF.EMBED)[tokens]
    for layer in range(args.num_hidden_layers):
        h = rms_norm(x, w(HF.ATTN_NORM.format(bid=layer)), args.rms_norm_eps)
        x = x + attention(args, w, layer, h, positions, freqs, pairing, capture, kv_round)
        h = rms_norm(x, w(HF.FFN_NORM.format(bid=layer)), args.rms_norm_eps)
        x = x + mlp(w, layer, h)
    x = rms_norm(x, w(HF.NORM), args.rms_norm_eps)
    head = w(HF.EMBED) if args.tie_word_embeddings else w(HF.LM_HEAD)
    return x @ head.T


def token_nll(logits: np.ndarray, tokens: np.ndarray | list[int]) -> np.ndarray:
    """Negative log-likelihood of tokens[1:] under logits[:-1], float64 (T-1,)."""
    tokens = np.asarray(tokens)
    lp = log_softmax(logits[:-1].astype(np.float64))
    return -lp[np.arange(tokens.size - 1), tokens[1:]]


def perplexity(logits: np.ndarray, tokens: np.ndarray | list[int]) -> float:
    return float(np.exp(token_nll(logits, tokens).mean()))
