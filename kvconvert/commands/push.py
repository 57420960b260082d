"""kvconvert push OUT.gguf --repo OWNER/NAME [--private] [--profile FILE]"""

from __future__ import annotations

import argparse
import sys

from ..hub.transfer import push


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (f"{p.description}. The GGUF, its profile JSON (with --profile) and a generated README.md "
                     "model card go up in one commit. Authentication: the HF_TOKEN environment variable, "
                     "else the token saved by `hf auth login` (needs write access).")
    p.add_argument("gguf", metavar="OUT.gguf", help="a GGUF written by `kvconvert convert` (has kvconvert.* metadata)")
    p.add_argument("--repo", required=True, metavar="OWNER/NAME",
                   help="Hub model repo to upload to; created if it does not exist")
    p.add_argument("--private", action="store_true",
                   help="create the repo as private (ignored if the repo already exists)")
    p.add_argument("--base-model", metavar="OWNER/NAME",
                   help="the Hub repo the model comes from, for the card's base_model (default: what the file "
                        "records — a repo id it was converted from, or its general.base_model keys)")
    p.add_argument("--eval", action="append", metavar="FILE", dest="evals",
                   help="an eval report of this file (`kvconvert eval OUT.gguf ... --save-report FILE`) to put on "
                        "the card; repeatable (default: OUT.eval*.json beside OUT.gguf)")
    p.add_argument("--profile", metavar="FILE",
                   help="profile JSON used for this file (from `kvconvert search`): uploaded next to it, and its "
                        "measured quality goes into the model card (default: OUT.profile.json beside OUT.gguf, "
                        "which `kvconvert convert` writes, if it exists)")


def run(args: argparse.Namespace) -> int:
    def stage(done: float, total: float, what: str) -> None:  # one line per stage, on a terminal only
        if not sys.stderr.isatty():
            return
        print(f"kvconvert: {what} ({total / 2**20:.1f} MiB)" if what.startswith("uploading") else f"kvconvert: {what}",
              file=sys.stderr, flush=True)

    profile = args.profile
    if profile is None:
        from ..conversion.pipeline import profile_path_for

        found = profile_path_for(args.gguf)
        if found.is_file():
            profile = found
            print(f"kvconvert: using the conversion's profile {found}", file=sys.stderr)
    url = push(args.gguf, args.repo, private=args.private, profile=profile, base_model=args.base_model,
               evals=args.evals or (), progress=stage)
    print(url)
    return 0
