"""Step 6: evaluate — the converted GGUF with an f16 cache, a q8_0 cache and
its own (profile) caches side by side (kvconvert.runtime.evaluate.evaluate): PPL, and
KLD/top-1 against the f16 run (a file with quantized weights with float products, as the convert
check: otherwise the activations' rounding noise would be in every KLD). Runs in the background: the other steps stay
usable while it works, and rows appear as each run finishes."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widgets import Button, DataTable, Input, Label, RadioButton, RadioSet, Static

from ..base.errors import InputError
from ..kvcache.types import STANDARD_BITS

from .base import JobPanel, StepScreen
from .calibrate_screen import positive_int, read_text_file
from .state import fmt, short_path

# (row name, type_k, type_v): "auto" = the caches the file's metadata describes
RUNS = [("f16", "f16", "f16"), ("q8_0", "q8_0", "q8_0"), ("profile", "auto", "auto")]


def save_reports(gguf: Path, results: dict) -> list[Path]:
    """Each run as an eval report beside the GGUF (STEM.eval-ROW.json), where `kvconvert push` finds
    them for the model card."""
    import json
    import re

    from ..base.atomic import atomic_path
    from ..hub.transfer import eval_report

    out = []
    for row, res in results.items():
        path = gguf.with_name(f"{gguf.stem}.eval-{re.sub(r'[^A-Za-z0-9_]+', '-', row).strip('-')}.json")
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(eval_report(res.to_dict(), gguf), indent=2) + "\n", encoding="utf-8")
        out.append(path)
    return out


def austen_available() -> bool:
    try:
        from ..testdata import fixtures

        return fixtures.available("austen")
    except Exception:
        return False


class EvaluateScreen(StepScreen):
    STEP = "evaluate"

    def body(self) -> ComposeResult:
        yield Static("", id="eval-model", classes="lead")
        has_austen = austen_available()
        with RadioSet(id="eval-source"):
            yield RadioButton("Held-out Austen novels" + ("" if has_austen else " (run `kvconvert fetch austen`)"),
                              value=has_austen, disabled=not has_austen, id="eval-austen")
            yield RadioButton("A text file of my own", value=not has_austen, id="eval-file-choice")
        yield Input(placeholder="path/to/text.txt", id="eval-file", disabled=has_austen)
        with Horizontal(classes="row"):
            yield Label("Chunks", classes="field")
            yield Input("4", id="chunks", type="integer", classes="short")
            yield Label("Context", classes="field")
            yield Input("512", id="eval-ctx", type="integer", classes="short")
            yield Button("Evaluate", id="evaluate", variant="primary")
        yield JobPanel()
        yield DataTable(id="evals", cursor_type="row", zebra_stripes=True)
        yield Static("", id="eval-info", classes="info")

    def on_mount(self) -> None:
        t = self.query_one("#evals", DataTable)
        for key, title in (("cache", "KV cache"), ("k", "K bpv"), ("v", "V bpv"), ("bytes", "KV bytes/token"),
                           ("ppl", "PPL"), ("kld", "KLD vs f16"), ("top1", "top-1 vs f16")):
            t.add_column(Text(title, justify="left" if key == "cache" else "right"), key=key)

    def refresh_view(self) -> None:
        r = self.session.converted
        head = self.query_one("#eval-model", Static)
        head.update("Convert a model first (step 5)." if r is None else
                    Content(f"Evaluating {short_path(r.output)}: f16 vs q8_0 vs its own caches, same text."))
        self.show_results()

    def bits(self, name: str) -> tuple[float | None, float | None]:
        if name != "profile":
            b = STANDARD_BITS[name]
            return b, b
        prof = self.session.profile
        return prof.budget_bits() if prof is not None else (16.0, 16.0)

    def show_results(self) -> None:
        t = self.query_one("#evals", DataTable)
        t.clear()
        for name, res in self.session.evals.items():
            k, v = self.bits(name)
            label = name if name != "profile" or self.session.profile is None else self.session.profile.name
            cells = [label, fmt(k, ".2f"), fmt(v, ".2f"), f"{res.kv_bytes_per_token:,}",
                     f"{res.ppl:.3f} ± {res.ppl_err:.3f}", fmt(res.kld, ".4f"), fmt(res.top1, ".1%")]
            t.add_row(*(Text(c, justify="left" if i == 0 else "right") for i, c in enumerate(cells)), key=name)
        if self.session.evals:
            first = next(iter(self.session.evals.values()))
            self.query_one("#eval-info", Static).update(Content(
                f"{first.n_chunks} chunks × {first.n_ctx} tokens of {first.text} ({first.n_scored:,} scored). "
                "KLD and top-1 compare each cache's next-token distributions with the f16 cache's."))
        else:
            self.query_one("#eval-info", Static).update("")

    @on(RadioSet.Changed, "#eval-source")
    def source_changed(self, event: RadioSet.Changed) -> None:
        field = self.query_one("#eval-file", Input)
        field.disabled = event.pressed.id != "eval-file-choice"
        if not field.disabled:
            field.focus()

    @on(Button.Pressed, "#evaluate")
    @on(Input.Submitted, "#eval-file, #chunks, #eval-ctx")
    def start(self) -> None:
        r = self.session.converted
        if r is None:
            self.say("convert a model first (step 5, Ctrl+B)", "error")
            return
        try:
            chunks = positive_int(self.query_one("#chunks", Input).value, "chunks")
            n_ctx = positive_int(self.query_one("#eval-ctx", Input).value, "context", 16)
            use_file = self.query_one("#eval-file-choice", RadioButton).value
            path = self.query_one("#eval-file", Input).value.strip()
            if use_file and not path:
                raise InputError("give the path of a text file to evaluate on")
        except InputError as e:
            self.say(str(e), "error")
            return
        gguf = Path(r.output)
        self.session.evals = {}
        self.show_results()

        def call(progress, cancel):
            from ..runtime.evaluate import evaluate
            from ..runtime.engine import Model

            if use_file:
                text, name = read_text_file(path), Path(path).name
            else:
                from ..testdata import fixtures

                text, name = fixtures.austen_text("eval"), "austen-eval"
            model = Model(gguf)
            results = {}
            with tempfile.TemporaryDirectory(prefix="kvconvert-tui-eval-") as tmp:
                base = Path(tmp) / "f16.logits"
                for i, (row, tk, tv) in enumerate(RUNS):
                    def step(done, total, what, i=i, row=row):
                        progress(i * total + done, len(RUNS) * total, f"{row}: {what}")

                    res = evaluate(model, text, text_name=name, n_ctx=n_ctx, n_chunks=chunks, type_k=tk,
                                   type_v=tv, float_products=model.quantized_weights,
                                   save_logits=base if row == "f16" else None,
                                   kld_base=None if row == "f16" else base, progress=step, cancel=cancel)
                    results[row] = res
                    self.app.call_from_thread(self.add_result, row, res)
            save_reports(gguf, results)
            return results

        def done(results) -> None:
            self.session.evals = dict(results)
            self.show_results()
            fp = any(getattr(r, "float_products", False) for r in results.values())
            self.say("Evaluation done." + (" Quantized weights: every run used float products (unrounded "
                                           "activations), so each KLD is its cache's own." if fp else ""), "ok")

        self.run_job("evaluating", call, done)

    def add_result(self, row: str, res) -> None:
        self.session.evals[row] = res
        self.show_results()
