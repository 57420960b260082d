"""Serving under load, side by side: aggregate decode tok/s with 1, 4 and 8 concurrent
streams, each at a ~4k-token context, for `kvconvert serve` with the file's calibrated
caches, `kvconvert serve` with an f16 cache, and llama.cpp's server (llama-cpp-python's
`llama_cpp.server`) with its f16 cache — same GGUF, same threads, one run. Also the KV
memory each stream holds. A benchmark, not a test: run it by hand on a quiet machine.

    pip install fastapi sse-starlette starlette-context pydantic-settings   # llama-cpp-python[server]'s extras
    python bench/serve_load.py [--model FILE] [--threads 2] [--streams 1,4,8] [--depth 4000] [--tokens 64]

Each stream sends a different ~DEPTH-token slice of the held-out Austen text to
/v1/completions (greedy, streaming) and reads TOKENS tokens. Aggregate decode tok/s is
counted in the window where every stream of the round is decoding (from the last first
token to the first last token): tokens received in it / its length — prefill is not in it.
Without --model the SmolLM2-135M fixture is converted once with the shipped balanced
profile (cached under ~/.cache/kvconvert/bench).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kvconvert.base.paths import cache_dir
from kvconvert.testdata import fixtures

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Round:
    server: str
    streams: int
    agg_tps: float  # decode tokens/s summed over streams, all streams decoding
    per_stream_tps: float
    round_tps: float  # all generated tokens / the round's wall time (prefill and queueing included)
    ttft_s: float  # mean time to first token (prefill + queueing)
    failed: int
    kv_mib_per_stream: float | None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(base: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited")
        try:
            with urllib.request.urlopen(base + "/v1/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{what} did not start in 180 s")


def _start(kind: str, model: Path, n_slots: int, n_ctx: int, threads: int, cache: str | None):
    port = _free_port()
    if kind == "kvconvert":
        cmd = [sys.executable, "-m", "kvconvert.cli", "serve", str(model), "--port", str(port), "--parallel",
               str(n_slots), "--ctx", str(n_ctx), "--threads", str(threads)]
        if cache:
            cmd += ["--ctk", cache, "--ctv", cache]
    else:  # llama-cpp-python's server: one request at a time on one context (no parallel slots)
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
               "--host", "127.0.0.1", "--n_ctx", str(n_ctx), "--n_threads", str(threads),
               "--n_threads_batch", str(threads), "--n_batch", "512",
               "--interrupt_requests", "False"]  # queue concurrent requests (its default cancels the running one)
    log = open(cache_dir() / "bench" / f"serve-{kind}.log", "w")  # a pipe would fill up and stall the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    _wait(base, proc, f"{kind} server (log: {log.name})")
    with urllib.request.urlopen(base + "/v1/models", timeout=10) as r:
        model_id = json.loads(r.read())["data"][0]["id"]
    return proc, base, model_id


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stream(base: str, model_id: str, prompt: str, max_tokens: int, stamps: list, errors: list) -> None:
    body = json.dumps({"model": model_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True}).encode()
    req = urllib.request.Request(base + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=900) as r:
            for line in r:
                line = line.strip()
                if line.startswith(b"data:") and line != b"data: [DONE]":
                    choices = json.loads(line[5:]).get("choices") or [{}]
                    if choices[0].get("text"):  # a token (not a role or keep-alive event)
                        stamps.append(time.monotonic())
    except Exception as e:  # noqa: BLE001 - counted as a failed stream
        errors.append(e)


def _round(base: str, model_id: str, prompts: list[str], max_tokens: int) -> tuple[float, float, float, float, int]:
    """(aggregate decode tok/s, mean per-stream decode tok/s, round tok/s incl. prefill, mean TTFT, failed)."""
    stamps: list[list[float]] = [[] for _ in prompts]
    errors: list = []
    t0 = time.monotonic()
    threads = [threading.Thread(target=_stream, args=(base, model_id, p, max_tokens, stamps[i], errors))
               for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    done = [s for s in stamps if len(s) > 1]
    failed = len(prompts) - len(done)
    if not done:
        return 0.0, 0.0, 0.0, 0.0, failed
    ttft = sum(s[0] - t0 for s in done) / len(done)
    per_stream = sum((len(s) - 1) / (s[-1] - s[0]) for s in done) / len(done)
    total = sum(len(s) for s in done) / wall
    lo, hi = max(s[0] for s in done), min(s[-1] for s in done)
    if hi > lo:  # every stream decoding at once: tokens received in that window
        agg = sum(sum(1 for x in s if lo < x <= hi) for s in done) / (hi - lo)
    else:  # a server that runs one request at a time: its decode rate is that of one stream
        agg = sum(len(s) - 1 for s in done) / sum(s[-1] - s[0] for s in done)
    return agg, per_stream, total, ttft, failed


def _prompts(n: int, depth_chars: int) -> list[str]:
    text = fixtures.austen_text("eval")
    step = len(text) // max(n, 1)
    return [text[i * step: i * step + depth_chars] for i in range(n)]


def _kv_mib(model: Path, cache: str | None, n_ctx: int) -> float:
    from kvconvert.runtime.engine import ContextParams, Model

    m = Model(model)
    ctx = m.context(ContextParams(n_ctx=16, type_k=cache or "auto", type_v=cache or "auto"))
    return ctx.kv_bytes_per_token * n_ctx / 2**20


def default_model() -> Path:
    out = cache_dir() / "bench" / "smollm2-135m-balanced.gguf"
    if not out.exists():
        from kvconvert.conversion.profile import load_profile
        from kvconvert.conversion.writer import convert

        out.parent.mkdir(parents=True, exist_ok=True)
        prof = load_profile(ROOT / "profiles" / "smollm2-135m-balanced.json")
        convert(fixtures.smollm2_gguf(), out, weights="q8_0", profile=prof)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--streams", default="1,4,8")
    p.add_argument("--depth", type=int, default=4000, help="prompt tokens per stream (about)")
    p.add_argument("--tokens", type=int, default=64, help="tokens generated per stream")
    p.add_argument("--servers", default="kvconvert,kvconvert-f16,llama.cpp")
    args = p.parse_args()
    model = args.model or default_model()
    streams = [int(x) for x in args.streams.split(",")]
    n_ctx = args.depth + args.tokens + 256
    chars = args.depth * 4  # ~4 characters per token on this text
    servers = args.servers.split(",")
    print(f"# {model.name}; {args.threads} threads; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; depth ~{args.depth} tokens/stream, {args.tokens} tokens generated")
    rows: list[Round] = []
    for server in servers:
        cache = "f16" if server.endswith("-f16") else None
        kind = "llama.cpp" if server == "llama.cpp" else "kvconvert"
        kv = _kv_mib(model, cache if kind == "kvconvert" else "f16", n_ctx)
        proc, base, model_id = _start(kind, model, max(streams), n_ctx, args.threads, cache)
        try:
            _round(base, model_id, ["Hello"], 4)  # warm-up
            for n in streams:
                agg, per, total, ttft, failed = _round(base, model_id, _prompts(n, chars), args.tokens)
                rows.append(Round(server, n, agg, per, total, ttft, failed, kv))
                print(f"{server:14s} {n} streams: decode {agg:7.1f} tok/s aggregate, {per:6.1f} per stream; "
                      f"round {total:6.1f} tok/s with prefill; TTFT {ttft:6.1f} s; failed {failed}", flush=True)
        finally:
            _stop(proc)
    print("\naggregate decode tok/s (in brackets: all tokens / round wall time, prefill included)")
    print("\n| server | cache | KV MiB / stream | " + " | ".join(f"{n} stream{'s' * (n > 1)}" for n in streams)
          + " |")
    print("|---|---|---|" + "---|" * len(streams))
    for server in servers:
        mine = [r for r in rows if r.server == server]
        cache = "f16" if server != "kvconvert" else "file's profile"
        cells = [f"{r.agg_tps:.1f} ({r.round_tps:.1f})" + (f" {r.failed} failed" if r.failed else "") for r in mine]
        print(f"| {server.removesuffix('-f16')} | {cache} | {mine[0].kv_mib_per_stream:.1f} | " + " | ".join(cells)
              + " |")
    ref = {r.streams: r.agg_tps for r in rows if r.server == "llama.cpp"}
    if ref:
        for server in servers:
            if server != "llama.cpp":
                ratios = [f"{r.agg_tps / ref[r.streams]:.2f}×" for r in rows if r.server == server and ref.get(r.streams)]
                print(f"{server} / llama.cpp: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
