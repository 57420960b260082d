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
not have (TurboQuant, a file's own profile) with its q8_0/q8_0 runs. --busy N keeps N
CPU-burning processes running for the whole run (both engines measured under load). A
benchmark, not a test: run it by hand on a quiet machine.

    python bench/peer.py [--model FILE] [-t 2] [-r 3] [--depths 0,4096,16384] [--prefill 512]
        [--decode 32] [--ours f16/f16,tq4/tq4,auto,auto@OTHER.gguf] [--llama f16/f16,f16/f16+fa,q8_0/q8_0+fa]
        [--ppl-ctx 512] [--ppl-chunks 4] [--ppl-cache f16/f16] [--busy N] [--bin DIR]
        [--save FILE.json] [--resume FILE.json]

kvconvert caches (--ours, comma-separated):
  K/V          any --ctk/--ctv types (f16/f16, q8_0/q8_0, tq4/tq4, ...);
  auto         the --model file's own caches (its kvconvert metadata; f16 without it);
  auto@PATH    (or @PATH) another GGUF timed with its own caches, e.g. the same weights
               patched with a kvconvert profile; labelled by the file's stem, compared with
               llama.cpp's q8_0/q8_0 runs. Every PATH must exist (checked before any work).
llama.cpp's take `+fa` for flash attention (always on when V is quantized: it needs it).

Each (engine, cache, depth) is one measurement: llama-bench runs once per cache and depth,
kvconvert records each depth as it finishes. After every measurement one line goes to
stderr (engine, cache, depth, prefill and decode tok/s, seconds taken) and --save FILE.json
is rewritten atomically (a temporary file beside it, then renamed) with everything so far
and "complete": false; true once the whole run is done. A killed run loses at most the
measurement under way.

--resume FILE.json loads such a save (complete or not), skips every (engine, cache, depth)
it already holds and measures the rest; the table is printed from all of them. Its model,
threads, repetitions, --prefill, --decode and --busy must be this run's (else one error
line, exit 2). --save defaults to the --resume file. Its perplexity is kept if it was
measured with the same --ppl-ctx, --ppl-chunks and --ppl-cache.

    python bench/peer.py -t 2 -r 3 --save peer.json        # killed at depth 16384 ...
    python bench/peer.py -t 2 -r 3 --resume peer.json      # ... only what is missing
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
    path: str | None = None  # kvconvert's `auto@PATH`: that GGUF, timed with its own caches

    @classmethod
    def parse(cls, text: str, llama: bool) -> Cache:
        if not llama and (text == "auto" or text.startswith(("auto@", "@"))):
            path = text.partition("@")[2]
            if "@" in text and not path:
                raise ValueError(f"cache {text!r}: expected auto@PATH (a GGUF file)")
            return cls("auto", "auto", path=path or None)
        kv, fa = (text[:-3], True) if text.endswith("+fa") else (text, False)
        k, _, v = kv.partition("/")
        if not k or not v or (fa and not llama):
            raise ValueError(f"cache {text!r}: expected K/V" + ("[+fa]" if llama else ", auto or auto@PATH"))
        if llama and (k not in GGML_TYPES or v not in GGML_TYPES):
            raise ValueError(f"cache {text!r}: llama.cpp caches are {', '.join(GGML_TYPES)}")
        return cls(k, v, fa or (llama and v != "f16"))

    @property
    def spec(self) -> str:
        """The cache as asked for, one text per request (what --resume matches runs by)."""
        return f"auto@{self.path}" if self.path else f"{self.k}/{self.v}" + ("+fa" if self.fa else "")

    @property
    def label(self) -> str:
        if self.path:
            return f"{self.k}/{self.v} ({Path(self.path).stem})"
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
    cache: Cache  # as measured (`auto` resolved)
    prefill: dict[int, Speed] = field(default_factory=dict)  # depth -> tok/s
    decode: dict[int, Speed] = field(default_factory=dict)
    spec: str = ""  # the cache as asked for (Cache.spec before `auto` resolves)
    model: str = ""  # the GGUF timed (another file for auto@PATH)

    @classmethod
    def from_json(cls, d: dict) -> Run:
        c = d["cache"]
        cache = Cache(c["k"], c["v"], bool(c.get("fa")), bool(c.get("own")), c.get("path"))
        speeds = lambda m: {int(k): Speed(float(s["mean"]), float(s["sd"])) for k, s in m.items()}  # noqa: E731
        return cls(d["engine"], cache, speeds(d["prefill"]), speeds(d["decode"]), d["spec"], d.get("model", ""))


# ---- llama.cpp: its own tools ----

def llama_bin(arg: str | None) -> Path:
    """The directory of llama-bench and llama-perplexity: --bin, else built (once) by the script."""
    if arg:
        return Path(arg)
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def llama_bench_cmd(bin_dir: Path, model: str, cache: Cache, args, depth: int) -> list[str]:
    """One llama-bench process per cache and depth (a killed run loses one depth, not all)."""
    return [str(bin_dir / "llama-bench"), "-m", model, "-t", str(args.threads), "-r", str(args.reps), "-o", "json",
            "-p", str(args.prefill), "-n", str(args.decode), "-d", str(depth),
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


def run_llama_bench(bin_dir: Path, model: str, cache: Cache, args, depth: int) -> tuple[Speed, Speed, dict]:
    """(prefill, decode) tok/s at one depth, and llama-bench's build/cpu fields."""
    p = subprocess.run(llama_bench_cmd(bin_dir, model, cache, args, depth), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise SystemExit(f"llama-bench failed ({cache.label} @ depth {depth}):\n"
                         + "\n".join(p.stderr.splitlines()[-20:]))
    prefill, decode, info = parse_llama_bench(p.stdout)
    if depth not in prefill or depth not in decode:
        raise SystemExit(f"llama-bench {cache.label} @ depth {depth}: no prefill/decode test at that depth in its JSON")
    return prefill[depth], decode[depth], info


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

def run_ours(model: str, cache: Cache, args, tokens: list[int], depths: list[int]):
    """llama-bench's workloads on one context: fill to each depth d (untimed, increasing), then
    timed_depths on the view of the context past d, so its 'prefill from empty' is prefill at d
    and its 'decode at 0' is decode at d. Yields (the cache as resolved, d, prefill, decode) as
    each depth finishes. An auto@PATH cache times PATH instead of model."""
    from kvconvert.runtime.engine import ContextParams, Model

    ctx = Model(cache.path or model).context(ContextParams(n_ctx=len(tokens), n_batch=FILL_CHUNK, type_k=cache.k,
                                                           type_v=cache.v, n_threads=args.threads))
    if cache.k == "auto" or cache.v == "auto":  # name what it resolved to
        cache = Cache(str(ctx.params.type_k), str(ctx.params.type_v), own=True, path=cache.path)
    filled = 0
    for d in depths:
        ctx.reset(filled)
        for i in range(filled, d, FILL_CHUNK):
            ctx.eval(tokens[i:min(i + FILL_CHUNK, d)])
        filled = d
        samples = [timed_depths(ctx.eval, lambda n, d=d: ctx.reset(d + n), tokens[d:], [0], args.prefill, args.decode)
                   for _ in range(args.reps)]
        yield cache, d, Speed.of([s[0] for s in samples]), Speed.of([s[1][0].tokens_per_s for s in samples])


def ppl_ours(model: str, cache: Cache, args, chunks) -> metrics.Score:
    from kvconvert.runtime.engine import ContextParams, Model

    ctx = Model(model).context(ContextParams(n_ctx=args.ppl_ctx, type_k=cache.k, type_v=cache.v,
                                             n_threads=args.threads))
    nll = []
    for c in chunks:
        ctx.reset()
        nll.append(metrics.chunk_nll(ctx.eval(c, all_logits=True), c))
    return metrics.score(np.concatenate(nll))


# ---- what has been measured: saved as it goes, resumed ----

class ResumeError(ValueError):
    """A --resume file that cannot be continued by this run (one line: what differs)."""


def save_json(path: str | os.PathLike, doc: dict) -> None:
    """Write doc to path atomically: a temporary file in the same directory, then os.replace,
    so the file is always either the previous save or this one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def progress_line(engine: str, cache: Cache, depth: int, prefill: Speed, decode: Speed, seconds: float) -> str:
    return (f"{engine} {cache.label} @ depth {depth}: prefill {prefill} tok/s, decode {decode} tok/s "
            f"({seconds:.1f} s)")


@dataclass
class Results:
    """Every measurement so far (this run's and a --resume'd save's); rewrites --save after each."""
    model: str
    args: argparse.Namespace
    save: str | None = None
    runs: list[Run] = field(default_factory=list)
    llama_cpp: dict = field(default_factory=dict)  # llama-bench's build/cpu fields
    perplexity: dict = field(default_factory=dict)  # engine -> [PPL, ±]
    llama_ppl_chunks: int = 0  # chunks llama-perplexity reported
    complete: bool = False

    def setup(self) -> dict:
        """What a --resume'd save must share with this run."""
        a = self.args
        return {"model": self.model, "threads": a.threads, "reps": a.reps, "n_prefill": a.prefill,
                "n_decode": a.decode, "busy": a.busy}

    def ppl_setup(self) -> dict:
        a = self.args
        return {"ctx": a.ppl_ctx, "chunks": a.ppl_chunks, "cache": a.ppl_cache.spec}

    def find(self, engine: str, spec: str) -> Run | None:
        return next((r for r in self.runs if r.engine == engine and r.spec == spec), None)

    def todo(self, engine: str, cache: Cache, depths: list[int]) -> list[int]:
        """The depths of (engine, cache) not measured yet (prefill and decode both)."""
        r = self.find(engine, cache.spec)
        return [d for d in depths if r is None or d not in r.prefill or d not in r.decode]

    def record(self, engine: str, asked: Cache, cache: Cache, model: str, depth: int, prefill: Speed,
               decode: Speed) -> Run:
        """One finished measurement: merged into its run (asked: the cache as requested; cache: as
        resolved), then everything is saved."""
        r = self.find(engine, asked.spec)
        if r is None:
            r = Run(engine, cache, spec=asked.spec, model=model)
            self.runs.append(r)
        r.cache = cache
        r.prefill[depth], r.decode[depth] = prefill, decode
        self.write()
        return r

    def record_ppl(self, engine: str, ppl: float, err: float) -> None:
        self.perplexity[engine] = [ppl, err]
        self.write()

    def document(self) -> dict:
        return {**self.setup(), "depths": self.args.depths, "complete": self.complete, "llama_cpp": self.llama_cpp,
                "runs": [asdict(r) for r in self.runs],
                "perplexity": dict(self.perplexity) if self.args.ppl_chunks else None,
                "perplexity_setup": {**self.ppl_setup(), "llama_cpp_chunks": self.llama_ppl_chunks}
                if self.args.ppl_chunks else None}

    def write(self) -> None:
        if self.save:
            save_json(self.save, self.document())

    def resume(self, path: str | os.PathLike) -> int:
        """Take in a previous save's measurements (ResumeError if it is not this run's setup);
        the number of (engine, cache, depth) measurements kept."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ResumeError(f"--resume {path}: cannot read it ({e})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
            raise ResumeError(f"--resume {path}: not a bench/peer.py save (no runs)")
        diffs = []
        for key, want in self.setup().items():
            got = doc.get(key)
            same = got == want if key != "model" else \
                isinstance(got, str) and Path(got).expanduser().resolve() == Path(want).expanduser().resolve()
            if not same:
                diffs.append(f"{key} {'missing' if got is None else repr(got)}, this run {want!r}")
        if diffs:
            raise ResumeError(f"--resume {path}: a different run ({'; '.join(diffs)})")
        try:
            runs = [Run.from_json(r) for r in doc["runs"]]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ResumeError(f"--resume {path}: a run it holds is unreadable ({type(e).__name__}: {e})") from None
        for r in runs:  # merged by (engine, cache as asked)
            have = self.find(r.engine, r.spec)
            if have is None:
                self.runs.append(r)
            else:
                have.prefill.update(r.prefill)
                have.decode.update(r.decode)
        self.llama_cpp = doc.get("llama_cpp") or self.llama_cpp
        ppl, setup = doc.get("perplexity") or {}, doc.get("perplexity_setup") or {}
        if self.args.ppl_chunks and ppl and {k: setup.get(k) for k in self.ppl_setup()} == self.ppl_setup():
            self.perplexity.update({k: list(v) for k, v in ppl.items()})
            self.llama_ppl_chunks = int(setup.get("llama_cpp_chunks") or 0)
        return sum(len(set(r.prefill) & set(r.decode)) for r in runs)


def measure(results: Results, bin_dir: Path, tokens: list[int], log=None) -> None:
    """Every (engine, cache, depth) of the run not in results yet, each recorded (and saved) as it
    finishes, with a line on log (default: stderr)."""
    args, model, log = results.args, results.model, log or sys.stderr
    for c in args.ours:
        depths = results.todo("kvconvert", c, args.depths)
        if depths != args.depths:
            print(f"kvconvert {c.label}: depths {', '.join(map(str, sorted(set(args.depths) - set(depths))))} "
                  "already measured", file=log, flush=True)
        if not depths:
            continue
        print(f"kvconvert {c.label} ...", file=log, flush=True)
        t0 = time.perf_counter()
        for cache, d, prefill, decode in run_ours(model, c, args, tokens, depths):
            results.record("kvconvert", c, cache, c.path or model, d, prefill, decode)
            print(progress_line("kvconvert", cache, d, prefill, decode, time.perf_counter() - t0), file=log, flush=True)
            t0 = time.perf_counter()
    for c in args.llama:
        depths = results.todo("llama.cpp", c, args.depths)
        if depths != args.depths:
            print(f"llama-bench {c.label}: depths {', '.join(map(str, sorted(set(args.depths) - set(depths))))} "
                  "already measured", file=log, flush=True)
        for d in depths:
            print(f"llama-bench {c.label} @ depth {d} ...", file=log, flush=True)
            t0 = time.perf_counter()
            prefill, decode, info = run_llama_bench(bin_dir, model, c, args, d)
            results.llama_cpp = info or results.llama_cpp
            results.record("llama.cpp", c, c, model, d, prefill, decode)
            print(progress_line("llama.cpp", c, d, prefill, decode, time.perf_counter() - t0), file=log, flush=True)


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
    llama.cpp does not have (and for another file's own caches, auto@PATH)."""
    same = not c.path and c.k in GGML_TYPES and c.v in GGML_TYPES
    kv = (c.k, c.v) if same else ("q8_0", "q8_0")
    return [r for r in llama if (r.cache.k, r.cache.v) == kv]


def speed_table(ours: list[Run], llama: list[Run], args) -> str:
    """Rows at every depth asked for or measured (a --resume'd save may hold more); '—' where
    llama.cpp has no such cache or depth."""
    out = ["| measure | kvconvert cache | kvconvert tok/s | llama.cpp cache | llama.cpp tok/s | ratio |",
           "|---|---|---|---|---|---|"]
    depths = sorted(set(args.depths).union(*(r.prefill.keys() | r.decode.keys() for r in ours + llama)))
    for what, n in (("prefill", args.prefill), ("decode", args.decode)):
        for d in depths:
            name = f"{what} {n} @ depth {d}" if d or what == "decode" else f"{what} {n} from empty"
            for a in ours:
                x = getattr(a, what).get(d)
                if x is None:
                    continue
                for b in partners(a.cache, llama) or [None]:
                    y = getattr(b, what).get(d) if b else None
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


def fail(message: str) -> None:
    """One line on stderr, exit status 2 (argparse's for bad usage)."""
    print(f"bench/peer.py: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="GGUF (default: the Qwen2.5-Coder-0.5B Q4_K_M fixture)")
    p.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    p.add_argument("-r", "--reps", type=int, default=3, help="repetitions of each test, both engines")
    p.add_argument("--depths", default="0,4096,16384", help="context depths of prefill and decode")
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--ours", default="f16/f16,tq4/tq4",
                   help="kvconvert caches: K/V, auto (the file's own) or auto@PATH / @PATH (another GGUF's own)")
    p.add_argument("--llama", default="f16/f16,f16/f16+fa,q8_0/q8_0+fa", help="llama.cpp caches K/V[+fa]")
    p.add_argument("--ppl-ctx", type=int, default=512)
    p.add_argument("--ppl-chunks", type=int, default=4, help="0: no perplexity")
    p.add_argument("--ppl-cache", default="f16/f16", help="cache of both perplexity runs")
    p.add_argument("--busy", type=int, default=0, help="N CPU-burning processes for the whole run")
    p.add_argument("--bin", default=None, help="llama-bench's directory (default: scripts/build_llama_bench.sh)")
    p.add_argument("--save", default=None,
                   help="write every number as JSON, rewritten after each measurement (default: the --resume file)")
    p.add_argument("--resume", default=None, metavar="FILE.json",
                   help="a previous --save (possibly partial): measure only what it does not hold")
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
    for i, c in enumerate(args.ours):  # before any long work: a missing file fails now, not an hour in
        if c.path:
            path = Path(c.path).expanduser()
            if not path.is_file():
                fail(f"--ours auto@{c.path}: no such file")
            args.ours[i] = Cache(c.k, c.v, path=str(path.resolve()))
    args.resume, args.save = (str(Path(f).expanduser()) if f else None for f in (args.resume, args.save))
    if args.resume and not Path(args.resume).is_file():
        fail(f"--resume {args.resume}: no such file")
    args.save = args.save or args.resume
    if args.save and not Path(args.save).resolve().parent.is_dir():
        fail(f"--save {args.save}: its directory does not exist")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from kvconvert.runtime.engine import Model
    from kvconvert.testdata import fixtures

    model = str(args.model or fixtures.qwen25_coder_gguf())
    results = Results(model, args, save=args.save)
    if args.resume:
        try:
            kept = results.resume(args.resume)
        except ResumeError as e:
            fail(str(e))
        print(f"resumed {args.resume}: {kept} measurement(s) kept"
              + (", perplexity kept" if results.perplexity else ""), file=sys.stderr, flush=True)
    bin_dir = llama_bin(args.bin)  # built before the load starts
    m = Model(model)
    vocab = min([m.args.vocab_size] + [Model(c.path).args.vocab_size for c in args.ours if c.path])
    tokens = random_tokens(vocab, max(args.depths) + 16 + max(args.prefill, args.decode))
    text = fixtures.austen_text("eval")[: 6 * args.ppl_ctx * (args.ppl_chunks + 1)]
    spec = m.source.tokenizer_spec()  # llama-perplexity: BOS before the text, and first in every chunk
    bos = spec.bos_id if spec.effective_add_bos() else None
    chunks = metrics.chunks(m.tokenize(text), args.ppl_ctx, args.ppl_chunks, bos=bos) if args.ppl_chunks else []
    del m
    with busy(args.busy), tempfile.TemporaryDirectory() as tmp:
        measure(results, bin_dir, tokens)
        if chunks and "kvconvert" not in results.perplexity:
            print(f"kvconvert perplexity {args.ppl_cache.label}, {len(chunks)} x {args.ppl_ctx} ...",
                  file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            a = ppl_ours(model, args.ppl_cache, args, chunks)
            results.record_ppl("kvconvert", a.ppl, a.ppl_err)
            print(f"kvconvert perplexity {a.ppl:.3f} ± {a.ppl_err:.3f} ({time.perf_counter() - t0:.1f} s)",
                  file=sys.stderr, flush=True)
        if chunks and "llama.cpp" not in results.perplexity:
            print(f"llama-perplexity {args.ppl_cache.label} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            Path(tmp, "eval.txt").write_text(text, encoding="utf-8")
            b_ppl, b_err, results.llama_ppl_chunks = run_llama_perplexity(bin_dir, model, str(Path(tmp, "eval.txt")),
                                                                          args.ppl_cache, args)
            results.record_ppl("llama.cpp", b_ppl, b_err)
            print(f"llama.cpp perplexity {b_ppl:.3f} ± {b_err:.3f} ({time.perf_counter() - t0:.1f} s)",
                  file=sys.stderr, flush=True)
    results.complete = True
    results.write()
    print("\n" + header(model, args, results.llama_cpp, bin_dir) + "\n")
    print(speed_table([r for r in results.runs if r.engine == "kvconvert"],
                      [r for r in results.runs if r.engine == "llama.cpp"], args))
    if chunks:
        (a_ppl, a_err), (b_ppl, b_err) = results.perplexity["kvconvert"], results.perplexity["llama.cpp"]
        print(f"\nperplexity, Austen eval, {len(chunks)} chunks × {args.ppl_ctx} tokens "
              f"(llama-perplexity: {results.llama_ppl_chunks}), cache {args.ppl_cache.label}:\n")
        print("| measure | kvconvert | llama.cpp | ratio |\n|---|---|---|---|")
        print(f"| perplexity | {a_ppl:.3f} ± {a_err:.3f} | {b_ppl:.3f} ± {b_err:.3f} | {a_ppl / b_ppl:.4f} |")


if __name__ == "__main__":
    main()
