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

from kvconvert import fixtures, metrics
from kvconvert.commands.run import add_cache_args
from kvconvert.llama_cpp_peer import load, quiet
from kvconvert.runtime import ContextParams, Model


def timed_decode(eval_one, tokens) -> float:
    t0 = time.perf_counter()
    for t in tokens:
        eval_one(int(t))
    return len(tokens) / (time.perf_counter() - t0)


def ours(path, args, rng_tokens, chunks):
    m = Model(path)
    ctx = m.context(ContextParams(n_ctx=max(args.depths) + args.decode + 1, n_batch=512, type_k=args.ctk,
                                  type_v=args.ctv, n_threads=args.threads))
    ctx.eval(rng_tokens[:16])
    ctx.reset()
    t0 = time.perf_counter()
    ctx.eval(rng_tokens[: args.prefill])
    prefill = args.prefill / (time.perf_counter() - t0)
    decode = {}
    for d in args.depths:
        ctx.reset()
        ctx.eval(rng_tokens[:d])
        decode[d] = timed_decode(lambda t: ctx.eval([t]), rng_tokens[d:d + args.decode])
    pctx = m.context(ContextParams(n_ctx=args.ppl_ctx, type_k=args.ctk, type_v=args.ctv, n_threads=args.threads))
    nll = []
    for c in chunks:
        pctx.reset()
        nll.append(metrics.chunk_nll(pctx.eval(c, all_logits=True), c))
    return prefill, decode, metrics.score(np.concatenate(nll))


def llama_cpp(path, args, rng_tokens, chunks):
    # llama.cpp needs flash attention for quantized V; otherwise its default path
    fa = {"flash_attn": True} if args.ctv != "f16" else {}
    n_ctx = max(args.depths) + args.decode + 1
    llm = load(path, n_ctx, logits_all=False, n_batch=512, type_k=args.ctk, type_v=args.ctv,
               n_threads=args.threads, **fa)
    toks = [int(t) for t in rng_tokens]
    with quiet():
        llm.eval(toks[:16])
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks[: args.prefill])
        prefill = args.prefill / (time.perf_counter() - t0)
        decode = {}
        for d in args.depths:
            llm.reset()
            llm.eval(toks[:d])
            decode[d] = timed_decode(lambda t: llm.eval([t]), toks[d:d + args.decode])
    del llm
    plm = load(path, args.ppl_ctx, type_k=args.ctk, type_v=args.ctv, n_threads=args.threads, **fa)
    nll = []
    for c in chunks:
        plm.reset()
        with quiet():
            plm.eval([int(t) for t in c])
        nll.append(metrics.chunk_nll(np.array(plm.scores[: len(c)]), c))
    return prefill, decode, metrics.score(np.concatenate(nll))


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
    path = args.model or fixtures.qwen25_coder_gguf()
    m = Model(path)
    text = fixtures.austen_text("eval")
    spec = m.source.tokenizer_spec()
    bos = spec.bos_id if spec.effective_add_bos() else None
    chunks = metrics.chunks(m.tokenize(text[: 6 * args.ppl_ctx * args.ppl_chunks], add_bos=False), args.ppl_ctx,
                            args.ppl_chunks, bos=bos)
    rng_tokens = np.random.default_rng(0).integers(0, min(m.args.vocab_size, 32000),
                                                   max(args.depths) + args.decode + args.prefill)
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
