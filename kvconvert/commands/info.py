"""kvconvert info MODEL"""

from __future__ import annotations

import argparse

from ..models.source import load_model
from .report import print_model_info


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Hugging Face model directory, GGUF file, or Hub repo id")


def run(args: argparse.Namespace) -> int:
    print_model_info(load_model(args.model))
    return 0
