"""kvconvert's Textual app: a wizard from a model to a shared, rotation-ready
GGUF. Each step is a screen (a Textual mode, so it keeps its state when you
move on and come back); steps only call library functions (see base.py for
how long calls run in thread workers).

``KVConvertApp(model=..., session=..., start=...)``: ``model`` is loaded on
start; ``session`` and ``start`` let tests and scripts open any step with
results already in place.
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Markdown

from .base import STEPS, StepScreen
from .calibrate_screen import CalibrateScreen
from .convert_screen import ConvertScreen
from .evaluate_screen import RUNS, EvaluateScreen
from .layers_screen import LayersScreen
from .model_screen import ModelScreen
from .profile_screen import ProfileScreen
from .share_screen import ShareScreen
from .state import Session

SCREENS: dict[str, type[StepScreen]] = {
    "model": ModelScreen, "calibrate": CalibrateScreen, "layers": LayersScreen, "profile": ProfileScreen,
    "convert": ConvertScreen, "evaluate": EvaluateScreen, "share": ShareScreen,
}
assert list(SCREENS) == [s for s, _ in STEPS]

HELP = """\
# kvconvert — help

Seven steps take a model to a shared GGUF with a compressed KV cache. Move
freely between them: **Ctrl+N** next, **Ctrl+B** back, or click a step above.

1. **Model**: a Hugging Face directory, a GGUF file, or a repo id from your local Hub cache.
2. **Calibrate**: the model runs on text (its own by default) and its K/V statistics are
   recorded. Stopped? Start again with the same settings and it resumes.
3. **Layers**: per-layer outlier concentration and K-mean share, and the chosen configs.
4. **Profile**: search candidates, shipped policies and baselines with bits, memory,
   quality and estimated speed; set a budget or pick a policy to search again.
5. **Convert**: write the GGUF; *portable* runs in llama.cpp too, *folded* only in kvconvert.
6. **Evaluate**: f16 vs q8_0 vs your profile: perplexity, KL divergence, top-1 agreement.
7. **Share**: upload to the Hugging Face Hub with a generated model card.
   **Chat with it** (Ctrl+T) talks to the converted file on its own compressed KV cache.

Keys: **Tab**/**Shift+Tab** move between fields, **Enter** activates, **Esc** cancels the
running job (nothing half-written is left behind), **s**/**r** sort the profile table
(or click a header), **F1** or **?** this help, **Ctrl+Q** quits.

Long jobs run in the background, so you can look at other steps meanwhile. Errors
appear in the line above the key bar, saying what to do next.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,question_mark,q", "dismiss", "Close help")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Markdown(HELP)
        yield Footer()


class KVConvertApp(App[None]):
    CSS_PATH = "tui.tcss"
    TITLE = "kvconvert"
    ENABLE_COMMAND_PALETTE = False
    MODES = dict(SCREENS)
    BINDINGS = [
        Binding("ctrl+n", "next", "Next", priority=True),
        Binding("ctrl+b", "back", "Back", priority=True),
        Binding("f1", "help", "Help", priority=True),
        Binding("question_mark", "help", "Help", show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, model: str | None = None, *, session: Session | None = None, start: str = "model"):
        super().__init__()
        if start not in SCREENS:
            raise ValueError(f"unknown step {start!r}; steps: {', '.join(SCREENS)}")
        self.session = session or Session()
        self.step_screens: set[StepScreen] = set()  # screens shown so far (registered by StepScreen)
        self.start_model, self.start_step = model, start

    def on_mount(self) -> None:
        self.switch_mode(self.start_step)
        if self.start_model:
            self.call_after_refresh(self._load_start_model)

    def _load_start_model(self) -> None:
        screen = self.screen
        if isinstance(screen, ModelScreen):
            screen.query_one("#model-input").value = self.start_model  # type: ignore[attr-defined]
            screen.load(self.start_model)

    def done_steps(self) -> set[str]:
        s, done = self.session, set()
        for step, have in (("model", s.source), ("calibrate", s.calibration), ("profile", s.search),
                           ("convert", s.converted)):
            if have is not None:
                done.add(step)
        if s.calibration is not None:
            done.add("layers")
        if s.evals and len(s.evals) == len(RUNS):
            done.add("evaluate")
        return done

    def action_goto(self, step: str) -> None:
        if step in SCREENS and step != self.current_mode:
            self.switch_mode(step)

    def _move(self, delta: int) -> None:
        order = list(SCREENS)
        i = order.index(self.current_mode) if self.current_mode in order else 0
        self.action_goto(order[max(0, min(len(order) - 1, i + delta))])

    def action_next(self) -> None:
        if isinstance(self.screen, StepScreen):
            self._move(1)

    def action_back(self) -> None:
        if isinstance(self.screen, StepScreen):
            self._move(-1)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        # Stop running jobs first: each library call sees its cancel flag and
        # leaves no partial output; the worker threads then end on their own.
        for screen in self.step_screens:
            screen.cancel_jobs()
        self.exit()

