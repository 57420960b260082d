"""kvconvert bench MODEL: prefill/decode speed, KV bytes per token, peak memory."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from ..runtime.bench import bench
from ..base.progress import tqdm_progress
from .report import make_console
from . import args as A
from .common import add_cache_args


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF file")
    p.add_argument("--depths", type=A.depths, default=(0, 512, 4096), help="comma-separated context depths for decode (default 0,512,4096)")
    p.add_argument("--prefill", type=A.positive, default=512, help="prefill batch size (default %(default)s)")
    p.add_argument("--decode", type=A.positive, default=32, help="decode steps per depth (default %(default)s)")
    add_cache_args(p)
    p.add_argument("-t", "--threads", type=A.threads, default=0, help="threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    with tqdm_progress(unit="tok", name="bench") as progress:
        r = bench(args.model, depths=args.depths, n_prefill=args.prefill, n_decode=args.decode, type_k=args.ctk,
                  type_v=args.ctv, n_threads=args.threads, n_sink=args.sink, n_recent=args.recent,
                  progress=progress)
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0
    t = Table(title=f"{r.model}  ({r.backend}, {r.n_threads} threads, K {r.type_k}, V {r.type_v})")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row(f"prefill {r.prefill_tokens} tokens", f"{r.prefill_tokens_per_s:.1f} tok/s")
    for row in r.decode:
        if row.fill_tokens_per_s:
            t.add_row(f"prefill up to depth {row.depth}", f"{row.fill_tokens_per_s:.1f} tok/s")
        t.add_row(f"decode @ depth {row.depth}", f"{row.tokens_per_s:.2f} tok/s")
    t.add_row("KV cache", f"{r.kv_bytes_per_token} bytes/token")
    t.add_row(f"KV cache at {r.n_ctx} tokens", f"{r.kv_bytes / 2**20:.1f} MiB"
              + (" (sliding-window layers: their window)" if r.kv_bytes < r.kv_bytes_per_token * r.n_ctx else ""))
    t.add_row("peak RSS", f"{r.peak_rss_mib:.0f} MiB")
    make_console().print(t)
    return 0
