"""Step 5: convert — write the rotation-ready GGUF with the chosen profile
(kvconvert.convert), choosing the layout, the weight type and the output path.
The library writes to a temporary file and renames it when complete, so a
cancelled or failed conversion leaves no file behind."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.markup import escape
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Select, Static

from ..conversion.writer import WEIGHT_CHOICES, default_weights

from .base import JobPanel, StepScreen
from .state import short_path

LAYOUTS = {
    "portable": "portable: llama.cpp loads it unchanged; kvconvert applies the cache transforms from metadata",
    "folded": "folded: transforms folded into the weights; only kvconvert's runtime runs it",
}


def default_output(session, weights: str) -> str:
    prof = session.profile
    stem = prof.name if prof is not None else Path(str(session.source.path)).name.removesuffix(".gguf")
    return f"{stem}.{weights}.gguf"


def size_text(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class ConvertScreen(StepScreen):
    STEP = "convert"

    def body(self) -> ComposeResult:
        yield Static("", id="convert-profile", classes="lead")
        yield Label("Layout", classes="heading")
        with RadioSet(id="layout"):
            for i, (name, text) in enumerate(LAYOUTS.items()):
                yield RadioButton(text, value=i == 0, id=f"layout-{name}")
        with Horizontal(classes="row"):
            yield Label("Weights", classes="field")
            yield Select([(w, w) for w in WEIGHT_CHOICES], value="f16", allow_blank=False, id="weights")
            yield Label("Output", classes="field")
            yield Input("", placeholder="out.gguf", id="output")
            yield Button("Convert", id="convert", variant="primary")
        yield JobPanel()
        yield Static("", id="convert-info", classes="info")

    def on_mount(self) -> None:
        self.auto_output = ""  # the output name we filled in (replaced when the profile or weights change)
        self.weights_for = None  # the source whose default weights (keep for a GGUF, else f16) are selected

    def weights(self) -> str:
        return str(self.query_one("#weights", Select).value)

    def chosen_layout(self) -> str:
        return "folded" if self.query_one("#layout-folded", RadioButton).value else "portable"

    def refresh_view(self) -> None:
        s = self.session
        head = self.query_one("#convert-profile", Static)
        if s.source is None:
            head.update("No model yet: pick one in step 1.")
            return
        prof = s.profile
        if prof is None:
            head.update(f"Model {escape(s.model)}, [b]no profile[/b]: the GGUF gets a plain f16 KV cache. "
                        "Choose a profile in step 4 for a compressed one.")
        else:
            kb, vb = prof.budget_bits()
            head.update(f"Model {escape(s.model)} with profile [b]{escape(prof.name)}[/b]: "
                        f"K {kb:.2f}, V {vb:.2f} bits per value.")
        if self.weights_for is not s.source:  # a new model: its default (a GGUF is patched in place)
            self.weights_for = s.source
            self.query_one("#weights", Select).value = default_weights(s.source)
        out = self.query_one("#output", Input)
        if not out.value or out.value == self.auto_output:
            self.auto_output = out.value = default_output(s, self.weights())
        self.show_result()

    def show_result(self) -> None:
        r = self.session.converted
        info = self.query_one("#convert-info", Static)
        if r is None:
            info.update("")
            return
        types = ", ".join(f"{n} {t}" for t, n in sorted(r.types.items()))
        info.update(Content(f"Wrote {short_path(r.output)}: {size_text(r.file_bytes)}, {r.n_tensors} tensors "
                            f"({types}), {r.n_params:,} parameters, {r.weights} weights.\n\n"
                            "Next: evaluate it (Ctrl+N)."))

    @on(Select.Changed, "#weights")
    def weights_changed(self) -> None:
        out = self.query_one("#output", Input)
        if self.session.source is not None and (not out.value or out.value == self.auto_output):
            self.auto_output = out.value = default_output(self.session, self.weights())

    @on(Button.Pressed, "#convert")
    @on(Input.Submitted, "#output")
    def start(self) -> None:
        s = self.session
        if s.source is None:
            self.say("pick a model first (step 1)", "error")
            return
        output = self.query_one("#output", Input).value.strip()
        if not output:
            self.say("give an output path ending in .gguf", "error")
            return
        weights, layout, prof, src = self.weights(), self.chosen_layout(), s.profile, s.source

        def call(progress, cancel):
            from ..conversion.pipeline import convert

            return convert(src, Path(output).expanduser(), weights=weights, profile=prof, layout=layout,
                           progress=progress, cancel=cancel)

        def done(result) -> None:
            if s.source is not src or s.profile is not prof:
                self.say(f"Wrote {short_path(result.output)}, but the model or profile changed meanwhile; "
                         "convert again for the current choice", "info")
                return
            s.converted = result
            s.evals = {}
            self.show_result()
            self.say(f"Converted: {short_path(result.output)}", "ok")

        self.query_one("#convert-info", Static).update("")
        self.run_job(f"converting to {output}", call, done)
