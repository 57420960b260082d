"""kvconvert convert MODEL -o OUT.gguf [--weights TYPE]"""

from __future__ import annotations

import argparse

from ..convert import WEIGHT_TYPES, convert
from ..progress import tqdm_progress
from ..report import print_convert_result


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Hugging Face model directory, GGUF file, or Hub repo id (from the local cache)")
    p.add_argument("-o", "--output", required=True, help="output .gguf path (written atomically)")
    p.add_argument("--weights", choices=list(WEIGHT_TYPES), default="f16",
                   help="type of the weight matrices (norms and biases stay f32; default f16)")


def run(args: argparse.Namespace) -> int:
    with tqdm_progress() as progress:
        result = convert(args.model, args.output, weights=args.weights, progress=progress)
    print_convert_result(result)
    return 0
