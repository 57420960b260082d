"""Progress reporting and cancellation for long-running library functions.

Library functions take ``progress(done, total, what)`` and a ``cancel`` event.
A long job runs in *phases* (calibrate: tokens; search: layers; check: chunks;
write: MiB); a function announces each one with ``start_phase(progress, name,
unit)`` before reporting in that phase's unit. Any plain 3-argument callable is
a valid ``progress``; a reporter that also has a ``start_phase(name, unit)``
method (the CLI's ``PhaseReporter``, the TUI's job panel) learns the phases and
shows one bar with its own unit and ETA per phase.

On a terminal the CLI draws tqdm bars; otherwise (a log, nohup, CI) it prints
plain lines: one when a phase starts, about one per 10% with an ETA, and one
with the phase's time when it ends.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

from .errors import KVConvertError

ProgressFn = Callable[[float, float, str], None]


class Cancelled(KVConvertError):
    """The user cancelled; outputs were not written."""

    exit_code = 130


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled; nothing was written")


def start_phase(progress: ProgressFn | None, name: str, unit: str) -> None:
    """Tell ``progress`` (if it tracks phases) that a new phase counted in ``unit`` begins."""
    hook = getattr(progress, "start_phase", None)
    if hook is not None:
        hook(name, unit)


def _clock(seconds: float) -> str:
    s = int(round(max(seconds, 0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _amount(x: float) -> str:
    return f"{x:.1f}" if x != int(x) else str(int(x))


class PhaseReporter:
    """A ProgressFn that shows each phase separately: a tqdm bar on a terminal,
    plain lines (start, ~every 10%, end with its time) elsewhere.

    ``phases`` keeps (name, unit, seconds, done) of every finished phase, so a
    summary can print where the time went."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, unit: str = "step",
                 name: str = "working"):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.default = (name, unit)
        self.phases: list[tuple[str, str, float, float]] = []
        self._name: str | None = None
        self._unit = unit
        self._t0 = 0.0
        self._done = 0.0
        self._total = 0.0
        self._next_tenth = 1
        self._bar = None

    # -- phases ---------------------------------------------------------
    def start_phase(self, name: str, unit: str) -> None:
        self._finish()
        self._name, self._unit, self._t0 = name, unit, time.monotonic()
        self._done = self._total = 0.0
        self._next_tenth = 1
        if not self.tty:
            self._line(f"[{name}] started")

    def _finish(self, stopped: bool = False) -> None:
        if self._name is None:
            return
        secs = time.monotonic() - self._t0
        self.phases.append((self._name, self._unit, secs, self._done))
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if stopped:  # an error or an interrupt ended the phase: do not call it done
            self._line(f"[{self._name}] stopped after {_amount(self._done)} {self._unit} in {_clock(secs)}")
        elif self.tty:
            self._line(f"[{self._name}] {_amount(self._done)} {self._unit} in {_clock(secs)}")
        else:
            self._line(f"[{self._name}] done: {_amount(self._done)} {self._unit} in {_clock(secs)}")
        self._name = None

    def close(self, stopped: bool = False) -> None:
        self._finish(stopped)

    # -- updates --------------------------------------------------------
    def __call__(self, done: float, total: float, what: str) -> None:
        if self._name is None:
            self.start_phase(*self.default)
        self._done, self._total = float(done), float(total)
        if self.tty:
            self._draw(what)
        elif total > 0:
            frac = done / total
            if frac * 10 >= self._next_tenth:
                self._next_tenth = int(frac * 10) + 1
                secs = time.monotonic() - self._t0
                eta = secs * (total - done) / done if done > 0 else 0.0
                self._line(f"[{self._name}] {frac:4.0%} {_amount(done)}/{_amount(total)} {self._unit}, "
                           f"{_clock(secs)} elapsed, ETA {_clock(eta)}" + (f" — {what}" if what else ""))

    def _draw(self, what: str) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=self._total, unit=self._unit, dynamic_ncols=True, leave=False,
                             file=self.stream, desc=self._name)
        b = self._bar
        b.total = self._total
        b.set_postfix_str(what[:48], refresh=False)
        b.update(self._done - b.n)

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


@contextmanager
def tqdm_progress(unit: str = "step", name: str = "working") -> Iterator[ProgressFn]:
    """A PhaseReporter for a CLI command, on stderr (``name``/``unit`` until a phase is announced)."""
    rep = PhaseReporter(unit=unit, name=name)
    try:
        yield rep
    except BaseException:
        rep.close(stopped=True)
        raise
    rep.close()
