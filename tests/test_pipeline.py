"""The whole job of `convert` with a policy (pipeline.py) on a tiny model: the
check measures the written file, a check above the policy's threshold re-runs
the allocation with more bits, the profile lands next to the output, progress
comes in phases, and every input is validated before the long stages."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from kvconvert.conversion import pipeline
from kvconvert.base.errors import InputError, OutputError
from kvconvert.conversion.profile import load_profile
from kvconvert.base.progress import PhaseReporter
from kvconvert.runtime.engine import Model
from tests.tiny import CORPUS

TEXT = " ".join(CORPUS) * 30
TINY = "qwen2-hd64"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KVCONVERT_CACHE", str(tmp_path / "cache"))


def run(tiny_models, out, max_kld, **kw):
    pol = replace(load_profile("balanced"), k_budget=3.5, v_budget=3.5, k_bits=(2, 3, 4, 5), v_bits=(2, 3, 4, 5),
                  max_kld=max_kld)
    return pipeline.convert(tiny_models[TINY], out, weights="f32", profile=pol, text=TEXT, tokens=256, n_ctx=64,
                            **kw)


def test_failed_check_retries_with_more_bits_then_says_so(tiny_models, tmp_path):
    job = run(tiny_models, tmp_path / "o.gguf", max_kld=1e-12)  # no cache can pass this
    assert [a.k_budget for a in job.attempts] == [3.5, 4.0, 4.5]
    assert [a.v_budget for a in job.attempts] == [3.5, 4.0, 4.5]
    assert all(a.check is not None and not a.check.passed for a in job.attempts)
    assert job.attempts[-1].k_bpv > job.attempts[0].k_bpv
    assert job.verdict.startswith("FAIL") and "after 2 retries" in job.verdict
    saved = load_profile(tmp_path / "o.profile.json")
    assert saved.measured["passed"] is False and saved.measured["kld"] == pytest.approx(job.check.kld)
    assert Model(tmp_path / "o.gguf").cache_meta.k_configs == saved.k_configs()  # the file written is the last try

    # a threshold between the first and the second attempt's KLD: one retry, then PASS
    k1, k2 = job.attempts[0].check.kld, job.attempts[1].check.kld
    assert k2 < k1
    again = run(tiny_models, tmp_path / "p.gguf", max_kld=(k1 + k2) / 2)
    assert len(again.attempts) == 2 and again.check.passed and again.verdict.startswith("PASS after 1 retry")


def test_check_measures_the_written_file_and_reports_phases(tiny_models, tmp_path):
    log = io.StringIO()
    rep = PhaseReporter(stream=log, tty=False)
    job = run(tiny_models, tmp_path / "o.gguf", max_kld=10.0, progress=rep)
    rep.close()
    assert len(job.attempts) == 1 and job.check.passed and job.verdict.startswith("PASS")
    assert job.check.chunks == 2 and job.check.weights == "f32"  # the two held-out chunks
    # the check's numbers are those of the written file: evaluating it again gives the same PPL
    from kvconvert.conversion.check import check_file
    from kvconvert.conversion.calibrate import calibrate
    cal = calibrate(tiny_models[TINY], text=TEXT, tokens=256, n_ctx=64)
    again = check_file(tmp_path / "o.gguf", token_ids=[t for r in cal.holdout for t in r], n_ctx=64)
    assert again.ppl == pytest.approx(job.check.ppl, rel=1e-6) and again.kld == pytest.approx(job.check.kld, rel=1e-6)
    names = [p[0] for p in rep.phases]
    assert names == ["calibrate", "search", "write", "check"]  # the f32 checkpoint is run in place: no copy
    units = {p[0]: p[1] for p in rep.phases}
    assert units == {"calibrate": "tok", "search": "layer", "write": "MiB", "check": "chunk"}
    text = log.getvalue()
    assert "[search] started" in text and "[check] done: 4 chunk" in text and "ETA" in text
    assert set(job.timings) == {"calibrate", "search", "write", "check"}


def test_refuses_before_long_work(tiny_models, tmp_path):
    with pytest.raises(InputError, match="calibration text has"):  # too short: refused before calibrating
        pipeline.convert(tiny_models[TINY], tmp_path / "o.gguf", profile="balanced", text="too short", n_ctx=64)
    with pytest.raises(OutputError, match="does not exist"):
        pipeline.convert(tiny_models[TINY], tmp_path / "no" / "o.gguf", profile="balanced", text=TEXT, n_ctx=64)
    assert not (tmp_path / "cache").exists()  # nothing was calibrated or cached
