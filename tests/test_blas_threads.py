"""BLAS on one thread beside kvconvert's own threads (kvconvert/base/blas.py)."""

from __future__ import annotations

import numpy as np  # noqa: F401  (loads BLAS)
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from kvconvert import cli
from kvconvert.base import blas


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads(monkeypatch):
    for v in blas.USER_VARS:
        monkeypatch.delenv(v, raising=False)
    if not _blas_threads():
        pytest.skip("numpy without a BLAS threadpoolctl can see")
    with threadpool_limits(limits=2, user_api="blas"):
        if set(_blas_threads()) != {2}:
            pytest.skip("BLAS built single-threaded")
        yield


def test_one_blas_thread_inside_and_restored_after(two_blas_threads):
    with blas.one_blas_thread():
        assert set(_blas_threads()) == {1}
    assert set(_blas_threads()) == {2}


def test_a_users_thread_count_is_left_alone(two_blas_threads, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    with blas.one_blas_thread():
        assert set(_blas_threads()) == {2}


def test_every_cli_command_runs_with_one_blas_thread(two_blas_threads, monkeypatch, tmp_path):
    from kvconvert.commands import info

    seen = []
    monkeypatch.setattr(info, "run", lambda args: seen.append(_blas_threads()) or 0)
    assert cli.main(["info", str(tmp_path / "model.gguf")]) == 0
    assert seen == [[1] * len(seen[0])] and seen[0]
    assert set(_blas_threads()) == {2}
