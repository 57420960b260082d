"""The end-to-end check of a converted file: its own KV caches against an f16 cache.

A file that carries a compressed-cache profile is evaluated twice on held-out
text with kvconvert's runtime: once with f16 K/V caches (the reference: same
weights, exact cache) and once with the caches its metadata describes. KLD and
top-1 agreement are llama.cpp's definitions (evaluate.py); PPL of both runs is
kept so a summary can show the change.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from ..base.errors import InputError
from ..base.progress import ProgressFn, check_cancel, start_phase


@dataclass
class CheckResult:
    kld: float
    kld_err: float
    top1: float
    ppl: float
    ppl_err: float
    ppl_f16: float
    text: str  # what the held-out text was
    text_sha256: str
    n_ctx: int
    chunks: int
    weights: str  # the checked file's weight type
    max_kld: float | None = None  # the policy's threshold, if any
    # both runs computed the weight products with unrounded activations (a quantized-weight file:
    # with activations rounded to 8 bits, any change of the cache re-rounds every later layer's
    # activations, and the two runs would differ by that noise too — kvc.h, float_products)
    float_products: bool = False

    @property
    def passed(self) -> bool | None:
        return None if self.max_kld is None else self.kld <= self.max_kld

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def holdout_tokens(cal) -> list[int]:
    """A calibration's held-out chunks as one token stream (BOS excluded)."""
    return [int(t) for row in cal.holdout for t in row]


def check_file(path: str | os.PathLike, *, text: str | None = None, token_ids=None, text_name: str = "held-out text",
               n_ctx: int = 512, n_chunks: int | None = None, n_threads: int = 0, max_kld: float | None = None,
               weights: str = "", progress: ProgressFn | None = None,
               cancel: threading.Event | None = None) -> CheckResult:
    """Evaluate the GGUF at ``path`` with f16 caches, then with its own caches, on ``text``
    (or ``token_ids``); KLD/top-1 of the second run against the first. A file with quantized
    weights runs both with float products, so the KLD is the cache's own error."""
    from ..runtime.evaluate import evaluate
    from ..runtime.engine import Model

    if text is None and token_ids is None:
        raise InputError("no held-out text to check the profile on")
    m = Model(path)
    fp = m.quantized_weights
    start_phase(progress, "check", "chunk")

    def step(run: int):
        def report(done: float, total: float, what: str) -> None:
            if progress:
                progress(run * total + done, 2 * total, ("f16 cache" if run == 0 else "compressed cache") + f": {what}")
        return report

    src_text = text if text is not None else text_name  # with token_ids, the text only names them
    with tempfile.TemporaryDirectory(prefix="kvconvert-check-") as tmp:
        base = Path(tmp) / "base.logits"
        ref = evaluate(m, src_text, text_name=text_name, n_ctx=n_ctx, n_chunks=n_chunks, type_k="f16", type_v="f16",
                       n_threads=n_threads, float_products=fp, save_logits=base, token_ids=token_ids, progress=step(0),
                       cancel=cancel)
        check_cancel(cancel)
        res = evaluate(m, src_text, text_name=text_name, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=n_threads,
                       float_products=fp, kld_base=base, token_ids=token_ids, progress=step(1), cancel=cancel)
    return CheckResult(kld=float(res.kld), kld_err=float(res.kld_err), top1=float(res.top1), ppl=float(res.ppl),
                       ppl_err=float(res.ppl_err), ppl_f16=float(ref.ppl), text=text_name, text_sha256=res.text_sha256,
                       n_ctx=n_ctx, chunks=res.n_chunks, weights=weights, max_kld=max_kld,
                       float_products=fp)
