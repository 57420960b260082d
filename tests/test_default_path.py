"""The README's used-by flow on a real model, as a user types it (issue 13): the
default `kvconvert convert HFDIR -o OUT.gguf` (policy balanced, data-free
calibration, the check on) of SmolLM2-135M-Instruct imported to a Hugging Face
directory, output redirected to a log file; then `kvconvert eval` and
`kvconvert run` on the result. A fresh kvconvert cache, so every stage runs
(~1.5 min on 2 cores)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from kvconvert.testdata import fixtures
from kvconvert import import_gguf
from kvconvert.conversion.profile import load_profile
from kvconvert.runtime.engine import Model

PHASES = ("generate text", "calibrate", "search", "write", "check")  # the f16 checkpoint is run in place: no copy


def kvconvert(args: list[str], cwd, env, log) -> int:
    exe = shutil.which("kvconvert")
    assert exe, "the kvconvert command is not installed (pip install -e .)"
    with open(log, "w") as f:
        return subprocess.run([exe, *args], cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=900).returncode


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's directory holding the imported model, and a fresh kvconvert cache."""
    root = tmp_path_factory.mktemp("user")
    import_gguf(fixtures.smollm2_gguf(), root / "SmolLM2-135M-Instruct", dtype="f16")
    env = dict(os.environ, KVCONVERT_CACHE=str(root / "cache"), COLUMNS="100")
    return root, env


@pytest.fixture(scope="module")
def converted(user):
    root, env = user
    rc = kvconvert(["convert", "SmolLM2-135M-Instruct", "-o", "smollm2.gguf"], root, env, root / "convert.log")
    return root, env, rc, (root / "convert.log").read_text()


def test_default_convert_works_and_says_what_it_did(converted):
    root, _, rc, log = converted
    assert rc == 0, log[-3000:]
    assert "\x1b[" not in log  # no terminal control codes in a log file
    for phase in PHASES:  # every phase reports in a log: start, progress with an ETA, its time
        assert f"[{phase}] started" in log and f"[{phase}] done:" in log, phase
    assert "tok, " in log and "layer, " in log and "MiB, " in log and "ETA" in log
    assert "verdict: PASS" in log and "KV cache at a 32k context" in log
    prof = load_profile(root / "smollm2.profile.json")  # next to the output: push and reruns use it
    m = prof.measured
    assert m["passed"] is True and 0 < m["kld"] <= m["max_kld"] and m["chunks"] == 2
    assert m["text"].startswith("held-out part of the model's own text")
    kb, vb = prof.budget_bits()
    pol = load_profile("balanced")  # the default policy's per-side budgets, 4.5 on average
    assert kb <= pol.k_budget + 1e-9 and vb <= pol.v_budget + 1e-9 and (kb + vb) / 2 <= 4.5 + 1e-9
    meta = Model(root / "smollm2.gguf").cache_meta  # the file carries the profile's caches
    assert meta.k_type == "tq" and [c.spec() for c in meta.k_configs] == prof.k_layers
    assert meta.n_recent == prof.recent == 32 and "recent window: the last 32 positions" in log  # balanced's window
    assert not list(root.glob(".*.part")) and not list(root.glob("*.part"))


def test_eval_and_run_on_the_result(converted):
    root, env, rc, _ = converted
    assert rc == 0
    assert kvconvert(["eval", "smollm2.gguf", "--austen", "eval", "--chunks", "2", "--json"], root, env,
                     root / "eval.log") == 0
    log = (root / "eval.log").read_text()
    r = json.loads(log[log.index("{"):])
    assert r["type_k"] == "auto" or r["type_k"].startswith("tq")
    assert r["n_recent"] == 32  # the file's window is used
    assert 10 < r["ppl"] < 30  # SmolLM2 on Austen: ~18 with an f16 cache (README)
    assert kvconvert(["run", "smollm2.gguf", "-p", "The capital of France is", "-n", "8"], root, env,
                     root / "run.log") == 0
    assert "The capital of France is" in (root / "run.log").read_text()
