"""Step 1: pick a model — a Hugging Face directory, a GGUF file, or a repo id
from the local Hub cache — from a text field, the recent list or the cache."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.markup import escape
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from ..models.source import load_model

from .base import JobPanel, StepScreen
from .state import hub_cache_models, load_recent, remember, short_path


def describe_source(src) -> str:
    a = src.args
    kv = f"{a.num_key_value_heads} KV heads" + (" (GQA)" if a.num_key_value_heads < a.num_attention_heads else "")
    kind = "GGUF file" if src.format == "gguf" else "Hugging Face directory"
    return (f"[b]{escape(src.arch.name)}[/b] from a {kind}: "
            f"{a.num_hidden_layers} layers, hidden {a.hidden_size}, {a.num_attention_heads} heads, {kv}, "
            f"head_dim {a.head_dim}, vocab {a.vocab_size}\n{escape(short_path(src.path))}")


class ModelScreen(StepScreen):
    STEP = "model"

    def body(self) -> ComposeResult:
        yield Label("Which model? A Hugging Face directory, a GGUF file, or a repo id in your local Hub cache.",
                    classes="lead")
        with Horizontal(classes="row"):
            yield Input(placeholder="path/to/model  or  org/name", id="model-input")
            yield Button("Load", id="load", variant="primary")
        with Horizontal(id="pickers"):
            with Vertical(classes="picker"):
                yield Label("Recent", classes="heading")
                yield OptionList(id="recent")
            with Vertical(classes="picker"):
                yield Label("Local Hugging Face cache", classes="heading")
                yield OptionList(id="hub")
        yield JobPanel(transient=True)
        yield Static("", id="model-info", classes="info")

    def on_mount(self) -> None:
        self.fill_lists()
        self.query_one("#model-input", Input).focus()

    def fill_lists(self) -> None:
        for list_id, items, empty in (("#recent", load_recent(), "none yet"),
                                      ("#hub", hub_cache_models(), "no models cached")):
            ol = self.query_one(list_id, OptionList)
            ol.clear_options()
            if items:
                ol.add_options([Option(Content(short_path(m) if Path(m).is_absolute() else m), id=m)
                                for m in items])
            else:
                ol.add_option(Option(f"({empty})", disabled=True))

    def refresh_view(self) -> None:
        src = self.session.source
        info = self.query_one("#model-info", Static)
        info.update(describe_source(src) + "\n\nNext: calibrate (Ctrl+N)." if src is not None else "")
        if self.session.model and not self.query_one("#model-input", Input).value:
            self.query_one("#model-input", Input).value = self.session.model

    @on(OptionList.OptionSelected)
    def picked(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.query_one("#model-input", Input).value = event.option.id
            self.load(event.option.id)

    @on(Input.Submitted, "#model-input")
    @on(Button.Pressed, "#load")
    def load_pressed(self) -> None:
        self.load(self.query_one("#model-input", Input).value.strip())

    def load(self, model: str) -> None:
        if not model:
            self.say("type a model path or repo id first, or pick one from the lists", "error")
            return
        model = model.strip()

        def loaded(src) -> None:
            self.session.set_model(model, src)
            # local paths are remembered absolute so the list works from any directory
            remember(str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else model)
            self.fill_lists()
            self.refresh_view()
            self.say(f"Loaded {model}.", "ok")

        self.run_job(f"loading {model}", lambda progress, cancel: load_model(model), loaded)
