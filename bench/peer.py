"""Side-by-side benchmark: kvconvert's runtime vs llama.cpp (llama-cpp-python),
same GGUF, same thread count, one run. Prints decode tok/s at several context
depths, prefill tok/s, and perplexity of both on the same held-out text, with
ratios (kvconvert / llama.cpp). A benchmark, not a test: run it by hand.

    python bench/peer.py [--model FILE] [--threads 2] [--depths 512,4096] [--ctk f16]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from kvconvert.testdata import fixtures
from kvconvert.runtime import metrics
from kvconvert.runtime.bench import random_tokens, timed_depths
from kvconvert.commands.run import add_cache_args
from kvconvert.kvcache.llama_cpp_peer import GGML_TYPES, load, quiet
from kvconvert.runtime.engine import ContextParams, Model


def speed(eval_tokens, truncate, args, tokens: list[int]) -> tuple[float, dict[int, float]]:
    """Prefill tok/s and decode tok/s per depth of an engine given as callables."""
    prefill, rows = timed_depths(eval_tokens, truncate, tokens, args.depths, args.prefill, args.decode)
    return prefill, {r.depth: r.tokens_per_s for r in rows}


def perplexity(logits_of, chunks) -> metrics.Score:
    return metrics.score(np.concatenate([metrics.chunk_nll(logits_of(c), c) for c in chunks]))


def ours(path, args, tokens, chunks):
    m = Model(path)
    ctx = m.context(ContextParams(n_ctx=len(tokens), n_batch=512, type_k=args.ctk,
                                  type_v=args.ctv, n_threads=args.threads))
    prefill, decode = speed(ctx.eval, ctx.reset, args, tokens)
    pctx = m.context(ContextParams(n_ctx=args.ppl_ctx, type_k=args.ctk, type_v=args.ctv, n_threads=args.threads))

    def logits_of(c):
        pctx.reset()
        return pctx.eval(c, all_logits=True)

    return prefill, decode, perplexity(logits_of, chunks)


def llama_cpp(path, args, tokens, chunks):
    # llama.cpp needs flash attention for quantized V; otherwise its default path
    fa = {"flash_attn": True} if args.ctv != "f16" else {}
    llm = load(path, len(tokens), logits_all=False, n_batch=512, type_k=args.ctk, type_v=args.ctv,
               n_threads=args.threads, **fa)
    with quiet():
        prefill, decode = speed(llm.eval, lambda n: setattr(llm, "n_tokens", n), args, tokens)
    del llm
    plm = load(path, args.ppl_ctx, type_k=args.ctk, type_v=args.ctv, n_threads=args.threads, **fa)

    def logits_of(c):
        plm.reset()
        with quiet():
            plm.eval([int(t) for t in c])
        return np.array(plm.scores[: len(c)])

    return prefill, decode, perplexity(logits_of, chunks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="GGUF (default: the Qwen2.5-Coder-0.5B fixture)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--depths", default="512,4096")
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--ppl-ctx", type=int, default=512)
    p.add_argument("--ppl-chunks", type=int, default=4)
    add_cache_args(p)
    args = p.parse_args()
    args.depths = [int(d) for d in args.depths.split(",")]
    # a side-by-side needs a cache both engines have: "auto" means f16 here
    args.ctk = "f16" if args.ctk == "auto" else args.ctk
    args.ctv = "f16" if args.ctv == "auto" else args.ctv
    if args.ctk not in GGML_TYPES or args.ctv not in GGML_TYPES:
        p.error(f"llama.cpp has no {args.ctk}/{args.ctv} cache; compare with {', '.join(GGML_TYPES)}")
    path = args.model or fixtures.qwen25_coder_gguf()
    m = Model(path)
    text = fixtures.austen_text("eval")
    spec = m.source.tokenizer_spec()
    bos = spec.bos_id if spec.effective_add_bos() else None
    chunks = metrics.chunks(m.tokenize(text[: 6 * args.ppl_ctx * args.ppl_chunks], add_bos=False), args.ppl_ctx,
                            args.ppl_chunks, bos=bos)
    rng_tokens = random_tokens(m.args.vocab_size, max(max(args.depths) + args.decode, args.prefill + 16))
    del m
    a = ours(path, args, rng_tokens, chunks)
    b = llama_cpp(path, args, rng_tokens, chunks)
    print(f"\n{os.path.basename(str(path))}: {args.threads} threads, K {args.ctk}, V {args.ctv}; "
          f"{platform.processor() or platform.machine()}; {time.strftime('%Y-%m-%d')}")
    print(f"perplexity: Austen eval, {len(chunks)} chunks x {args.ppl_ctx} tokens\n")
    print("| measure | kvconvert | llama.cpp | ratio |")
    print("|---|---|---|---|")
    print(f"| prefill {args.prefill} tok/s | {a[0]:.1f} | {b[0]:.1f} | {a[0] / b[0]:.2f}x |")
    for d in args.depths:
        print(f"| decode @ {d} tok/s | {a[1][d]:.2f} | {b[1][d]:.2f} | {a[1][d] / b[1][d]:.2f}x |")
    print(f"| perplexity | {a[2].ppl:.3f} ± {a[2].ppl_err:.3f} | {b[2].ppl:.3f} ± {b[2].ppl_err:.3f} | "
          f"{a[2].ppl / b[2].ppl:.4f} |")


if __name__ == "__main__":
    main()
