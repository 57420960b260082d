"""bench/peer.py without llama.cpp: its arguments, llama-bench's JSON and
llama-perplexity's log (recorded samples), the pairing of caches in the table, --busy."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_peer", ROOT / "bench" / "peer.py")
peer = sys.modules["bench_peer"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(peer)

# llama-bench -m SmolLM2-135M-Instruct.Q4_1.gguf -t 2 -r 1 -o json -p 64 -n 4 -d 0,256 -ctk f16 -ctv f16 -fa 0
# (the scripts/build_llama_bench.sh build; two of its four tests)
LLAMA_BENCH_JSON = """[
  {
    "build_commit": "0c1e570",
    "build_number": 1,
    "cpu_info": "Intel(R) Xeon(R) Processor",
    "gpu_info": "",
    "backends": "CPU",
    "model_filename": "/root/.cache/kvconvert/fixtures/SmolLM2-135M-Instruct.Q4_1.gguf",
    "model_type": "llama 256M Q4_1",
    "model_size": 96576768,
    "model_n_params": 134515008,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_threads": 2,
    "cpu_mask": "0x0",
    "cpu_strict": false,
    "poll": 50,
    "type_k": "f16",
    "type_v": "f16",
    "n_gpu_layers": -1,
    "n_cpu_moe": 0,
    "split_mode": "layer",
    "main_gpu": 0,
    "no_kv_offload": false,
    "flash_attn": 0,
    "devices": "auto",
    "tensor_split": "0.00",
    "tensor_buft_overrides": "none",
    "load_mode": "auto",
    "lazy_mode": "auto",
    "embeddings": false,
    "no_op_offload": 0,
    "no_host": false,
    "repack": true,
    "fit_target": 0,
    "fit_min_ctx": 0,
    "n_prompt": 64,
    "n_gen": 0,
    "n_depth": 0,
    "test_time": "2026-12-06T06:32:46Z",
    "avg_ns": 1683504540,
    "stddev_ns": 0,
    "avg_ts": 38.015935,
    "stddev_ts": 0.000000,
    "samples_ns": [ 1683504540 ],
    "samples_ts": [ 38.0159 ]
  },
  {
    "build_commit": "0c1e570",
    "build_number": 1,
    "cpu_info": "Intel(R) Xeon(R) Processor",
    "gpu_info": "",
    "backends": "CPU",
    "model_filename": "/root/.cache/kvconvert/fixtures/SmolLM2-135M-Instruct.Q4_1.gguf",
    "model_type": "llama 256M Q4_1",
    "model_size": 96576768,
    "model_n_params": 134515008,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_threads": 2,
    "cpu_mask": "0x0",
    "cpu_strict": false,
    "poll": 50,
    "type_k": "f16",
    "type_v": "f16",
    "n_gpu_layers": -1,
    "n_cpu_moe": 0,
    "split_mode": "layer",
    "main_gpu": 0,
    "no_kv_offload": false,
    "flash_attn": 0,
    "devices": "auto",
    "tensor_split": "0.00",
    "tensor_buft_overrides": "none",
    "load_mode": "auto",
    "lazy_mode": "auto",
    "embeddings": false,
    "no_op_offload": 0,
    "no_host": false,
    "repack": true,
    "fit_target": 0,
    "fit_min_ctx": 0,
    "n_prompt": 0,
    "n_gen": 4,
    "n_depth": 256,
    "test_time": "2026-12-06T06:33:33Z",
    "avg_ns": 2414783723,
    "stddev_ns": 0,
    "avg_ts": 1.656463,
    "stddev_ts": 0.000000,
    "samples_ns": [ 2414783723 ],
    "samples_ts": [ 1.65646 ]
  }
]
"""

# the end of llama-perplexity -c 512 -b 512 --chunks 2 on the Austen eval text (stdout + stderr)
LLAMA_PERPLEXITY_LOG = """0.13.812.499 I perplexity: tokenization took 3.885 ms
0.13.812.504 I perplexity: calculating perplexity over 2 chunks, n_ctx=512, batch_size=512, n_seq=1
0.34.223.493 I perplexity: 20.41 seconds per pass - ETA 0.67 minutes
[1]15.3752,[2]17.8717,
0.52.520.936 I Final estimate: PPL = 17.8717 +/- 2.04412

"""


def test_defaults_are_issue_21s_workloads():
    a = peer.parse_args([])
    assert a.depths == [0, 4096, 16384] and (a.prefill, a.decode) == (512, 32)
    assert [c.label for c in a.llama] == ["f16/f16", "f16/f16 FA", "q8_0/q8_0 FA"]
    assert [c.label for c in a.ours] == ["f16/f16", "tq4/tq4"]
    assert a.busy == 0 and a.threads == os.cpu_count()


def test_caches_parse():
    a = peer.parse_args(["--llama", "q8_0/q8_0,f16/f16+fa", "--ours", "auto/auto,tq4/f16", "--depths", "512,0,512"])
    assert a.llama[0].fa  # quantized V needs flash attention: always on
    assert a.llama[1] == peer.Cache("f16", "f16", True)
    assert a.ours[0] == peer.Cache("auto", "auto") and a.depths == [0, 512]
    for bad in (["--llama", "tq4/tq4"], ["--ours", "f16/f16+fa"], ["--llama", "f16"], ["--busy", "-1"]):
        with pytest.raises(SystemExit):
            peer.parse_args(bad)


def test_llama_bench_command():
    a = peer.parse_args(["-t", "2", "-r", "1", "--depths", "0,256", "--prefill", "64", "--decode", "4"])
    cmd = peer.llama_bench_cmd(Path("/b"), "m.gguf", peer.Cache("q8_0", "q8_0", True), a)
    assert cmd[0] == "/b/llama-bench"
    flags = dict(zip(cmd[1::2], cmd[2::2]))
    assert flags == {"-m": "m.gguf", "-t": "2", "-r": "1", "-o": "json", "-p": "64", "-n": "4", "-d": "0,256",
                     "-ctk": "q8_0", "-ctv": "q8_0", "-fa": "1"}


def test_llama_bench_json():
    prefill, decode, info = peer.parse_llama_bench(LLAMA_BENCH_JSON)
    assert set(prefill) == {0} and set(decode) == {256}
    assert prefill[0].mean > 0 and decode[256].mean > 0
    assert info["n_threads"] == 2 and info["build_commit"]


def test_llama_perplexity_log():
    ppl, err, n = peer.parse_llama_perplexity(LLAMA_PERPLEXITY_LOG)
    assert n == 2 and ppl > 1 and 0 < err < ppl
    with pytest.raises(ValueError):
        peer.parse_llama_perplexity("llama-perplexity: error")


def test_table_pairs_caches():
    a = peer.parse_args(["--depths", "0", "--prefill", "8", "--decode", "2"])
    s = peer.Speed(10.0, 1.0)
    run = lambda engine, c: peer.Run(engine, c, {0: s}, {0: peer.Speed(c.fa + 2.0, 0.0)})  # noqa: E731
    ours = [run("kvconvert", peer.Cache("f16", "f16")), run("kvconvert", peer.Cache("tq4", "tq4"))]
    llama = [run("llama.cpp", c) for c in a.llama]
    rows = peer.speed_table(ours, llama, a).splitlines()[2:]
    assert len(rows) == 2 * (2 + 1)  # f16 vs both f16 runs; tq4 vs q8_0/q8_0
    assert "| decode 2 @ depth 0 | tq4/tq4 | 2.00 ± 0.00 | q8_0/q8_0 FA | 3.00 ± 0.00 | 0.67× |" in rows
    only_q8 = peer.speed_table(ours, llama[2:], a).splitlines()[2:]  # no llama.cpp f16 run: no f16 ratio
    assert "| prefill 8 from empty | f16/f16 | 10.00 ± 1.00 | — | — | — |" in only_q8


def test_busy_processes_end_with_the_run():
    with peer.busy(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.returncode is not None for p in procs)  # killed and reaped
