"""kvconvert's Q4_K_M (its own C quantizers, `convert --weights q4_k_m`) against
llama.cpp's own quantizer (llama-quantize's Q4_K_M through llama-cpp-python's
llama_model_quantize) on the same f16 model: perplexity of held-out Austen, same
chunks, both files run by llama.cpp.

Model: SmolLM2-135M-Instruct, the f16 Hugging Face import of the fixture (cached in
~/.cache/kvconvert/bench/smollm2-135m-hf); the f16 GGUF both quantizers start from
is written from that directory. Perplexity as llama-perplexity computes it
(kvconvert.runtime.metrics: chunks of --ctx tokens, the second half of each scored).
Also reported: how many tensors have the same type and bytes in both files.

    python bench/kquant.py [--weights q4_k_m|q5_k_m|q6_k] [--ctx 512] [--chunks 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kvconvert.base.paths import cache_dir
from kvconvert.conversion.import_gguf import import_gguf
from kvconvert.conversion.writer import convert
from kvconvert.kvcache.llama_cpp_peer import load, logits, quiet
from kvconvert.runtime import metrics
from kvconvert.testdata import fixtures

FTYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}


def llama_quantize(src: Path, dst: Path, weights: str, threads: int) -> None:
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, FTYPES[weights])
    p.nthread = threads
    with quiet():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed ({rc})")


def same_tensors(a: Path, b: Path) -> tuple[int, int]:
    import gguf

    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = gguf.GGUFReader(b).tensors
    same = sum(t.name in ta and ta[t.name].tensor_type == t.tensor_type and
               np.array_equal(np.asarray(ta[t.name].data).view(np.uint8), np.asarray(t.data).view(np.uint8))
               for t in tb)
    return same, len(tb)


def ppl(path: Path, text: str, n_ctx: int, n_chunks: int, threads: int) -> metrics.Score:
    llm = load(path, n_ctx=n_ctx, n_threads=threads)
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    add_bos = str(llm.metadata.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
    nll = [metrics.chunk_nll(logits(llm, c), c)
           for c in metrics.chunks(tokens, n_ctx, n_chunks, bos=llm.token_bos() if add_bos else None)]
    return metrics.score(np.concatenate(nll))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="q4_k_m", choices=list(FTYPES))
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    work = cache_dir() / "bench"
    work.mkdir(parents=True, exist_ok=True)
    hf = work / "smollm2-135m-hf"
    if not (hf / "config.json").exists():
        import_gguf(fixtures.smollm2_gguf(), hf, dtype="f16", overwrite=True)
    text = fixtures.austen_text("eval")
    with tempfile.TemporaryDirectory() as tmp:
        f16, ours, theirs = Path(tmp) / "f16.gguf", Path(tmp) / "ours.gguf", Path(tmp) / "llama.gguf"
        convert(hf, f16, weights="f16")
        t0 = time.perf_counter()
        convert(hf, ours, weights=args.weights)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        llama_quantize(f16, theirs, args.weights, args.threads)
        t_theirs = time.perf_counter() - t0
        same, n = same_tensors(ours, theirs)
        rows = [("f16 (reference)", f16, None), (f"kvconvert {args.weights}", ours, t_ours),
                (f"llama.cpp {args.weights}", theirs, t_theirs)]
        scores = {name: ppl(path, text, args.ctx, args.chunks, args.threads) for name, path, _ in rows}
        print(f"SmolLM2-135M-Instruct (f16 HF import), Austen eval text, ctx {args.ctx}, "
              f"{args.chunks} chunks ({scores[rows[0][0]].n} scored tokens), PPL by llama.cpp (llama-cpp-python)")
        print(f"{'file':<22} {'MiB':>7} {'write s':>8} {'PPL':>16}")
        for name, path, t in rows:
            s = scores[name]
            print(f"{name:<22} {path.stat().st_size / 2**20:7.1f} {'' if t is None else f'{t:.1f}':>8} "
                  f"{s.ppl:9.4f} ± {s.ppl_err:.4f}")
        a, b = scores[rows[1][0]].ppl, scores[rows[2][0]].ppl
        print(f"kvconvert vs llama.cpp: {100 * (a / b - 1):+.3f}% PPL; tensors with identical type and bytes: "
              f"{same}/{n}")


if __name__ == "__main__":
    main()
