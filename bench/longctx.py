"""Shared pieces of the issue-19 long-context benchmarks (bench/long_quality.py, bench/needle.py,
bench/agreement.py): the cache configs, and one small "runner" interface over kvconvert's
runtime and llama.cpp (llama-cpp-python 0.3.36) so every script drives both engines the same way.

A runner appends tokens to one sequence and returns logits only where asked ("none", "last" or
"all" rows of a slice), and rewinds to an earlier length. llama.cpp is driven through its
low-level batch API (llama_batch logits flags), so a 32k context never allocates n_ctx × vocab
logits (llama_cpp.Llama(logits_all=True) would: 32768 × 151936 floats = 19 GB).

Files: the base is the f16 conversion of the model's fixture that bench/results.py makes
(~/.cache/kvconvert/results/<slug>.f16.gguf; Qwen2.5-Coder-0.5B unless a script's --model names
SmolLM2-135M, whose context is 8k); each shipped calibrated profile is folded into its own f16
conversion of the same fixture (as results.py does), cached under ~/.cache/kvconvert/bench19/.
Profile files compute the same function as the base file, so their KLD is against kvconvert's
f16-cache run of the base file; llama.cpp configs run the base file and are compared with
llama.cpp's own f16-cache run.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from results import MODELS  # --model name → (file slug, fixture getter): the models bench/results.py measures

REPO = Path(__file__).resolve().parents[1]
_model = "qwen"  # a key of MODELS (a script's --model)
PROFILES = ("balanced", "long-context", "max-quality")
# positions a recent window's ring lets a runner rewind (bench/needle.py: question + answer ~40 tokens)
REWIND = 64


@dataclass(frozen=True)
class Config:
    name: str  # short name used on the command line and in result files
    engine: str  # "kvc" (kvconvert's runtime) or "llama" (llama.cpp)
    file: str  # "base" or a shipped profile name
    type_k: str
    type_v: str
    label: str  # for tables
    recent: int | None = None  # kvconvert's exact recent window (None: the file's own)
    sink: int | None = None  # kvconvert's exact first positions (None: the file's own)
    study: bool = False  # a one-question experiment, left out of "all"


def _configs() -> dict[str, Config]:
    c = [Config("f16", "kvc", "base", "f16", "f16", "kvconvert f16 K / f16 V"),
         Config("q8_0", "kvc", "base", "q8_0", "q8_0", "kvconvert q8_0 K / q8_0 V")]
    c += [Config(p, "kvc", p, "auto", "auto", f"kvconvert {p} (profile K+V, no recent window)", 0) for p in PROFILES]
    # the recent exact window (README "The fidelity frontier"): does its gain hold deep in context?
    c += [Config(f"{p}+w{w}", "kvc", p, "auto", "auto", f"kvconvert {p} + recent window {w}", w)
          for p in PROFILES for w in (32,)]
    # larger windows over the same codes (is the window the lever at 3.5 bpv deep in context?)
    c += [Config(f"long-context+w{w}", "kvc", "long-context", "auto", "auto",
                 f"kvconvert long-context + recent window {w}", w, study=True) for w in (64, 128, 256)]
    # more exact sink positions (the profiles keep 1): does the start of the text carry the error?
    c += [Config(f"long-context+w32+s{s}", "kvc", "long-context", "auto", "auto",
                 f"kvconvert long-context + recent window 32 + {s} sinks", 32, s, True) for s in (4, 16)]
    c += [Config(f"llama-{t}", "llama", "base", t, t, f"llama.cpp {t} K / {t} V (FA)") for t in ("f16", "q8_0", "q4_0")]
    # QJL question (issue 19 item 4): uniform TurboQuant K at about the same bits with and without QJL,
    # V in f16 so only K differs (mean-centered from the first batch, one f16 sink position, as
    # bench/results.py's uniform tq rows)
    for spec, bpv in (("tq4", "4.25"), ("tq3:qjl=lo", "4.50"), ("tq3", "3.25"), ("tq2:qjl=lo", "3.50")):
        name = spec.replace(":qjl=lo", "+qjl")
        c.append(Config(f"{name}-k", "kvc", "base", spec, "f16",
                        f"kvconvert {name.replace('+qjl', ' + QJL')} K ({bpv} bpv) / f16 V", study=True))
    return {x.name: x for x in c}


CONFIGS = _configs()
BASE_OF = {"kvc": "f16", "llama": "llama-f16"}  # KLD reference per engine


def use_model(name: str) -> None:
    """Point model_file() at another model's fixture and profiles (a script's --model)."""
    global _model
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    _model = name


def slug() -> str:
    return MODELS[_model][0]


def is_current(rec: dict) -> bool:
    """Whether a saved result record is of the current model (records from before --model are Qwen's)."""
    return rec.get("model", MODELS["qwen"][0]) == slug()


def _fixture() -> Path:
    return MODELS[_model][1]()


def work_dir() -> Path:
    from kvconvert.base.paths import cache_dir

    d = cache_dir() / "bench19"
    d.mkdir(parents=True, exist_ok=True)
    return d


def model_file(which: str) -> Path:
    """The base f16 conversion of the fixture, or a profile folded into one (made once, cached)."""
    from kvconvert import convert
    from kvconvert.base.paths import cache_dir

    name = slug()
    if which == "base":
        out = cache_dir() / "results" / f"{name}.f16.gguf"  # the file bench/results.py measures
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.exists():
            convert(_fixture(), out, weights="f16")
        return out
    prof = Path(which) if which.endswith(".json") else REPO / "profiles" / f"{name}-{which}.json"
    digest = hashlib.sha256(prof.read_bytes()).hexdigest()[:12]  # a re-searched profile is another file
    out = work_dir() / f"{name}-{prof.stem.removeprefix(name + '-')}-{digest}.f16.gguf"
    if not out.exists():
        convert(_fixture(), out, weights="f16", profile=str(prof))
    return out


def parse_configs(text: str) -> list[Config]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if names == ["all"]:
        names = [n for n, c in CONFIGS.items() if not c.study]
    bad = [n for n in names if n not in CONFIGS and not _profile_path(n)]
    if bad:
        raise SystemExit(f"unknown config(s) {bad}; known: {', '.join(CONFIGS)}, or PROFILE.json[+wN]")
    return [CONFIGS.get(n) or _profile_config(n) for n in names]


def _split_window(name: str) -> tuple[str, int | None]:
    """"PATH.json+w32" → ("PATH.json", 32); without a "+wN" tail → (name, None)."""
    head, sep, tail = name.rpartition("+w")
    return (head, int(tail)) if sep and tail.isdigit() else (name, None)


def _profile_path(name: str) -> Path | None:
    path = Path(_split_window(name)[0])
    return path if path.suffix == ".json" and path.is_file() else None


def _profile_config(name: str) -> Config:
    """An experiment: a profile JSON from disk (e.g. a re-searched or hand-edited one), optionally
    with a recent window ("PATH.json+w32"; without it the file's own window)."""
    path, w = _split_window(name)
    return Config(name, "kvc", str(Path(path).resolve()), "auto", "auto", f"kvconvert profile {Path(path).stem}"
                  + (f" + recent window {w}" if w is not None else ""), w, study=True)


class KvcRunner:
    """kvconvert's runtime: one Context."""

    def __init__(self, cfg: Config, n_ctx: int, threads: int, n_batch: int = 512):
        from kvconvert.runtime.engine import ContextParams, Model

        self.cfg, self.n_batch = cfg, n_batch
        self.model = Model(model_file(cfg.file))
        self.ctx = self.model.context(ContextParams(n_ctx=n_ctx, n_batch=n_batch, type_k=cfg.type_k,
                                                    type_v=cfg.type_v, n_threads=threads,
                                                    n_recent=cfg.recent, n_sink=cfg.sink,
                                                    n_rewind=REWIND))
        self.n_vocab = self.ctx.n_vocab
        self.kv_bytes_per_token = self.ctx.kv_bytes_per_token

    @property
    def n_past(self) -> int:
        return self.ctx.n_past

    def rewind(self, n_past: int) -> None:
        self.ctx.reset(n_past)

    def feed(self, tokens, logits: str = "none"):
        """Append tokens; returns None, the last row (vocab,) or all rows (n, vocab)."""
        from kvconvert.runtime.engine import check_logits

        toks = [int(t) for t in tokens]
        if logits == "all":
            return check_logits(self.ctx.eval(toks, all_logits=True), self.ctx, "in a feed")
        out = None
        for i in range(0, len(toks), self.n_batch):
            out = self.ctx.eval(toks[i:i + self.n_batch])
        return None if logits == "none" else check_logits(out, self.ctx, "in a feed")


class LlamaRunner:
    """llama.cpp through llama-cpp-python's low-level batch API on one sequence; flash attention on,
    its default K rotation; logits requested per position (llama_batch.logits flags)."""

    def __init__(self, cfg: Config, n_ctx: int, threads: int, n_batch: int = 512):
        import llama_cpp
        from kvconvert.kvcache.llama_cpp_peer import load

        self.cfg, self.n_batch, self._lc = cfg, n_batch, llama_cpp
        self.llm = load(model_file(cfg.file), n_ctx, logits_all=False, n_batch=n_batch, type_k=cfg.type_k,
                        type_v=cfg.type_v, n_threads=threads, flash_attn=True)
        self.n_vocab = self.llm.n_vocab()
        self._n_past = 0
        self.kv_bytes_per_token = None

    @property
    def n_past(self) -> int:
        return self._n_past

    def rewind(self, n_past: int) -> None:
        if not self.llm._ctx.kv_cache_seq_rm(0, n_past, -1):
            raise RuntimeError(f"llama.cpp could not rewind to {n_past}")
        self._n_past = n_past

    def feed(self, tokens, logits: str = "none"):
        from kvconvert.kvcache.llama_cpp_peer import quiet

        toks = [int(t) for t in tokens]
        rows, last = [], None
        for i in range(0, len(toks), self.n_batch):
            part = toks[i:i + self.n_batch]
            b = self.llm._batch.batch
            b.n_tokens = len(part)
            for j, t in enumerate(part):
                b.token[j], b.pos[j], b.n_seq_id[j] = t, self._n_past + j, 1
                b.seq_id[j][0] = 0
                b.logits[j] = logits == "all"
            final = i + self.n_batch >= len(toks)
            if logits == "last" and final:
                b.logits[len(part) - 1] = True
            with quiet():
                rc = self._lc.llama_decode(self.llm._ctx.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            self._n_past += len(part)
            if logits == "all":
                ptr = self._lc.llama_get_logits(self.llm._ctx.ctx)
                rows.append(np.ctypeslib.as_array(ptr, shape=(len(part) * self.n_vocab,))
                            .reshape(len(part), self.n_vocab).copy())
            elif logits == "last" and final:
                ptr = self._lc.llama_get_logits_ith(self.llm._ctx.ctx, len(part) - 1)
                last = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()
        if logits == "all":
            return np.concatenate(rows)
        return last if logits == "last" else None

    def close(self) -> None:
        self.llm.close()


def runner(cfg: Config, n_ctx: int, threads: int, n_batch: int = 512):
    return (KvcRunner if cfg.engine == "kvc" else LlamaRunner)(cfg, n_ctx, threads, n_batch)


def greedy(r, first_logits: np.ndarray, max_new: int, stops: set[int] | None = None) -> list[int]:
    """Greedy tokens after ``first_logits`` (argmax; no penalties), stopping after a stop id
    (which is returned) or max_new tokens."""
    out, lg = [], first_logits
    for i in range(max_new):
        tok = int(np.argmax(lg))
        out.append(tok)
        if (stops and tok in stops) or i == max_new - 1:
            break
        lg = r.feed([tok], "last")
    return out


def append_jsonl(path: Path, rec: dict) -> None:
    rec = {**rec, "date": time.strftime("%Y-%m-%d %H:%M")}
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
