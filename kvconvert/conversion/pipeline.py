"""The whole job of `kvconvert convert`: calibrate → search → write → check → profile file.

Given a policy (a bits budget, e.g. ``balanced``) this module runs the stages
in order — each a library function of its own, each reporting its own progress
phase — and owns the decisions between them:

- everything that can be checked cheaply (the output path, the text's length,
  the policy) is checked before the first long stage;
- the file is written to a temporary path next to the output and checked
  there: the check (check.py) measures *the written file* with its own caches
  against an f16 cache on held-out tokens of the calibration text;
- a check above the policy's ``max_kld`` re-runs the bit allocation with more
  bits (the search's measured errors are reused: no new calibration or search)
  and rewrites, up to MAX_RETRIES times; a file that still misses the threshold
  is written, and the result says so;
- the profile (with the check's numbers and the stage times) is saved next to
  the output as ``OUT.profile.json``, where `push`, the TUI and reruns find it.

The GGUF writer (convert.py) knows nothing of calibration; the CLI and the TUI
only call ``convert`` here.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..base.atomic import atomic_path
from .calibrate import calibrate
from .check import CheckResult, check_file, holdout_tokens
from .writer import KEEP, ConvertResult, check_output, default_weights
from .writer import convert as write_gguf
from ..base.errors import InputError
from ..models.source import ModelSource, load_model
from .profile import Policy, Profile, load_profile
from ..base.progress import ProgressFn
from .search import rebudget, search

DEFAULT_TOKENS = 4096  # calibration tokens (statistics and sample windows; the held-out check text comes on top)
MAX_RETRIES = 2  # re-allocations with more bits after a failed check
RETRY_STEP = 0.5  # bits per value added to each compressed budget per retry


@dataclass
class Attempt:
    k_budget: float
    v_budget: float | None
    k_bpv: float
    v_bpv: float
    check: CheckResult | None


@dataclass
class ConvertJob(ConvertResult):
    """A written file (ConvertResult) and, for a policy, how it was chosen and checked."""

    profile: Profile | None = None
    profile_path: Path | None = None
    check: CheckResult | None = None
    attempts: list[Attempt] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # stage → seconds
    verdict: str = ""  # one sentence: did the check pass the policy's threshold


def profile_path_for(output: str | os.PathLike) -> Path:
    """Where a conversion's profile goes: ``OUT.profile.json`` beside ``OUT.gguf``."""
    out = Path(output)
    return out.with_name(out.name.removesuffix(".gguf") + ".profile.json")


def convert(model: str | os.PathLike | ModelSource, output: str | os.PathLike, *, weights: str | None = None,
            profile=None, layout: str = "portable", kv_meta=None, text: str | None = None,
            tokens: int = DEFAULT_TOKENS, n_ctx: int = 512, check: bool = True, save_profile: bool = True,
            n_threads: int = 0,
            progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> ConvertResult:
    """Convert ``model`` (HF dir, GGUF or repo id) to a GGUF at ``output``.

    profile: None (plain conversion), a calibrated Profile or its name/file (applied
    as is), or a Policy or policy name: calibrate on ``text`` (None: the model's own
    text) over ``tokens`` tokens in chunks of ``n_ctx``, search, write, ``check`` the written file, retry with
    more bits if the check misses the policy's threshold, and save the profile next
    to the output. weights: None keeps a GGUF input's tensors byte for byte ("keep") and writes
    f16 for a Hugging Face model (writer.default_weights). Returns a ConvertJob for a policy,
    else the writer's ConvertResult."""
    prof = load_profile(profile) if isinstance(profile, (str, os.PathLike)) else profile
    if not isinstance(prof, Policy):
        return write_gguf(model, output, weights=weights, profile=prof, layout=layout, kv_meta=kv_meta,
                          progress=progress, cancel=cancel)
    src = model if isinstance(model, ModelSource) else load_model(model)
    weights = weights or default_weights(src)
    if weights == KEEP and (src.format != "gguf" or layout != "portable"):  # refused by the writer: refuse now
        write_gguf(src, output, weights=weights, layout=layout, profile=None)
    output = Path(output)
    check_output(src, output)  # all of these before the long stages
    prof_path = profile_path_for(output) if save_profile else None
    if prof_path is not None:
        check_output(src, prof_path)
    if tokens < 1:
        raise InputError(f"calibration needs at least 1 token (got {tokens})")
    times: dict[str, float] = {}
    t0 = time.monotonic()
    cal = calibrate(src, text=text, tokens=tokens, n_ctx=n_ctx, n_threads=n_threads, progress=progress,
                    cancel=cancel)
    times["calibrate"] = time.monotonic() - t0
    if check and len(cal.holdout) == 0:
        raise InputError("the calibration has no held-out tokens to check the file on; "
                         "give a longer --text, or convert with --no-check")
    t0 = time.monotonic()
    sr = search(cal, policy=prof, check=False, n_threads=n_threads, progress=progress, cancel=cancel)
    times["search"] = time.monotonic() - t0
    pol = sr.policy
    attempts: list[Attempt] = []
    times["write"] = times["check"] = 0.0
    with atomic_path(output) as tmp:
        for retry in range(MAX_RETRIES + 1):
            t0 = time.monotonic()
            written = write_gguf(src, tmp, weights=weights, profile=sr.profile, layout=layout, progress=progress,
                                 cancel=cancel)
            times["write"] += time.monotonic() - t0
            kb, vb = sr.profile.budget_bits()
            attempt = Attempt(pol.k_budget, pol.v_budget, kb, vb, None)
            attempts.append(attempt)
            if not check:
                break
            t0 = time.monotonic()
            attempt.check = check_file(tmp, token_ids=holdout_tokens(cal), text_name=_holdout_name(cal),
                                       n_ctx=cal.n_ctx, n_threads=n_threads, max_kld=pol.max_kld, weights=weights,
                                       progress=progress, cancel=cancel)
            times["check"] += time.monotonic() - t0
            if attempt.check.passed is not False or retry == MAX_RETRIES or not _can_add_bits(pol):
                break
            sr = rebudget(sr, cal, *_more_bits(pol))
            pol = sr.policy
    result = ConvertJob(**vars(written), profile=sr.profile, attempts=attempts, timings=times)
    result.output = output
    result.check = attempts[-1].check
    result.verdict = _verdict(attempts, pol)
    if result.check is not None:
        sr.profile.measured.update({k: v for k, v in result.check.to_dict().items() if k != "max_kld"},
                                   max_kld=pol.max_kld)
    sr.profile.measured["timings_s"] = {k: round(v, 1) for k, v in times.items()}
    if prof_path is not None:
        result.profile_path = sr.profile.save(prof_path)
    return result


def _holdout_name(cal) -> str:
    what = "the model's own text" if cal.text_source.startswith("generated") else "the calibration text"
    return f"held-out part of {what}"


def _can_add_bits(pol: Policy) -> bool:
    """More bits can still help: some budget is below the policy's widest config."""
    return pol.k_budget < max(pol.k_bits) + 2 or (pol.v_budget is not None and pol.v_budget < max(pol.v_bits))


def _more_bits(pol: Policy) -> tuple[float, float | None]:
    v = None if pol.v_budget is None else min(pol.v_budget + RETRY_STEP, float(max(pol.v_bits)) + 0.25)
    return min(pol.k_budget + RETRY_STEP, float(max(pol.k_bits)) + 2.25), v


def _verdict(attempts: list[Attempt], pol: Policy) -> str:
    last = attempts[-1]
    if last.check is None:
        return "not checked (--no-check)"
    if pol.max_kld is None:
        return f"checked: KLD {last.check.kld:.4f} (the policy sets no threshold)"
    first = attempts[0]
    if last.check.passed:
        if len(attempts) == 1:
            return f"PASS: KLD {last.check.kld:.4f} ≤ {pol.max_kld:g}, the {pol.name} policy's threshold"
        return (f"PASS after {len(attempts) - 1} retr{'y' if len(attempts) == 2 else 'ies'} with more bits: "
                f"KLD {first.check.kld:.4f} at K {first.k_bpv:.2f}/V {first.v_bpv:.2f} bpv was above "
                f"{pol.max_kld:g}; {last.check.kld:.4f} at K {last.k_bpv:.2f}/V {last.v_bpv:.2f} bpv")
    return (f"FAIL: KLD {last.check.kld:.4f} > {pol.max_kld:g} (the {pol.name} policy's threshold) even at "
            f"K {last.k_bpv:.2f}/V {last.v_bpv:.2f} bpv after {len(attempts) - 1} retries; the file was written — "
            "try --profile max-quality, or calibrate on your own text (--text FILE)")
