"""kvconvert eval MODEL --text FILE: perplexity (and KLD vs a saved base run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from ..base.atomic import refuse_overwrite
from ..runtime.evaluate import evaluate
from ..base.progress import tqdm_progress
from .report import make_console
from . import args as A
from .common import add_runtime_args, add_text_args, read_text_arg


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF file")
    add_text_args(p, required=True, what="to score")
    p.add_argument("--chunks", type=A.positive, default=None, help="number of chunks (default: all the text holds)")
    p.add_argument("--save-logits", metavar="FILE", help="save log-probs of this run as a KLD base")
    p.add_argument("--kld-base", metavar="FILE", help="report KLD and top-1 agreement against a saved base")
    p.add_argument("--float-products", action="store_true",
                   help="compute the weight products with unrounded activations (quantized rows expanded to float; "
                        "about 2x slower). A quantized-weight model normally rounds its activations to 8 bits per "
                        "block, and then any change of the cache, even to an exact f32 one, moves later layers "
                        "across rounding steps: two runs differ by that noise too. Use it for both the base and "
                        "the measured run to see a cache's own error (the convert check does)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--save-report", metavar="FILE",
                   help="save the result as an eval report of this file; `kvconvert push` puts it on the model "
                        "card (it finds MODEL.eval*.json beside the GGUF by itself)")
    add_runtime_args(p, ctx_default=512)


def run(args: argparse.Namespace) -> int:
    refuse_overwrite(args.save_logits, [args.model, args.kld_base, args.text], what="--save-logits path")
    refuse_overwrite(args.save_report, [args.model, args.kld_base, args.text, args.save_logits],
                     what="--save-report path")
    text, name = read_text_arg(args)
    with tqdm_progress(unit="chunk", name="eval") as progress:
        r = evaluate(args.model, text, text_name=name, n_ctx=args.ctx, n_chunks=args.chunks, type_k=args.ctk,
                     type_v=args.ctv, n_threads=args.threads, n_sink=args.sink, n_recent=args.recent,
                     float_products=args.float_products, save_logits=args.save_logits,
                     kld_base=args.kld_base, progress=progress)
    if args.save_report:
        from ..base.atomic import atomic_path
        from ..hub.transfer import eval_report

        with atomic_path(args.save_report) as tmp:
            tmp.write_text(json.dumps(eval_report(r.to_dict(), r.model), indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0
    t = Table(title=f"{Path(r.model).name} on {r.text}: {r.n_chunks} chunks × {r.n_ctx} tokens")
    for col in ("K", "V", "KV bytes/token", "PPL", "KLD", "top-1"):
        t.add_column(col, justify="right")
    t.add_row(r.type_k, r.type_v, str(r.kv_bytes_per_token), f"{r.ppl:.4f} ± {r.ppl_err:.4f}",
              "-" if r.kld is None else f"{r.kld:.5f} ± {r.kld_err:.5f}",
              "-" if r.top1 is None else f"{r.top1:.2%}")
    make_console().print(t)
    if r.kld is not None and r.quantized_weights and not r.float_products:
        make_console().print("note: this model's weights are quantized, so its products round the activations: the "
                             "KLD includes that rounding noise (SmolLM2 Q4_1: 0.0040 between an f16 and an exact f32 "
                             "cache); --float-products for this run and its base measures the cache's own error")
    if r.n_recent:
        make_console().print(f"recent exact window: {r.n_recent} positions, +{r.recent_bpv:.3f} bits per value of each "
                             f"TurboQuant cache at {r.n_ctx} tokens (+{r.n_recent * 16 / 32768:.3f} at 32k)")
    return 0
