"""kvconvert info MODEL"""

from __future__ import annotations

import argparse

from ..models.source import load_model
from .report import print_model_info, print_patch_info


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Hugging Face model directory, GGUF file, or Hub repo id")


def run(args: argparse.Namespace) -> int:
    m = load_model(args.model)
    print_model_info(m)
    if m.format == "gguf":
        print_patch_info(m)
    return 0
