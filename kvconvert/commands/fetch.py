"""kvconvert fetch [NAME ...]: download the real models and text used by tests and benchmarks."""

from __future__ import annotations

import argparse

from ..testdata import fixtures

NAMES = [fixtures.SMOLLM2, fixtures.QWEN25_CODER, fixtures.GEMMA3, fixtures.AUSTEN]


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", choices=NAMES + ["all"], default=["all"], metavar="NAME",
                   help=f"what to fetch: {', '.join(NAMES)} or all (default)")


def run(args: argparse.Namespace) -> int:
    names = NAMES if "all" in args.names else args.names
    for name in names:
        path = fixtures.fetch(name, progress=lambda msg: print(f"  {msg}", flush=True))
        print(f"{name}: {path}")
    return 0
