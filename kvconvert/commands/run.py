"""kvconvert run MODEL -p TEXT: generate text, streaming it as it comes."""

from __future__ import annotations

import argparse
import sys

from ..generate import SamplerParams, generate
from ..runtime import CACHE_TYPES, ContextParams, Model


CACHE_HELP = ("{} cache type: f32, f16, q8_0, q4_0, or TurboQuant: tq<bits> (e.g. tq4), or "
              "tq:split=N,hi=B,lo=B[,qjl=hi|lo|both] (default: what the GGUF's kvconvert metadata says, else f16)")


def cache_arg(text: str) -> str:
    if text in CACHE_TYPES or text == "auto" or text.lower().startswith("tq"):
        return text
    raise argparse.ArgumentTypeError(f"unknown cache type {text!r}: use f32, f16, q8_0, q4_0 or tq<bits>")


def add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ctk", type=cache_arg, default="auto", metavar="TYPE", help=CACHE_HELP.format("K"))
    p.add_argument("--ctv", type=cache_arg, default="auto", metavar="TYPE", help=CACHE_HELP.format("V"))


def add_runtime_args(p: argparse.ArgumentParser, ctx_default: int = 4096) -> None:
    p.add_argument("--ctx", type=int, default=ctx_default, help="context length in tokens (default %(default)s)")
    add_cache_args(p)
    p.add_argument("-t", "--threads", type=int, default=0, help="threads (default: all cores)")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF file (or a directory holding one)")
    p.add_argument("-p", "--prompt", required=True, help="prompt text")
    p.add_argument("-n", "--max-tokens", type=int, default=128, help="tokens to generate (default %(default)s)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature; 0 = greedy (default %(default)s)")
    p.add_argument("--top-k", type=int, default=40, help="top-k (0 = off; default %(default)s)")
    p.add_argument("--top-p", type=float, default=0.95, help="top-p (1 = off; default %(default)s)")
    p.add_argument("--repeat-penalty", type=float, default=1.1, help="repetition penalty (default %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    add_runtime_args(p)


def run(args: argparse.Namespace) -> int:
    model = Model(args.model)
    sampler = SamplerParams(args.temp, args.top_k, args.top_p, args.repeat_penalty, seed=args.seed)
    ctx = ContextParams(n_ctx=args.ctx, type_k=args.ctk, type_v=args.ctv, n_threads=args.threads)
    sys.stdout.write(args.prompt)
    for piece in generate(model, args.prompt, args.max_tokens, sampler, ctx):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
