"""bench/peer.py without llama.cpp or the engine: its arguments (auto@PATH), llama-bench's JSON and
llama-perplexity's log (recorded samples), the pairing of caches in the table, --busy, and the
save-as-it-goes / --resume logic with fake measurements (the engine calls monkeypatched)."""

from __future__ import annotations

import importlib.util
import json
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
    assert peer.parse_args(["--ours", "auto"]).ours == [peer.Cache("auto", "auto")]  # `auto` alone: auto/auto
    for bad in (["--llama", "tq4/tq4"], ["--ours", "f16/f16+fa"], ["--llama", "f16"], ["--busy", "-1"],
                ["--ours", "auto@"], ["--ours", "@"], ["--ours", "f16"]):
        with pytest.raises(SystemExit):
            peer.parse_args(bad)


def test_llama_bench_command_is_one_depth():
    a = peer.parse_args(["-t", "2", "-r", "1", "--depths", "0,256", "--prefill", "64", "--decode", "4"])
    cmd = peer.llama_bench_cmd(Path("/b"), "m.gguf", peer.Cache("q8_0", "q8_0", True), a, 256)
    assert cmd[0] == "/b/llama-bench"
    flags = dict(zip(cmd[1::2], cmd[2::2]))
    assert flags == {"-m": "m.gguf", "-t": "2", "-r": "1", "-o": "json", "-p": "64", "-n": "4", "-d": "256",
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


def test_speed_table_all_depths_measured():
    """A --resume'd save may hold depths this run did not ask for: they are in the table too, and a
    llama.cpp run without that depth shows '—'."""
    a = peer.parse_args(["--depths", "0", "--prefill", "8", "--decode", "2"])
    s = peer.Speed(10.0, 0.0)
    ours = [peer.Run("kvconvert", peer.Cache("f16", "f16"), {0: s, 4096: s}, {0: s, 4096: s})]
    llama = [peer.Run("llama.cpp", peer.Cache("f16", "f16"), {0: peer.Speed(5.0, 0.0)}, {0: s})]
    rows = peer.speed_table(ours, llama, a).splitlines()[2:]
    assert len(rows) == 4
    assert "| prefill 8 from empty | f16/f16 | 10.00 ± 0.00 | f16/f16 | 5.00 ± 0.00 | 2.00× |" in rows
    assert "| prefill 8 @ depth 4096 | f16/f16 | 10.00 ± 0.00 | f16/f16 | — | — |" in rows


# ---- auto@PATH: another GGUF's own caches ----

def test_profile_file_caches(tmp_path, monkeypatch):
    f = tmp_path / "smol-profiled.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setenv("HOME", str(tmp_path))
    a = peer.parse_args(["--ours", f"auto@{f},@{f},auto@~/smol-profiled.gguf,auto,f16/f16"])
    assert [c.path for c in a.ours] == [str(f.resolve())] * 3 + [None, None]
    assert a.ours[0].spec == f"auto@{f.resolve()}" and a.ours[3].spec == "auto/auto"
    resolved = peer.Cache("f16", "f16", own=True, path=a.ours[0].path)  # what the file's metadata said
    assert resolved.label == "f16/f16 (smol-profiled)"
    llama = [peer.Run("llama.cpp", c) for c in peer.parse_args([]).llama]
    # compared with llama.cpp's q8_0/q8_0 even where its types are llama.cpp's (f16 here)
    assert [r.cache.label for r in peer.partners(resolved, llama)] == ["q8_0/q8_0 FA"]
    assert [r.cache.label for r in peer.partners(peer.Cache("f16", "f16", own=True), llama)] == \
        ["f16/f16", "f16/f16 FA"]  # the --model file's own f16: llama.cpp has it


@pytest.mark.parametrize("ours", ["auto@{missing}", "f16/f16,@{missing}"])
def test_profile_file_missing(tmp_path, capsys, ours):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(SystemExit) as e:
        peer.parse_args(["--ours", ours.format(missing=missing)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "no such file" in err


# ---- saved as it goes, resumed ----

def test_save_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "peer.json"
    replaced = []
    real = os.replace
    monkeypatch.setattr(peer.os, "replace", lambda src, dst: (replaced.append((Path(src), Path(dst))), real(src, dst)))
    peer.save_json(path, {"runs": [1, 2]})
    assert json.loads(path.read_text()) == {"runs": [1, 2]}
    (src, dst), = replaced
    assert dst == path and src.parent == path.parent and src != path  # written beside it, then renamed
    with pytest.raises(TypeError):  # fails while writing: the previous save stays whole
        peer.save_json(path, {"runs": [3], "bad": object()})
    assert json.loads(path.read_text()) == {"runs": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peer.json"]  # no temporary file left


ARGS = ["--depths", "0,512", "--ours", "f16/f16,auto", "--llama", "f16/f16,q8_0/q8_0", "-t", "2", "-r", "1",
        "--prefill", "64", "--decode", "4", "--ppl-chunks", "0"]


def done(doc: dict) -> set[tuple[str, str, int]]:
    """(engine, cache as asked, depth) measured in a save."""
    return {(r["engine"], r["spec"], int(d)) for r in doc["runs"] for d in r["prefill"] if d in r["decode"]}


class Engines:
    """Fake run_ours / run_llama_bench: record their calls and what the save held at each, and
    die (KeyboardInterrupt, as a kill) at one (engine, cache, depth)."""

    def __init__(self, save: Path, kill: tuple | None = None):
        self.save, self.kill, self.calls, self.saved_before = save, kill, [], []

    def snapshot(self, key):
        self.calls.append(key)
        self.saved_before.append(done(json.loads(self.save.read_text())) if self.save.exists() else set())
        if key == self.kill:
            raise KeyboardInterrupt

    def ours(self, model, cache, args, tokens, depths):
        resolved = peer.Cache("tq", "tq", own=True) if cache.k == "auto" else cache
        for d in depths:
            self.snapshot(("kvconvert", cache.spec, d))
            yield resolved, d, peer.Speed(100.0 + d, 1.0), peer.Speed(10.0, 0.5)

    def llama(self, bin_dir, model, cache, args, depth):
        self.snapshot(("llama.cpp", cache.spec, depth))
        return peer.Speed(50.0 + depth, 2.0), peer.Speed(20.0, 0.0), {"build_commit": "0c1e570"}


ALL = {(e, s, d) for e, specs in (("kvconvert", ["f16/f16", "auto/auto"]), ("llama.cpp", ["f16/f16", "q8_0/q8_0+fa"]))
       for s in specs for d in (0, 512)}


def test_each_measurement_is_saved_and_a_kill_loses_only_the_one_under_way(tmp_path, monkeypatch, capsys):
    save = tmp_path / "peer.json"
    args = peer.parse_args(ARGS + ["--save", str(save)])
    fake = Engines(save, kill=("llama.cpp", "q8_0/q8_0+fa", 512))
    monkeypatch.setattr(peer, "run_ours", fake.ours)
    monkeypatch.setattr(peer, "run_llama_bench", fake.llama)
    with pytest.raises(KeyboardInterrupt):
        peer.measure(peer.Results("m.gguf", args, save=args.save), Path("/b"), [])
    assert len(fake.calls) == 8  # one call per (engine, cache, depth): llama-bench too
    for i, before in enumerate(fake.saved_before):  # every earlier measurement was on disk before the next began
        assert before == set(fake.calls[:i])
    doc = json.loads(save.read_text())
    assert doc["complete"] is False and done(doc) == ALL - {fake.kill}
    assert (doc["threads"], doc["reps"], doc["n_prefill"], doc["n_decode"], doc["busy"]) == (2, 1, 64, 4, 0)
    auto = next(r for r in doc["runs"] if r["spec"] == "auto/auto")
    assert auto["cache"]["k"] == "tq" and auto["cache"]["own"] and auto["model"] == "m.gguf"
    assert auto["decode"]["512"] == {"mean": 10.0, "sd": 0.5}
    lines = capsys.readouterr().err.splitlines()
    line = "kvconvert tq/tq (the file's) @ depth 512: prefill 612.00 ± 1.00 tok/s, decode 10.00 ± 0.50 tok/s ("
    assert sum(x.startswith(line) and x.endswith(" s)") for x in lines) == 1
    assert sum(" tok/s, decode " in x for x in lines) == 7


def test_resume_measures_only_what_is_missing(tmp_path, monkeypatch):
    save = tmp_path / "peer.json"
    args = peer.parse_args(ARGS + ["--save", str(save)])
    first = Engines(save, kill=("kvconvert", "auto/auto", 512))  # killed mid-way through a kvconvert cache
    monkeypatch.setattr(peer, "run_ours", first.ours)
    monkeypatch.setattr(peer, "run_llama_bench", first.llama)
    with pytest.raises(KeyboardInterrupt):
        peer.measure(peer.Results("m.gguf", args, save=args.save), Path("/b"), [])
    assert done(json.loads(save.read_text())) == {("kvconvert", "f16/f16", 0), ("kvconvert", "f16/f16", 512),
                                                  ("kvconvert", "auto/auto", 0)}

    args = peer.parse_args(ARGS + ["--resume", str(save)])
    assert args.save == str(save)  # --save defaults to the --resume file
    results = peer.Results("m.gguf", args, save=args.save)
    assert results.resume(save) == 3
    assert results.todo("kvconvert", peer.Cache("auto", "auto"), [0, 512]) == [512]
    second = Engines(save)
    monkeypatch.setattr(peer, "run_ours", second.ours)
    monkeypatch.setattr(peer, "run_llama_bench", second.llama)
    peer.measure(results, Path("/b"), [])
    assert second.calls == [("kvconvert", "auto/auto", 512)] + sorted(k for k in ALL if k[0] == "llama.cpp")
    doc = json.loads(save.read_text())
    assert done(doc) == ALL and doc["complete"] is False  # main sets complete once perplexity is done too
    assert len(doc["runs"]) == 4  # merged into the runs they belong to, none doubled
    results.complete = True
    results.write()
    assert json.loads(save.read_text())["complete"] is True
    ours = [r for r in results.runs if r.engine == "kvconvert"]
    rows = peer.speed_table(ours, [r for r in results.runs if r.engine == "llama.cpp"], args).splitlines()[2:]
    want = "| decode 4 @ depth 512 | tq/tq (the file's) | 10.00 ± 0.50 | q8_0/q8_0 FA | 20.00 ± 0.00 | 0.50× |"
    assert want in rows

    third = Engines(save)  # all there: nothing runs again
    monkeypatch.setattr(peer, "run_ours", third.ours)
    monkeypatch.setattr(peer, "run_llama_bench", third.llama)
    again = peer.Results("m.gguf", args, save=args.save)
    assert again.resume(save) == 8
    peer.measure(again, Path("/b"), [])
    assert third.calls == []


def saved(tmp_path, model, **over) -> Path:
    args = peer.parse_args(ARGS + ["--ppl-chunks", "2"])
    r = peer.Results(str(model), args, save=str(tmp_path / "peer.json"))
    r.record("llama.cpp", args.llama[0], args.llama[0], str(model), 0, peer.Speed(1.0, 0.0), peer.Speed(2.0, 0.0))
    r.llama_ppl_chunks = 2
    r.record_ppl("kvconvert", 17.9, 2.0)
    doc = {**r.document(), **over}
    Path(r.save).write_text(json.dumps(doc))
    return Path(r.save)


@pytest.mark.parametrize("change, word", [(["-t", "3"], "threads"), (["-r", "2"], "reps"),
                                          (["--prefill", "128"], "n_prefill"), (["--decode", "8"], "n_decode"),
                                          (["--busy", "1"], "busy")])
def test_resume_mismatch(tmp_path, change, word):
    m = tmp_path / "m.gguf"
    save = saved(tmp_path, m)
    same = peer.Results(str(m), peer.parse_args(ARGS + ["--ppl-chunks", "2"]))
    assert same.resume(save) == 1 and same.perplexity == {"kvconvert": [17.9, 2.0]}  # same setup: kept
    with pytest.raises(peer.ResumeError, match=word):
        peer.Results(str(m), peer.parse_args(ARGS + change)).resume(save)
    with pytest.raises(peer.ResumeError, match="model"):
        peer.Results(str(tmp_path / "other.gguf"), peer.parse_args(ARGS)).resume(save)


def test_resume_keeps_perplexity_only_of_the_same_setup(tmp_path):
    save = saved(tmp_path, tmp_path / "m.gguf")
    for change in (["--ppl-chunks", "4"], ["--ppl-ctx", "256", "--ppl-chunks", "2"],
                   ["--ppl-cache", "q8_0/q8_0", "--ppl-chunks", "2"]):
        r = peer.Results(str(tmp_path / "m.gguf"), peer.parse_args(ARGS + change))
        assert r.resume(save) == 1 and r.perplexity == {}


def test_resume_mismatch_is_one_line_and_exit_2(tmp_path, capsys):
    """main stops on a mismatched --resume before building or running anything (--bin does not exist)."""
    m = tmp_path / "m.gguf"
    save = saved(tmp_path, m)
    with pytest.raises(SystemExit) as e:
        peer.main(ARGS + ["--model", str(m), "--resume", str(save), "-t", "3", "--bin", str(tmp_path / "no-bin")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "threads 2, this run 3" in err and str(save) in err
    for bad in ("not json", json.dumps({"model": str(m)})):  # unreadable, or not a peer.py save
        save.write_text(bad)
        with pytest.raises(peer.ResumeError):
            peer.Results(str(m), peer.parse_args(ARGS)).resume(save)
    with pytest.raises(SystemExit) as e:
        peer.parse_args(ARGS + ["--resume", str(tmp_path / "missing.json")])
    assert e.value.code == 2
