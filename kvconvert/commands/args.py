"""argparse ``type=`` functions with ranges, shared by every command.

A value out of range is refused by argparse itself, before any work: its usual
usage line plus one ``kvconvert CMD: error: argument --ctx: ...`` line, exit 2.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

MAX_CTX = 1 << 20  # context length, tokens per chunk, depths: far above any model kvconvert runs
MAX_THREADS = 1024
MAX_SEED = (1 << 64) - 1


def _bounds(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return " and ".join(parts)


def int_in(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An integer in [lo, hi] (either bound may be None)."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {_bounds(lo, hi)} (got {value})")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False) -> Callable[[str], float]:
    """A finite number between lo and hi (open or closed at each end; None: unbounded)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        bad = (not math.isfinite(value)
               or (lo is not None and (value <= lo if lo_open else value < lo))
               or (hi is not None and (value >= hi if hi_open else value > hi)))
        if bad:
            what = f"a finite number {_bounds(lo, hi, lo_open, hi_open)}".rstrip()
            raise argparse.ArgumentTypeError(f"must be {what} (got {text})")
        return value

    parse.__name__ = "number"
    return parse


def nonempty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def int_list(lo: int = 0, hi: int = MAX_CTX) -> Callable[[str], tuple[int, ...]]:
    """Comma-separated integers in [lo, hi], at least one: "0,512,4096"."""
    item = int_in(lo, hi)

    def parse(text: str) -> tuple[int, ...]:
        fields = [f.strip() for f in text.split(",")]
        if not text.strip() or any(not f for f in fields):
            raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 0,512,4096")
        try:
            return tuple(item(f) for f in fields)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None

    parse.__name__ = "list"
    return parse


ctx = int_in(16, MAX_CTX)  # --ctx: tokens per context / chunk
threads = int_in(0, MAX_THREADS)  # -t/--threads: 0 = all cores
positive = int_in(1)  # --chunks, --tokens, --prefill, --decode
non_negative = int_in(0)  # -n/--max-tokens, --top-k
sink = int_in(0, MAX_CTX)  # --sink
recent = int_in(0, 256)  # --recent: kvc_context_params.n_recent's limit
seed = int_in(0, MAX_SEED)
bits_per_value = float_in(1, 16, lo_open=True)  # --budget, --v-budget: (1, 16]
temperature = float_in(0)  # --temp: 0 = greedy
probability = float_in(0, 1, lo_open=True)  # --top-p: (0, 1]
penalty = float_in(0, lo_open=True)  # --repeat-penalty: > 0
depths = int_list(0, MAX_CTX)  # bench --depths
