"""kvconvert convert MODEL -o OUT.gguf [--profile NAME|FILE] [--layout portable|folded] [--weights keep|TYPE]"""

from __future__ import annotations

import argparse

from ..conversion.writer import WEIGHT_CHOICES
from ..conversion.patch import LAYOUTS
from ..conversion.pipeline import DEFAULT_TOKENS, ConvertJob, convert
from ..base.progress import tqdm_progress
from ..conversion.profile import Profile, load_profile
from .report import print_convert_job, print_convert_result, print_profile_summary
from ..conversion.search import DEFAULT_POLICY
from . import args as A
from .common import add_text_args, read_text_arg


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Hugging Face model directory, GGUF file, or Hub repo id (from the local cache)")
    p.add_argument("-o", "--output", required=True, help="output .gguf path (written atomically)")
    p.add_argument("--weights", choices=list(WEIGHT_CHOICES), default=None,
                   help="keep: patch a GGUF in place — every tensor byte for byte, only kvconvert.* metadata added, "
                        "every transform applied by kvconvert's runtime (default for a GGUF); or the type of the "
                        "weight matrices, norms and biases staying f32 (default f16 for a Hugging Face model); "
                        "q4_k_m, q5_k_m, q6_k: llama-quantize's per-tensor k-quant mixes (kvconvert's own quantizers, "
                        "the same bytes as llama.cpp's)")
    p.add_argument("--profile", default=DEFAULT_POLICY, metavar="NAME|FILE",
                   help="a calibrated profile (JSON from `kvconvert search`, or a shipped one) to apply, or a "
                        "policy name (balanced, max-quality, long-context): calibrate, search and apply in one go "
                        "(default %(default)s); 'none' for a plain conversion without KV-cache metadata")
    p.add_argument("--layout", choices=LAYOUTS, default="portable",
                   help="portable: runs unchanged in llama.cpp, kvconvert applies the cache transforms from metadata "
                        "(default); folded: every transform in the weights, only kvconvert can run it")
    add_text_args(p, required=False, what="to calibrate on when --profile is a policy (default: data-free)",
                  austen_default="calib")
    p.add_argument("--tokens", type=A.positive, default=DEFAULT_TOKENS,
                   help="calibration tokens when calibrating (default %(default)s; 2 chunks more are held out "
                        "for the check)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check of the written file (KLD, top-1 and PPL of its compressed caches against "
                        "an f16 cache on held-out text; a check above the policy's threshold retries with more bits)")
    p.add_argument("-t", "--threads", type=A.threads, default=0, help="threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    text, _ = read_text_arg(args)
    profile = None if args.profile.lower() == "none" else args.profile
    with tqdm_progress(unit="MiB", name="write") as progress:
        result = convert(args.model, args.output, weights=args.weights, profile=profile, layout=args.layout,
                         text=text, tokens=args.tokens, check=not args.no_check, n_threads=args.threads,
                         progress=progress)
    if isinstance(result, ConvertJob):
        print_convert_job(result)
    else:
        print_convert_result(result)
        if profile is not None:  # a calibrated profile (a policy makes a ConvertJob)
            prof = load_profile(profile)
            if isinstance(prof, Profile):
                print_profile_summary(prof, result.output)
    return 0
