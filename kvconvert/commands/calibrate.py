"""kvconvert calibrate MODEL [--text FILE | --austen calib] [--tokens N]"""

from __future__ import annotations

import argparse

from ..base.atomic import refuse_overwrite
from ..conversion.calibrate import calibrate
from ..conversion.pipeline import DEFAULT_TOKENS
from ..base.progress import tqdm_progress
from .report import print_calibration
from . import args as A
from .common import add_text_args, read_text_arg


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Hugging Face model directory, GGUF file, or Hub repo id")
    add_text_args(p, required=False, what="to calibrate on (default: text the model writes itself, no download)",
                  austen_default="calib")
    p.add_argument("--tokens", type=A.positive, default=DEFAULT_TOKENS,
                   help="calibration tokens (default %(default)s; 2 chunks more are held out for the search's check)")
    p.add_argument("--ctx", type=A.ctx, default=512, help="tokens per calibration chunk (default %(default)s)")
    p.add_argument("-o", "--output", help="calibration file (.npz; default: in kvconvert's cache, reused by reruns)")
    p.add_argument("-t", "--threads", type=A.threads, default=0, help="threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    refuse_overwrite(args.output, [args.model, args.text], what="-o path")
    text, _ = read_text_arg(args)
    with tqdm_progress(unit="tok", name="calibrate") as progress:
        cal = calibrate(args.model, text=text, tokens=args.tokens, n_ctx=args.ctx, out=args.output,
                        n_threads=args.threads, progress=progress)
    print_calibration(cal)
    return 0
