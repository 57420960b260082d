"""Options several commands share: cache types, runtime settings, the text to read."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..base.errors import InputError
from ..kvcache.types import TYPES_HELP, CacheSpec
from . import args as A


CACHE_HELP = "{} cache type: " + TYPES_HELP + " (default: what the GGUF's kvconvert metadata says, else f16)"


def cache_arg(text: str) -> CacheSpec:
    try:
        return CacheSpec(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ctk", type=cache_arg, default="auto", metavar="TYPE", help=CACHE_HELP.format("K"))
    p.add_argument("--ctv", type=cache_arg, default="auto", metavar="TYPE", help=CACHE_HELP.format("V"))
    p.add_argument("--backend", choices=("auto", "cpu", "metal"), default=None,
                   help="where the model runs: auto (Metal on a Mac when it runs this model and these caches, "
                        "else the CPU), cpu, or metal (macOS builds; not yet verified on a Mac: see README) "
                        "(default: $KVC_BACKEND, else auto)")
    p.add_argument("--sink", type=A.sink, default=None, metavar="N",
                   help="TurboQuant caches: keep the first N positions (attention sinks) in f16 and use them "
                        "exactly (default: the GGUF's kvconvert metadata, else 1; 0 turns it off)")
    p.add_argument("--recent", type=A.recent, default=None, metavar="N",
                   help="TurboQuant caches: each query also uses the last N positions (its own included) exactly, "
                        "from an f16 ring (CPU backend). Costs 2*N*(layers*KV heads*head_dim) f16 values of fixed "
                        "memory, independent of the context (plus one batch of rows for prefill): N*16/n_ctx bits "
                        "per value at a context of n_ctx, e.g. N=32: 1 bpv at 512 tokens, 0.016 at 32k "
                        "(default: the GGUF's kvconvert metadata, else 0 = off; at most 256)")


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

    if getattr(args, "text", None):
        try:
            return Path(args.text).read_text(encoding="utf-8"), args.text
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{args.text}: cannot read as UTF-8 text ({e}); pass a UTF-8 text file") from None
    if getattr(args, "austen", None):
        from ..testdata import fixtures

        return fixtures.austen_text(args.austen), f"austen-{args.austen}"
    return None, ""
