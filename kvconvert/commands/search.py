"""kvconvert search CALIB --budget BPV [--policy NAME]"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..base.atomic import refuse_overwrite
from ..base.errors import InputError
from ..base.progress import tqdm_progress
from .report import print_search
from ..conversion.search import DEFAULT_POLICY, search
from . import args as A
from .common import add_text_args, read_text_arg


def _v_budget(text: str) -> float:
    if text.lower() == "none":
        return 0.0  # search(): a V budget of 0 keeps V in f16
    return A.bits_per_value(text)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("calibration", help="calibration file written by `kvconvert calibrate`")
    p.add_argument("--policy", default=DEFAULT_POLICY,
                   help="shipped policy name or policy JSON (default %(default)s; see profiles/)")
    p.add_argument("--budget", type=A.bits_per_value, default=None, metavar="BPV",
                   help="mean K bits per value, in (1, 16], all overheads counted (default: the policy's)")
    p.add_argument("--v-budget", type=_v_budget, default=None, metavar="BPV|none",
                   help="mean V bits per value, in (1, 16] (default: the policy's; none: V stays f16)")
    add_text_args(p, required=False, what="for the end-to-end check (default: the calibration's held-out chunks)")
    p.add_argument("--chunks", type=A.positive, default=None, help="chunks of the check text (default: all)")
    p.add_argument("--no-check", action="store_true", help="skip the end-to-end check (PPL/KLD on held-out text)")
    p.add_argument("--model", help="model to check with (default: the calibrated one)")
    p.add_argument("-o", "--output", required=True, help="profile JSON to write")
    p.add_argument("-t", "--threads", type=A.threads, default=0, help="threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    refuse_overwrite(args.output, [args.calibration, args.text, args.policy, args.model], what="-o path")
    text, _ = read_text_arg(args)
    if Path(args.output).is_dir():
        raise InputError(f"{args.output} is a directory; give a .json file path for the profile")
    with tqdm_progress(unit="layer", name="search") as progress:
        result = search(args.calibration, policy=args.policy, k_budget=args.budget, v_budget=args.v_budget,
                        eval_text=text, check=not args.no_check, model=args.model, n_chunks=args.chunks,
                        n_threads=args.threads, progress=progress)
    result.profile.save(args.output)
    print_search(result)
    print(f"profile written to {args.output}")
    return 0
