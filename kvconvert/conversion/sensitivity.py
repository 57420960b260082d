"""Per-layer sensitivity of the logits to cache error (docs/design.md §5, issue 19).

The search's proxy errors (search.py) are per-layer attention quantities: the KL
divergence of one layer's attention rows for K, the relative error of its
attention output for V. How much of either reaches the model's output differs a
lot from layer to layer (Qwen2.5-Coder-0.5B: the measured end-to-end KLD per unit
of proxy error spans more than an order of magnitude over its 24 layers). This
module measures that factor once per layer and per cache, end to end:

    w_l = (KLD(layer l at the reference codec, all others near-exact) − KLD(all near-exact))
          / proxy error of the reference codec at layer l

with the reference codec uniform TurboQuant at ``ref_bits`` (default 3) and the
other layers at 8 bits (their error is ~10× below what is measured). K runs
with an f16 V cache and V with an f16 K cache. The weights turn proxy errors
into estimates of end-to-end KLD, which is what lets one budget be shared by
K and V (Policy.joint). It costs 2·L + 3 forward passes over ``tokens``
(one chunk of n_ctx by default): optional, asked for by Policy.sensitivity.
"""

from __future__ import annotations

import threading
from typing import Callable
from dataclasses import dataclass

import numpy as np

from ..base.errors import InputError
from ..base.progress import ProgressFn, check_cancel, start_phase
from ..kvcache import turboquant as tq
from ..runtime import metrics
from .calibrate import Calibration

REF_BITS = 3  # the reference codec: uniform TurboQuant at this width on the measured layer
BASE_BITS = 8  # every other layer (near-exact)
FLOOR = 0.05  # a weight is at least this share of the layers' median (noise can make a difference ≤ 0)


@dataclass(frozen=True)
class Sensitivity:
    """End-to-end KLD per unit of proxy error, per layer, for K and for V."""

    k: tuple[float, ...]
    v: tuple[float, ...]
    k_kld: tuple[float, ...]  # measured KLD with only layer l at the reference codec (baseline subtracted)
    v_kld: tuple[float, ...]
    ref_bits: int
    n_tokens: int

    def to_json(self) -> dict:
        return {"k": [round(x, 6) for x in self.k], "v": [round(x, 6) for x in self.v],
                "ref_bits": self.ref_bits, "n_tokens": self.n_tokens}


def weights(kld: np.ndarray, proxy: np.ndarray) -> np.ndarray:
    """Per-layer KLD/proxy ratios, each at least FLOOR × their median (a layer whose measured
    difference is noise still costs something)."""
    kld, proxy = np.asarray(kld, np.float64), np.asarray(proxy, np.float64)
    if kld.shape != proxy.shape or np.any(proxy <= 0):
        raise ValueError("need one positive proxy error per measured layer")
    w = np.maximum(kld, 0) / proxy
    med = float(np.median(w))
    return np.maximum(w, FLOOR * med if med > 0 else 1e-12)


def measure_sensitivity(cal: Calibration, channels: np.ndarray,
                        proxy: Callable[[int, tq.KConfig], tuple[float, float]], *, sink_tokens: int,
                        recent: int = 0, tokens: list[int] | None = None, n_chunks: int = 1, ref_bits: int = REF_BITS,
                        n_threads: int = 0, progress: ProgressFn | None = None,
                        cancel: threading.Event | None = None) -> Sensitivity:
    """Measure per-layer K and V sensitivities on ``tokens`` (default: the calibration's held-out
    chunks, of which ``n_chunks`` are used). The model runs unsmoothed with centered K (the
    calibration's mean) and centered V, with the policy's sinks and recent window. ``channels`` (layers, kv heads, d): the search's HF channel
    permutation (pair order); ``proxy(layer, cfg)``: the search's (K, V) proxy errors of that layer
    for the same codec (search.measure_layer_sensitivity supplies both: the search sits above)."""
    from ..models.source import load_model
    from ..runtime.engine import ContextParams, Model
    from .calibrate import runtime_gguf

    if tokens is None:
        if len(cal.holdout) == 0:
            raise InputError("the sensitivity pass needs token chunks: the calibration has no held-out chunks")
        tokens = [int(t) for row in cal.holdout for t in row]
    src = load_model(cal.model)
    m = Model(runtime_gguf(src), smoothing=False)
    spec = src.tokenizer_spec()
    bos = spec.bos_id if spec.effective_add_bos() else None
    chunks = metrics.chunks(tokens, cal.n_ctx, n_chunks, bos=bos)
    L, d = cal.n_layer, cal.head_dim
    ref, base = tq.KConfig(d=d, lo_bits=ref_bits, hi_bits=ref_bits), tq.KConfig(d=d, lo_bits=BASE_BITS,
                                                                               hi_bits=BASE_BITS)
    first = metrics.first_scored(cal.n_ctx)
    k_mean, v_mean = _file_order(cal.k_mean, m), cal.v_mean.astype(np.float32)
    perm = _file_order(channels.astype(np.float64), m, perm=True)
    n_runs = 2 * L + 3
    start_phase(progress, "sensitivity", "run")
    done = [0]

    def run(k: list[tq.KConfig] | None, v: list[tq.KConfig] | None) -> list[np.ndarray]:
        check_cancel(cancel)
        kw: dict = dict(n_ctx=cal.n_ctx, n_batch=min(cal.n_ctx, 512), n_threads=n_threads, n_sink=sink_tokens,
                        n_recent=recent, float_products=m.quantized_weights,  # else rounding noise (evaluate.py)
                        type_k="tq" if k else "f16", type_v="tq" if v else "f16")
        if k:
            kw.update(tq_k_layers=tuple(k), k_mean=k_mean, k_perm=perm)
        if v:
            kw.update(tq_v_layers=tuple(v), v_mean=v_mean)
        ctx = m.context(ContextParams(**kw))
        out = []
        for c in chunks:
            ctx.reset()
            out.append(np.asarray(ctx.eval(c, all_logits=True)[first:-1], np.float64))
        done[0] += 1
        if progress:
            progress(done[0], n_runs, "one layer at a time")
        return out

    ref_lp = [metrics.log_probs(x) for x in run(None, None)]

    def kld(logits: list[np.ndarray]) -> float:
        return float(np.concatenate([metrics.kld(b, x) for b, x in zip(ref_lp, logits)]).mean())

    b_k, b_v = kld(run([base] * L, None)), kld(run(None, [base] * L))
    k_kld, v_kld, k_proxy, v_proxy = [], [], [], []
    for l in range(L):
        cf = [base] * L
        cf[l] = ref
        k_kld.append(kld(run(cf, None)) - b_k)
        v_kld.append(kld(run(None, cf)) - b_v)
        k_err, v_err = proxy(l, ref)
        k_proxy.append(k_err)
        v_proxy.append(v_err)
    return Sensitivity(tuple(weights(np.array(k_kld), np.array(k_proxy)).tolist()),
                       tuple(weights(np.array(v_kld), np.array(v_proxy)).tolist()),
                       tuple(k_kld), tuple(v_kld), ref_bits, sum(len(c) for c in chunks))


def _file_order(x: np.ndarray, m, perm: bool = False) -> np.ndarray:
    """(..., d) HF channel order → the runtime file's order (interleaved RoPE pairs for llama GGUFs).
    perm=True: x is a channel permutation in HF order, returned as one in the file's order."""
    if m.rope_pairing != "interleaved":
        return np.asarray(x, np.int32 if perm else np.float32)
    P = x.shape[-1] // 2
    if perm:  # HF channel c (pair c mod P, half c // P) → file channel 2·(c mod P) + c // P
        x = np.asarray(x, np.int64)
        return (2 * (x % P) + x // P).astype(np.int32)
    return np.stack([x[..., :P], x[..., P:]], -1).reshape(x.shape).astype(np.float32)
