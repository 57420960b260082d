"""Step 2: calibrate — run the model on text (its own, by default) and record
the K/Q/V statistics the search needs (kvconvert.conversion.calibrate.calibrate).

Resuming needs nothing from the UI: the library checkpoints after every chunk
and continues from there when run again with the same model and settings.
"""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from ..base.errors import InputError
from ..conversion.pipeline import DEFAULT_TOKENS

from .base import JobPanel, StepScreen
from .state import short_path

DEFAULT_CTX = 512


def read_text_file(path: str) -> str:
    """The user's calibration/evaluation text, or one InputError line."""
    if not path:
        raise InputError("give the path of a UTF-8 text file, or choose the data-free text")
    p = Path(path).expanduser()
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such text file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read it as UTF-8 text ({e.__class__.__name__}); "
                         "give a plain text file") from None


def positive_int(value: str, what: str, minimum: int = 1) -> int:
    try:
        n = int(value.replace("_", "").replace(",", "").strip())
    except ValueError:
        raise InputError(f"{what}: {value!r} is not a whole number") from None
    if n < minimum:
        raise InputError(f"{what} must be at least {minimum} (got {n})")
    return n


def describe_calibration(cal) -> str:
    stats = cal.layer_summary()
    worst = max(stats, key=lambda s: s.k_outlier)
    where = short_path(cal.path) if cal.path else "memory"
    return (f"Calibrated on {cal.n_tokens:,} tokens (text: {cal.text_source}; context {cal.n_ctx}), "
            f"{cal.n_layer} layers × {cal.n_head_kv} KV heads.\n"
            f"Most concentrated K: layer {worst.layer} ({worst.k_outlier:.0%} of its energy in a quarter "
            f"of the channels).\nSaved to {where}\n\nNext: inspect the layers (Ctrl+N).")


class CalibrateScreen(StepScreen):
    STEP = "calibrate"

    def body(self) -> ComposeResult:
        yield Label("Calibration runs the model on some text and records what its K and V caches look like.",
                    classes="lead")
        with RadioSet(id="text-source"):
            yield RadioButton("Text the model writes itself (data-free, works for any model)", value=True,
                              id="text-own")
            yield RadioButton("A text file of my own", id="text-file-choice")
        yield Input(placeholder="path/to/text.txt", id="text-file", disabled=True)
        with Horizontal(classes="row"):
            yield Label("Tokens", classes="field")
            yield Input(str(DEFAULT_TOKENS), id="tokens", type="integer", classes="short")
            yield Label("Context", classes="field")
            yield Input(str(DEFAULT_CTX), id="n-ctx", type="integer", classes="short")
            yield Button("Calibrate", id="start", variant="primary")
        yield Static("Stopped or interrupted? Start it again with the same settings: it resumes where it stopped.",
                     classes="hint")
        yield JobPanel()
        yield Static("", id="calib-info", classes="info")

    def refresh_view(self) -> None:
        cal = self.session.calibration
        info = self.query_one("#calib-info", Static)
        if self.session.source is None:
            info.update("No model yet: pick one in step 1 (Ctrl+B).")
        elif cal is not None:
            info.update(Content(describe_calibration(cal)))
        elif not self.job_running():
            info.update(Content(f"Model: {self.session.model}. Choose the text and press Calibrate."))

    @on(RadioSet.Changed, "#text-source")
    def source_changed(self, event: RadioSet.Changed) -> None:
        own_file = event.pressed.id == "text-file-choice"
        field = self.query_one("#text-file", Input)
        field.disabled = not own_file
        if own_file:
            field.focus()

    @on(Button.Pressed, "#start")
    @on(Input.Submitted, "#tokens, #n-ctx, #text-file")
    def start(self) -> None:
        src = self.session.source
        if src is None:
            self.say("pick a model first (step 1, Ctrl+B)", "error")
            return
        try:
            tokens = positive_int(self.query_one("#tokens", Input).value, "tokens")
            n_ctx = positive_int(self.query_one("#n-ctx", Input).value, "context", 16)
            use_file = self.query_one("#text-file-choice", RadioButton).value
            path = self.query_one("#text-file", Input).value.strip()
            if use_file and not path:
                raise InputError("give the path of your text file, or choose the data-free text")
        except InputError as e:
            self.say(str(e), "error")
            return

        def call(progress, cancel):
            from ..conversion.calibrate import calibrate

            text = read_text_file(path) if use_file else None
            return calibrate(src, text=text, tokens=tokens, n_ctx=n_ctx, progress=progress, cancel=cancel)

        def done(cal) -> None:
            if self.session.source is not src:
                self.say("the model changed while calibrating; calibrate again", "info")
                return
            self.session.set_calibration(cal)
            self.refresh_view()
            self.say("Calibration done.", "ok")

        self.query_one("#calib-info", Static).update("")
        self.run_job("calibrating", call, done)
