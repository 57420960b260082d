"""Progress reporting and cancellation for long-running library functions.

Library functions take ``progress(done, total, what)`` and a ``cancel`` event;
the CLI turns the callback into a tqdm bar with ETA, the TUI into a widget.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from .errors import KVConvertError

ProgressFn = Callable[[float, float, str], None]


class Cancelled(KVConvertError):
    """The user cancelled; outputs were not written."""

    exit_code = 130


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled; nothing was written")


@contextmanager
def tqdm_progress(unit: str = "B", enabled: bool | None = None) -> Iterator[ProgressFn]:
    """A ProgressFn drawing one tqdm bar (to stderr, only on a terminal unless enabled=True)."""
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    bar: list[tqdm] = []

    def update(done: float, total: float, what: str) -> None:
        if not enabled:
            return
        if not bar:
            bar.append(tqdm(total=total, unit=unit, unit_scale=True, dynamic_ncols=True, leave=False))
        b = bar[0]
        b.total = total
        b.set_description(what[:40], refresh=False)
        b.update(done - b.n)

    try:
        yield update
    finally:
        if bar:
            bar[0].close()
