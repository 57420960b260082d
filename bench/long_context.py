"""Long-context decode speed, side by side: kvconvert's runtime with an f16 cache
and with TurboQuant K+V caches, and llama.cpp's own llama-bench (bench/peer.py runs
it; scripts/build_llama_bench.sh builds it) with its f16 and q8_0 caches — same GGUF,
same threads, one run. Prints decode tok/s at each depth, KV bytes per token, and
ratios to kvconvert's f16 cache and to llama.cpp's f16 cache. A benchmark, not a
test: run it by hand on a quiet machine.

    python bench/long_context.py [--model FILE] [--threads 2] [--depths 4096,8192,16384]
        [--configs ours:f16/f16,ours:tq4/tq4,llama.cpp:f16/f16,llama.cpp:q8_0/q8_0]

A config is ENGINE:K/V with ENGINE ours or llama.cpp (llama.cpp runs with flash
attention when V is quantized: it needs it; `llama.cpp+fa:` forces it on). llama-bench
measures prefill from empty and decode at each depth, not the fills between depths.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from dataclasses import dataclass

from kvconvert.testdata import fixtures
from kvconvert.runtime.bench import DecodeRow, random_tokens, timed_depths
from kvconvert.kvcache.llama_cpp_peer import GGML_TYPES
from kvconvert.runtime.engine import ContextParams, Model
from peer import Cache, llama_bin, run_llama_bench  # bench/peer.py: the one llama.cpp peer

ENGINES = ("ours", "llama.cpp", "llama.cpp+fa")


@dataclass
class Config:
    engine: str
    type_k: str
    type_v: str

    @classmethod
    def parse(cls, text: str) -> Config:
        engine, _, kv = text.partition(":")
        k, _, v = kv.partition("/")
        if engine not in ENGINES or not k or not v:
            raise ValueError(f"config {text!r}: expected ENGINE:K/V with ENGINE one of {', '.join(ENGINES)}")
        if engine != "ours" and (k not in GGML_TYPES or v not in GGML_TYPES):
            raise ValueError(f"config {text!r}: llama.cpp caches are {', '.join(GGML_TYPES)}")
        return cls(engine, k, v)

    @property
    def label(self) -> str:
        name = "kvconvert" if self.engine == "ours" else self.engine.replace("+fa", " (FA)")
        return f"{name} {self.type_k}/{self.type_v}"


@dataclass
class Row:
    config: Config
    kv_bytes_per_token: int
    prefill: float
    decode: list[DecodeRow]


def progress_line(label: str):
    start = time.perf_counter()

    def show(done: float, total: float, what: str) -> None:
        el = time.perf_counter() - start
        eta = el / done * (total - done) if done else 0.0
        print(f"\r  {label}: {what:<16} {done / total:6.1%}  {el:5.0f}s elapsed, ETA {eta:4.0f}s", end="",
              file=sys.stderr, flush=True)

    return show


def run_config(cfg: Config, path: str, args, tokens: list[int]) -> Row:
    n_ctx = len(tokens)
    show = progress_line(cfg.label)
    # bytes per token from our runtime's row sizes: the ggml types have the same blocks
    m = Model(path)
    kv_bytes = m.context(ContextParams(n_ctx=16, type_k=cfg.type_k, type_v=cfg.type_v)).kv_bytes_per_token
    if cfg.engine == "ours":
        ctx = m.context(ContextParams(n_ctx=n_ctx, n_batch=512, type_k=cfg.type_k, type_v=cfg.type_v,
                                      n_threads=args.threads))
        prefill, rows = timed_depths(ctx.eval, ctx.reset, tokens, args.depths, args.prefill, args.decode, show)
        del ctx
    else:
        del m
        gc.collect()
        fa = cfg.engine.endswith("+fa") or cfg.type_v != "f16"
        runs = argparse.Namespace(**{**vars(args), "depths": sorted({0, *args.depths}), "reps": 1})
        run, _ = run_llama_bench(args.bin_dir, path, Cache(cfg.type_k, cfg.type_v, fa), runs)
        prefill, rows = run.prefill[0].mean, [DecodeRow(d, run.decode[d].mean) for d in args.depths]
    gc.collect()
    print(f"\r  {cfg.label}: prefill {prefill:.1f} tok/s, decode "
          + ", ".join(f"{r.tokens_per_s:.2f} @ {r.depth}" for r in rows) + " tok/s" + " " * 20, file=sys.stderr)
    return Row(cfg, kv_bytes, prefill, rows)


def table(rows: list[Row], depths: list[int]) -> str:
    base = next((r for r in rows if r.config.engine == "ours" and r.config.type_k == "f16"), None)
    peer = next((r for r in rows if r.config.engine == "llama.cpp" and r.config.type_k == "f16"), None)
    head = "| cache | KV bytes/token | " + " | ".join(f"decode @ {d}" for d in depths) + " |"
    out = [head, "|" + "---|" * (2 + len(depths))]
    for r in rows:
        cells = []
        for i, d in enumerate(depths):
            v = r.decode[i].tokens_per_s
            ratios = [f"{v / b.decode[i].tokens_per_s:.2f}× {name}" for b, name in ((base, "ours f16"),
                                                                                   (peer, "llama.cpp f16"))
                      if b is not None and b is not r]
            cells.append(f"{v:.2f}" + (f" ({', '.join(ratios)})" if ratios else ""))
        out.append(f"| {r.config.label} | {r.kv_bytes_per_token} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="GGUF (default: the Qwen2.5-Coder-0.5B Q4_K_M fixture)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--depths", default="4096,8192,16384")
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--configs", default="ours:f16/f16,ours:tq4/tq4,llama.cpp:f16/f16,llama.cpp:q8_0/q8_0")
    p.add_argument("--bin", default=None, help="llama-bench's directory (default: scripts/build_llama_bench.sh)")
    args = p.parse_args()
    args.depths = sorted(int(d) for d in args.depths.split(","))
    try:
        configs = [Config.parse(c) for c in args.configs.split(",")]
    except ValueError as e:
        p.error(str(e))
    path = str(args.model or fixtures.qwen25_coder_gguf())
    args.bin_dir = llama_bin(args.bin) if any(c.engine != "ours" for c in configs) else None
    vocab = Model(path).args.vocab_size
    tokens = random_tokens(vocab, max(args.depths[-1] + args.decode, args.prefill + 16))
    rows = [run_config(c, path, args, tokens) for c in configs]
    print(f"\n{os.path.basename(path)}: {args.threads} threads, decode tok/s over {args.decode} tokens at each depth; "
          f"prefill {args.prefill} tokens; {platform.processor() or platform.machine()}; {time.strftime('%Y-%m-%d')}\n")
    print(table(rows, args.depths))
    print("\nprefill tok/s: from an empty context, then of each fill up to the next depth")
    print("\n| cache | prefill 0 → " + str(args.prefill) + " | "
          + " | ".join(f"fill → {d}" for d in args.depths) + " |\n" + "|---" * (2 + len(args.depths)) + "|")
    for r in rows:
        print(f"| {r.config.label} | {r.prefill:.1f} | "
              + " | ".join(f"{x.fill_tokens_per_s:.1f}" if x.fill_tokens_per_s else "—" for x in r.decode) + " |")


if __name__ == "__main__":
    main()
