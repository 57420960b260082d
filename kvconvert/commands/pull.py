"""kvconvert pull OWNER/NAME [--file NAME.gguf] [--revision REV]"""

from __future__ import annotations

import argparse

from ..hub.transfer import pull


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (f"{p.description}. Prints the local path of the GGUF; afterwards OWNER/NAME works "
                     "wherever a model path does (`kvconvert run OWNER/NAME ...`), also with HF_HUB_OFFLINE=1. "
                     "The cache is huggingface_hub's (HF_HUB_CACHE, default ~/.cache/huggingface/hub).")
    p.add_argument("repo", metavar="OWNER/NAME", help="Hub model repo holding a GGUF")
    p.add_argument("--file", metavar="NAME.gguf",
                   help="which GGUF to download when the repo holds several (default: its only GGUF)")
    p.add_argument("--revision", metavar="REV", help="branch, tag or commit to download (default: main)")


def run(args: argparse.Namespace) -> int:
    print(pull(args.repo, filename=args.file, revision=args.revision))
    return 0
