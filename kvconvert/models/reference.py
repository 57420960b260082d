"""Reference forward pass in numpy: the oracle of every other test.

Deliberately plain: one function per block, no cache, no fusion. What it
computes comes from the architecture's description (``Architecture.block`` and
the tensors' slots, models/arch/base.py), the same one the native runtime is
given. Weights are read by Hugging Face name from any object with
``get(name) -> ndarray`` (HF row order for pairing "neox"; a llama GGUF's own
order for "interleaved").
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from .arch import from_hf
from .config import ModelArgs
from .rope import apply_rope


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


class _Model:
    """The weights of one model by (layer, slot), with its Block (arch/base.py): what to compute."""

    def __init__(self, args: ModelArgs, w: _Typed):
        arch = from_hf(args.architecture)
        self.args, self.w, self.block = args, w, arch.block(args)
        self.names = {(s.layer, s.slot): s.hf for s in arch.tensors(args)}

    def has(self, slot: str, layer: int = -1) -> bool:
        return (layer, slot) in self.names

    def __call__(self, slot: str, layer: int = -1) -> np.ndarray:
        return self.w(self.names[(layer, slot)])

    def norm(self, x: np.ndarray, slot: str, layer: int = -1) -> np.ndarray:
        return rms_norm(x, self.block.norm_offset + self(slot, layer), self.args.rms_norm_eps)

    def linear(self, x: np.ndarray, layer: int, w: str, b: str) -> np.ndarray:
        y = x @ self(w, layer).T
        return y + self(b, layer) if self.has(b, layer) else y


def attention(m: _Model, layer: int, x: np.ndarray, positions: np.ndarray, pairing: str,
              capture: Capture | None, kv_round: KVRound | None = None) -> np.ndarray:
    """Causal GQA self-attention of x (T, hidden), windowed on sliding layers."""
    args, blk = m.args, m.block
    t, d = x.shape[0], args.head_dim
    q = m.linear(x, layer, "wq", "bq").reshape(t, args.num_attention_heads, d)
    k = m.linear(x, layer, "wk", "bk").reshape(t, args.num_key_value_heads, d)
    v = m.linear(x, layer, "wv", "bv").reshape(t, args.num_key_value_heads, d)
    if blk.qk_norm:  # per head, before RoPE
        q, k = m.norm(q, "q_norm", layer), m.norm(k, "k_norm", layer)
    if capture:  # what the cache sees before RoPE
        capture(layer, "q", q)
        capture(layer, "k", k)
        capture(layer, "v", v)
    freqs = blk.inv_freq[layer]
    q = apply_rope(q, positions, freqs, pairing)
    k = apply_rope(k, positions, freqs, pairing)
    if kv_round:
        k, v = kv_round("k", k), kv_round("v", v)
    k = np.repeat(k, args.n_rep, axis=1)  # (T, H, d): query head h uses kv head h // n_rep
    v = np.repeat(v, args.n_rep, axis=1)
    scores = np.einsum("thd,shd->hts", q, k) * np.asarray(blk.attn_scale, dtype=q.dtype)
    dist = positions[:, None] - positions[None, :]
    mask = dist < 0
    if blk.windows[layer]:
        mask |= dist >= blk.windows[layer]
    scores[:, mask] = -np.inf
    out = np.einsum("hts,shd->thd", softmax(scores), v).reshape(t, args.q_dim)
    return m.linear(out, layer, "wo", "bo")


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    c = np.asarray(np.sqrt(2.0 / np.pi), dtype=x.dtype)
    return 0.5 * x * (1.0 + np.tanh(c * (x + np.asarray(0.044715, dtype=x.dtype) * x * x * x)))


ACT = {"silu": silu, "gelu_tanh": gelu_tanh}


def mlp(m: _Model, layer: int, x: np.ndarray) -> np.ndarray:
    gate = x @ m("w_gate", layer).T
    up = x @ m("w_up", layer).T
    return (ACT[m.block.activation](gate) * up) @ m("w_down", layer).T


def forward(args: ModelArgs, weights: Weights, tokens: np.ndarray | list[int], *,
            pairing: str = "neox", dtype: type = np.float32, capture: Capture | None = None,
            kv_round: KVRound | None = None) -> np.ndarray:
    """Logits (T, vocab) for a token sequence starting at position 0."""
    dt = np.dtype(dtype)
    m = _Model(args, _Typed(weights, dt))
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError("tokens must be a non-empty 1-D sequence")
    if tokens.min() < 0 or tokens.max() >= args.vocab_size:
        raise ValueError(f"token id out of range [0, {args.vocab_size})")
    positions = np.arange(tokens.size)
    post = m.block.post_norms
    x = m("tok_embd")[tokens] * np.asarray(m.block.embed_scale, dtype=dt)
    for layer in range(args.num_hidden_layers):
        h = attention(m, layer, m.norm(x, "attn_norm", layer), positions, pairing, capture, kv_round)
        x = x + (m.norm(h, "attn_post_norm", layer) if post else h)
        h = mlp(m, layer, m.norm(x, "ffn_norm", layer))
        x = x + (m.norm(h, "ffn_post_norm", layer) if post else h)
    x = m.norm(x, "output_norm")
    head = m("output") if m.has("output") else m("tok_embd")
    return x @ head.T


def token_nll(logits: np.ndarray, tokens: np.ndarray | list[int]) -> np.ndarray:
    """Negative log-likelihood of tokens[1:] under logits[:-1], float64 (T-1,)."""
    tokens = np.asarray(tokens)
    lp = log_softmax(logits[:-1].astype(np.float64))
    return -lp[np.arange(tokens.size - 1), tokens[1:]]


def perplexity(logits: np.ndarray, tokens: np.ndarray | list[int]) -> float:
    return float(np.exp(token_nll(logits, tokens).mean()))
