"""The pieces every wizard step shares: the step bar, the progress panel of a
long job, and ``StepScreen``, which runs library calls in thread workers.

Contract of a job (``StepScreen.run_job``): the library function runs in a
Textual thread worker with a ``progress(done, total, what)`` callback and a
``cancel`` threading.Event; progress reaches the UI through
``App.call_from_thread`` (throttled); the result, a cancellation or an error
comes back to the UI thread as exactly one call. Errors become one line in
the screen's message bar, never a traceback; cancelling sets the event and
the library, which writes atomically, leaves nothing half-written.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Button, Footer, Label, ProgressBar, Static

from ..base.progress import Cancelled, ProgressFn

from .state import Session, error_message

# (step id, title) in wizard order; app.py maps ids to screens.
STEPS: list[tuple[str, str]] = [
    ("model", "Model"),
    ("calibrate", "Calibrate"),
    ("layers", "Layers"),
    ("profile", "Profile"),
    ("convert", "Convert"),
    ("evaluate", "Evaluate"),
    ("share", "Share"),
]
PROGRESS_INTERVAL = 0.1  # seconds between progress updates sent to the UI


class StepBar(Static):
    """The steps as clickable links, the current one highlighted, done ones ticked."""

    def __init__(self, current: str) -> None:
        super().__init__(id="steps")
        self.current = current

    def refresh_steps(self, done: set[str]) -> None:
        parts = []
        for i, (step, title) in enumerate(STEPS, 1):
            mark = "✓" if step in done else f"{i}"
            style = "reverse bold" if step == self.current else ("bold" if step in done else "")
            label = f" {mark} {title} "
            parts.append(f"[@click=app.goto('{step}')]" + (f"[{style}]{label}[/]" if style else label) + "[/]")
        self.update(" › ".join(parts))


class JobPanel(Vertical):
    """A progress bar with ETA, what is being done, and a Cancel button.

    Hidden until the first job starts; after a job it keeps its last state,
    or hides again if ``transient`` (for short jobs such as loading a model).
    """

    def __init__(self, transient: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.cancel_event: threading.Event | None = None
        self.phase: tuple[str, str] | None = None  # (name, unit) of the running job's current phase
        self.running = False
        self.transient = transient

    def compose(self) -> ComposeResult:
        with Horizontal(classes="job-row"):
            yield ProgressBar(total=1, show_eta=True, classes="job-bar")
            yield Button("Cancel", classes="job-cancel", variant="error", disabled=True)
        yield Label("", classes="job-what")

    def on_mount(self) -> None:
        self.display = False

    def begin(self, what: str, cancellable: bool = True) -> threading.Event:
        self.cancel_event = threading.Event()
        self.phase = None
        self.running = True
        self.display = True
        bar = self.query_one(ProgressBar)
        bar.update(total=1, progress=0)
        self.query_one(".job-cancel", Button).disabled = not cancellable
        self.query_one(".job-what", Label).update(Content(what))
        return self.cancel_event

    def reporter(self) -> ProgressFn:
        """A ProgressFn for the worker thread: forwards at most every
        PROGRESS_INTERVAL seconds (always the last step) to the UI thread."""
        last = [0.0]
        app = self.app

        def report(done: float, total: float, what: str) -> None:
            now = time.monotonic()
            if now - last[0] < PROGRESS_INTERVAL and done < total:
                return
            last[0] = now
            try:
                app.call_from_thread(self.show, done, total, what)
            except RuntimeError:  # the app has stopped: let the job notice the cancel flag
                pass

        def start_phase(name: str, unit: str) -> None:  # kvconvert.base.progress's phase protocol
            last[0] = 0.0
            try:
                app.call_from_thread(self.show_phase, name, unit)
            except RuntimeError:
                pass

        report.start_phase = start_phase  # type: ignore[attr-defined]
        return report

    def show_phase(self, name: str, unit: str) -> None:
        """A new phase of the job: the bar restarts, counting ``unit``."""
        self.phase = (name, unit)
        self.query_one(ProgressBar).update(total=1, progress=0)
        if self.cancel_event is None or not self.cancel_event.is_set():
            self.query_one(".job-what", Label).update(Content(f"{name}…"))

    def show(self, done: float, total: float, what: str) -> None:
        self.query_one(ProgressBar).update(total=max(total, 1e-9), progress=done)
        if self.cancel_event is None or not self.cancel_event.is_set():
            if self.phase is not None:  # "search: 12/24 layer — pass 2: outlier splits"
                name, unit = self.phase
                what = f"{name}: {done:g}/{total:g} {unit}" + (f" — {what}" if what else "")
            self.query_one(".job-what", Label).update(Content(what))

    def cancel(self) -> None:
        if self.running and self.cancel_event is not None and not self.query_one(".job-cancel", Button).disabled:
            self.cancel_event.set()
            self.query_one(".job-what", Label).update("cancelling…")
            self.query_one(".job-cancel", Button).disabled = True

    def end(self, what: str, complete: bool) -> None:
        self.running = False
        if self.transient:
            self.display = False
        self.query_one(".job-cancel", Button).disabled = True
        if complete:
            bar = self.query_one(ProgressBar)
            bar.update(progress=bar.total or 1)
        self.query_one(".job-what", Label).update(Content(what))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.has_class("job-cancel"):
            event.stop()
            self.cancel()


class StepScreen(Screen):
    """One wizard step: step bar, a scrolling body, a message line, the footer."""

    STEP = ""
    BINDINGS = [Binding("escape", "cancel_job", "Cancel job")]

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP)
        with VerticalScroll(classes="body", can_focus=False):  # focus goes to the first field instead
            yield from self.body()
        yield Static("", id="message")
        yield Footer()

    def body(self) -> ComposeResult:
        yield from ()

    @property
    def session(self) -> Session:
        return self.app.session  # type: ignore[attr-defined]

    def on_screen_resume(self) -> None:
        self.app.step_screens.add(self)  # type: ignore[attr-defined]
        self.query_one(StepBar).refresh_steps(self.app.done_steps())  # type: ignore[attr-defined]
        self.refresh_view()

    def refresh_view(self) -> None:
        """Show what the session holds now (called each time the step is shown)."""

    def say(self, text: str, kind: str = "info") -> None:
        """One line in the message bar: kind is info, ok or error."""
        msg = self.query_one("#message", Static)
        msg.set_classes(f"-{kind}" if text else "")
        msg.update(Content(text))  # library messages may hold [brackets]: never markup

    # ---- jobs ----

    def job_running(self) -> bool:
        return any(p.running for p in self.query(JobPanel))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_job":
            return self.job_running()
        return True

    def action_cancel_job(self) -> None:
        for panel in self.query(JobPanel):
            panel.cancel()

    def run_job(self, what: str, call: Callable[[ProgressFn, threading.Event], Any],
                done: Callable[[Any], None], cancellable: bool = True) -> bool:
        """Run ``call(progress, cancel)`` in a thread worker; ``done(result)``
        runs on the UI thread if it succeeds. False if a job is already running.
        ``cancellable=False`` for library calls that cannot stop midway."""
        panel = self.query_one(JobPanel)
        if panel.running:
            self.say("wait for the running job to finish, or cancel it (Esc)", "error")
            return False
        cancel = panel.begin(what, cancellable)
        progress = panel.reporter()
        self.say("")
        self.refresh_bindings()

        def finish(result: Any = None, error: BaseException | None = None) -> None:
            if isinstance(error, Cancelled):
                panel.end("cancelled", complete=False)
                self.say("Cancelled; nothing was written. Run it again to resume or restart.", "info")
            elif error is not None:
                panel.end("failed", complete=False)
                self.say(error_message(error), "error")
            else:
                panel.end("done", complete=True)
                try:
                    done(result)
                except Exception as e:  # a bug in a screen must not take the app down
                    self.say(error_message(e), "error")
            self.refresh_bindings()
            self.query_one(StepBar).refresh_steps(self.app.done_steps())  # type: ignore[attr-defined]

        def work() -> None:
            try:
                result = call(progress, cancel)
            except BaseException as e:  # shown in the app as one line, never re-raised
                outcome: dict = {"error": e}
            else:
                outcome = {"result": result}
            try:
                self.app.call_from_thread(finish, **outcome)
            except RuntimeError:  # app already closed
                pass

        self.run_worker(work, name=what, group=f"job-{self.STEP}", thread=True, exit_on_error=False)
        return True

    def cancel_jobs(self) -> None:
        for panel in self.query(JobPanel):
            if panel.cancel_event is not None:
                panel.cancel_event.set()
