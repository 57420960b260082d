"""kvconvert import-gguf MODEL.gguf -o HFDIR"""

from __future__ import annotations

import argparse

from ..conversion.import_gguf import import_gguf
from ..base.progress import tqdm_progress


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("gguf", help="a llama or qwen2 GGUF (any weight type gguf-py can dequantize)")
    p.add_argument("-o", "--output", required=True, help="output Hugging Face model directory")
    p.add_argument("--dtype", choices=["auto", "f32", "f16", "bf16"], default="auto",
                   help="safetensors dtype; auto (default): the GGUF's own float type (f16, bf16, f32: exact), "
                        "f16 for quantized weights (rounding ≤ 2^-11 of each value; f32 stores them exactly)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")


def run(args: argparse.Namespace) -> int:
    with tqdm_progress(unit="param", name="import") as progress:
        r = import_gguf(args.gguf, args.output, dtype=args.dtype, overwrite=args.force, progress=progress)
    print(f"wrote {r.output}: {r.architecture}, {r.n_tensors} tensors, {r.n_params / 1e6:.1f}M parameters, {r.dtype}")
    print("files: " + ", ".join(r.files))
    return 0
