"""kvconvert's runtime side by side with llama.cpp's own tools, `llama-bench` and
`llama-perplexity`, built from the same pinned sources as the Python oracle
(scripts/build_llama_bench.sh: llama-cpp-python 0.3.36's vendor/llama.cpp,
AVX2/AVX-512 + the CPU's VNNI/VBMI/BF16, no AMX). Same GGUF, same threads, the same workloads, one run:

- prefill P tokens at each depth d (d = 0: from an empty context): llama-bench -p P -d d;
- decode N tokens at each depth: llama-bench -n N -d d;
- perplexity of the held-out Austen text: llama-perplexity on the same text, context
  and chunks (kvconvert tokenizes with BOS first and chunks as llama-perplexity does).

kvconvert is timed by kvconvert.runtime.bench.timed_depths on a context filled to d
(untimed), -r times like llama-bench's repetitions: mean ± sd of tok/s. Each kvconvert
cache is compared with every llama.cpp run of the same K/V types; a cache llama.cpp does
not have (TurboQuant, the file's own profile) with its q8_0/q8_0 runs. --busy N keeps N
CPU-burning processes running for the whole run (both engines measured under load). A
benchmark, not a test: run it by hand on a quiet machine.

    python bench/peer.py [--model FILE] [-t 2] [-r 3] [--depths 0,4096,16384] [--prefill 512]
        [--decode 32] [--ours f16/f16,tq4/tq4] [--llama f16/f16,f16/f16+fa,q8_0/q8_0+fa]
        [--ppl-ctx 512] [--ppl-chunks 4] [--busy N] [--bin DIR] [--save FILE.json]

A cache is K/V (kvconvert: any --ctk/--ctv type, or `auto`: the file's own caches);
llama.cpp's take `+fa` for flash attention (always on when V is quantized: it needs it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kvconvert.kvcache.llama_cpp_peer import GGML_TYPES
from kvconvert.runtime import metrics
from kvconvert.runtime.bench import FILL_CHUNK, random_tokens, timed_depths

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build_llama_bench.sh"
IMPLS = {1: "scalar", 2: "AVX2", 3: "AVX-512", 4: "NEON"}  # kvc_impl


@dataclass(frozen=True)
class Cache:
    k: str
    v: str
    fa: bool = False
    own: bool = False  # kvconvert's `auto`: what the file's metadata describes (k, v as resolved)

    @classmethod
    def parse(cls, text: str, llama: bool) -> Cache:
        kv, fa = (text[:-3], True) if text.endswith("+fa") else (text, False)
        k, _, v = kv.partition("/")
        if not k or not v or (fa and not llama):
            raise ValueError(f"cache {text!r}: expected K/V" + ("[+fa]" if llama else ""))
        if llama and (k not in GGML_TYPES or v not in GGML_TYPES):
            raise ValueError(f"cache {text!r}: llama.cpp caches are {', '.join(GGML_TYPES)}")
        return cls(k, v, fa or (llama and v != "f16"))

    @property
    def label(self) -> str:
        return f"{self.k}/{self.v}" + (" FA" if self.fa else "") + (" (the file's)" if self.own else "")


@dataclass
class Speed:
    mean: float
    sd: float

    @classmethod
    def of(cls, samples: list[float]) -> Speed:
        return cls(statistics.fmean(samples), statistics.stdev(samples) if len(samples) > 1 else 0.0)

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.sd:.2f}"


@dataclass
class Run:
    engine: str  # kvconvert | llama.cpp
    cache: Cache
    prefill: dict[int, Speed] = field(default_factory=dict)  # depth -> tok/s
    decode: dict[int, Speed] = field(default_factory=dict)


# ---- llama.cpp: its own tools ----

def llama_bin(arg: str | None) -> Path:
    """The directory of llama-bench and llama-perplexity: --bin, else built (once) by the script."""
    if arg:
        return Path(arg)
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def llama_bench_cmd(bin_dir: Path, model: str, cache: Cache, args) -> list[str]:
    return [str(bin_dir / "llama-bench"), "-m", model, "-t", str(args.threads), "-r", str(args.reps), "-o", "json",
            "-p", str(args.prefill), "-n", str(args.decode), "-d", ",".join(map(str, args.depths)),
            "-ctk", cache.k, "-ctv", cache.v, "-fa", "1" if cache.fa else "0"]


def parse_llama_bench(text: str) -> tuple[dict[int, Speed], dict[int, Speed], dict]:
    """llama-bench -o json → (prefill, decode) tok/s by depth, and the build/cpu fields of its first test."""
    tests = json.loads(text)
    prefill, decode = {}, {}
    for t in tests:
        s = Speed(float(t["avg_ts"]), float(t["stddev_ts"]))
        if t["n_prompt"] and not t["n_gen"]:
            prefill[int(t["n_depth"])] = s
        elif t["n_gen"] and not t["n_prompt"]:
            decode[int(t["n_depth"])] = s
    info = {k: tests[0].get(k) for k in ("build_commit", "build_number", "cpu_info", "n_threads")} if tests else {}
    return prefill, decode, info


def run_llama_bench(bin_dir: Path, model: str, cache: Cache, args) -> tuple[Run, dict]:
    p = subprocess.run(llama_bench_cmd(bin_dir, model, cache, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    if p.returncode != 0:
        raise SystemExit(f"llama-bench failed ({cache.label}):\n" + "\n".join(p.stderr.splitlines()[-20:]))
    prefill, decode, info = parse_llama_bench(p.stdout)
    return Run("llama.cpp", cache, prefill, decode), info


PPL_RE = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
CHUNKS_RE = re.compile(r"calculating perplexity over (\d+) chunks")


def parse_llama_perplexity(text: str) -> tuple[float, float, int]:
    """llama-perplexity's log → (PPL, its ± error, chunks)."""
    m, c = PPL_RE.search(text), CHUNKS_RE.search(text)
    if not m:
        raise ValueError("no 'Final estimate' in llama-perplexity's output")
    return float(m[1]), float(m[2]), int(c[1]) if c else 0


def run_llama_perplexity(bin_dir: Path, model: str, text_file: str, cache: Cache, args) -> tuple[float, float, int]:
    cmd = [str(bin_dir / "llama-perplexity"), "-m", model, "-f", text_file, "-c", str(args.ppl_ctx),
           "-b", str(args.ppl_ctx), "--chunks", str(args.ppl_chunks), "-t", str(args.threads),
           "-ctk", cache.k, "-ctv", cache.v, "-fa", "on" if cache.fa else "off"]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise SystemExit("llama-perplexity failed:\n" + "\n".join(p.stdout.splitlines()[-20:]))
    return parse_llama_perplexity(p.stdout)


# ---- kvconvert: its runtime, timed by runtime.bench ----

def run_ours(model: str, cache: Cache, args, tokens: list[int]) -> Run:
    """llama-bench's workloads on one context: fill to each depth d (untimed, increasing), then
    timed_depths on the view of the context past d, so its 'prefill from empty' is prefill at d
    and its 'decode at 0' is decode at d."""
    from kvconvert.runtime.engine import ContextParams, Model

    ctx = Model(model).context(ContextParams(n_ctx=len(tokens), n_batch=FILL_CHUNK, type_k=cache.k,
                                             type_v=cache.v, n_threads=args.threads))
    if cache.k == "auto" or cache.v == "auto":  # name what it resolved to
        cache = Cache(str(ctx.params.type_k), str(ctx.params.type_v), own=True)
    run, filled = Run("kvconvert", cache), 0
    for d in args.depths:
        ctx.reset(filled)
        for i in range(filled, d, FILL_CHUNK):
            ctx.eval(tokens[i:min(i + FILL_CHUNK, d)])
        filled = d
        samples = [timed_depths(ctx.eval, lambda n, d=d: ctx.reset(d + n), tokens[d:], [0], args.prefill, args.decode)
                   for _ in range(args.reps)]
        run.prefill[d] = Speed.of([s[0] for s in samples])
        run.decode[d] = Speed.of([s[1][0].tokens_per_s for s in samples])
    return run


def ppl_ours(model: str, cache: Cache, args, chunks) -> metrics.Score:
    from kvconvert.runtime.engine import ContextParams, Model

    ctx = Model(model).context(ContextParams(n_ctx=args.ppl_ctx, type_k=cache.k, type_v=cache.v,
                                             n_threads=args.threads))
    nll = []
    for c in chunks:
        ctx.reset()
        nll.append(metrics.chunk_nll(ctx.eval(c, all_logits=True), c))
    return metrics.score(np.concatenate(nll))


# ---- the run ----

@contextlib.contextmanager
def busy(n: int):
    """n processes burning a core each for the duration (a machine under load)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def partners(c: Cache, llama: list[Run]) -> list[Run]:
    """llama.cpp runs to compare a kvconvert cache with: the same types; q8_0/q8_0 for a cache
    llama.cpp does not have."""
    kv = (c.k, c.v) if c.k in GGML_TYPES and c.v in GGML_TYPES else ("q8_0", "q8_0")
    return [r for r in llama if (r.cache.k, r.cache.v) == kv]


def speed_table(ours: list[Run], llama: list[Run], args) -> str:
    out = ["| measure | kvconvert cache | kvconvert tok/s | llama.cpp cache | llama.cpp tok/s | ratio |",
           "|---|---|---|---|---|---|"]
    for what, n in (("prefill", args.prefill), ("decode", args.decode)):
        for d in args.depths:
            name = f"{what} {n} @ depth {d}" if d or what == "decode" else f"{what} {n} from empty"
            for a in ours:
                x = getattr(a, what)[d]
                for b in partners(a.cache, llama) or [None]:
                    y = getattr(b, what)[d] if b else None
                    out.append(f"| {name} | {a.cache.label} | {x} | {b.cache.label if b else '—'} | "
                               f"{y if y else '—'} | {f'{x.mean / y.mean:.2f}×' if y else '—'} |")
    return "\n".join(out)


def header(model: str, args, info: dict, bin_dir: Path) -> str:
    from kvconvert import __version__
    from kvconvert.runtime.engine import lib

    info_file = bin_dir / "BUILD_INFO"
    build = info_file.read_text().strip().replace("\n", "; ") if info_file.exists() else "(no BUILD_INFO)"
    load = f"{args.busy} busy process(es), a CPU-burning loop each" if args.busy else "none"
    return "\n".join([
        f"{os.path.basename(model)}, {time.strftime('%Y-%m-%d %H:%M')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores; other load started by this run: {load}",
        f"- threads: {args.threads} (both engines); repetitions: {args.reps} (tok/s mean ± sd)",
        f"- llama.cpp: llama-bench / llama-perplexity build {info.get('build_number')} ({info.get('build_commit')}); "
        f"{build}",
        f"- kvconvert {__version__}: native kernels {IMPLS.get(lib().kvc_cpu_best_impl(), '?')} (chosen at run time), "
        "-O3, no -march=native",
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="GGUF (default: the Qwen2.5-Coder-0.5B Q4_K_M fixture)")
    p.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    p.add_argument("-r", "--reps", type=int, default=3, help="repetitions of each test, both engines")
    p.add_argument("--depths", default="0,4096,16384", help="context depths of prefill and decode")
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--ours", default="f16/f16,tq4/tq4", help="kvconvert caches K/V (auto: the file's own)")
    p.add_argument("--llama", default="f16/f16,f16/f16+fa,q8_0/q8_0+fa", help="llama.cpp caches K/V[+fa]")
    p.add_argument("--ppl-ctx", type=int, default=512)
    p.add_argument("--ppl-chunks", type=int, default=4, help="0: no perplexity")
    p.add_argument("--ppl-cache", default="f16/f16", help="cache of both perplexity runs")
    p.add_argument("--busy", type=int, default=0, help="N CPU-burning processes for the whole run")
    p.add_argument("--bin", default=None, help="llama-bench's directory (default: scripts/build_llama_bench.sh)")
    p.add_argument("--save", default=None, help="also write every number as JSON")
    args = p.parse_args(argv)
    try:
        args.depths = sorted({int(d) for d in args.depths.split(",")})
        args.ours = [Cache.parse(c, llama=False) for c in args.ours.split(",")]
        args.llama = [Cache.parse(c, llama=True) for c in args.llama.split(",")]
        args.ppl_cache = Cache.parse(args.ppl_cache, llama=True)
    except ValueError as e:
        p.error(str(e))
    if min(args.depths) < 0 or args.threads < 1 or args.reps < 1 or args.busy < 0:
        p.error("depths must be >= 0; threads and reps >= 1; busy >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from kvconvert.runtime.engine import Model
    from kvconvert.testdata import fixtures

    model = str(args.model or fixtures.qwen25_coder_gguf())
    bin_dir = llama_bin(args.bin)  # built before the load starts
    m = Model(model)
    tokens = random_tokens(m.args.vocab_size, max(args.depths) + 16 + max(args.prefill, args.decode))
    text = fixtures.austen_text("eval")[: 6 * args.ppl_ctx * (args.ppl_chunks + 1)]
    spec = m.source.tokenizer_spec()  # llama-perplexity: BOS before the text, and first in every chunk
    bos = spec.bos_id if spec.effective_add_bos() else None
    chunks = metrics.chunks(m.tokenize(text), args.ppl_ctx, args.ppl_chunks, bos=bos) if args.ppl_chunks else []
    del m
    info: dict = {}
    with busy(args.busy), tempfile.TemporaryDirectory() as tmp:
        ours, llama = [], []
        for c in args.ours:
            print(f"kvconvert {c.label} ...", file=sys.stderr, flush=True)
            ours.append(run_ours(model, c, args, tokens))
        for c in args.llama:
            print(f"llama-bench {c.label} ...", file=sys.stderr, flush=True)
            run, info = run_llama_bench(bin_dir, model, c, args)
            llama.append(run)
        if chunks:
            print(f"perplexity {args.ppl_cache.label}, {len(chunks)} x {args.ppl_ctx} ...", file=sys.stderr, flush=True)
            a = ppl_ours(model, args.ppl_cache, args, chunks)
            Path(tmp, "eval.txt").write_text(text, encoding="utf-8")
            b_ppl, b_err, b_chunks = run_llama_perplexity(bin_dir, model, str(Path(tmp, "eval.txt")),
                                                          args.ppl_cache, args)
    print("\n" + header(model, args, info, bin_dir) + "\n")
    print(speed_table(ours, llama, args))
    if chunks:
        print(f"\nperplexity, Austen eval, {len(chunks)} chunks × {args.ppl_ctx} tokens "
              f"(llama-perplexity: {b_chunks}), cache {args.ppl_cache.label}:\n")
        print("| measure | kvconvert | llama.cpp | ratio |\n|---|---|---|---|")
        print(f"| perplexity | {a.ppl:.3f} ± {a.ppl_err:.3f} | {b_ppl:.3f} ± {b_err:.3f} | {a.ppl / b_ppl:.4f} |")
    if args.save:
        Path(args.save).write_text(json.dumps({
            "model": model, "threads": args.threads, "reps": args.reps, "busy": args.busy, "llama_cpp": info,
            "runs": [asdict(r) for r in ours + llama],
            "perplexity": {"kvconvert": [a.ppl, a.ppl_err], "llama.cpp": [b_ppl, b_err]} if chunks else None,
        }, indent=2))


if __name__ == "__main__":
    main()
