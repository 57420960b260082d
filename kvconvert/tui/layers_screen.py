"""Step 3: inspect layers — a heat map of what calibration found per layer
(outlier concentration, K-mean share) next to the configs the search chose,
with the numbers of the highlighted layer spelled out below."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.color import Color
from textual.markup import escape
from textual.widgets import DataTable, Label, Static

from ..kvcache import kbasis
from ..kvcache.types import STANDARD_BITS, TQ
from ..kvcache.turboquant import KConfig

from .base import StepScreen

LOW, HIGH = Color.parse("#1d4e89"), Color.parse("#c0392b")  # heat scale ends: 0 → blue, 1 → red
BAR_WIDTH = 10
EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(x: float, width: int = BAR_WIDTH) -> str:
    """x in [0, 1] as a bar of ``width`` cells with eighth-cell resolution."""
    n = round(max(0.0, min(1.0, x)) * width * 8)
    full, part = divmod(n, 8)
    return ("█" * full + (EIGHTHS[part] if part else "")).ljust(width)


def heat_cell(x: float) -> Text:
    """A value in [0, 1]: its number and a bar, coloured on the blue→red scale."""
    c = LOW.blend(HIGH, max(0.0, min(1.0, x)))
    return Text.assemble(f"{x:5.2f} ", (bar(x), c.hex))


def layer_spec(prof, kind: str, layer: int) -> str | None:
    """The cache config of one layer ("tq4", "tq:split=…", or a standard type) or None."""
    if prof is None:
        return None
    typ = getattr(prof, f"{kind}_type")
    return getattr(prof, f"{kind}_layers")[layer] if typ == TQ else typ


def config_cell(spec: str | None, d: int) -> Text:
    if not spec:
        return Text("—", style="dim")
    try:
        cfg = None if spec in STANDARD_BITS else KConfig.parse(spec, d)
        bits = STANDARD_BITS[spec] if cfg is None else cfg.bits_per_value()
    except (ValueError, KeyError):
        return Text(spec)
    c = HIGH.blend(LOW, max(0.0, min(1.0, (bits - 2) / 6)))  # fewer bits → warmer
    return Text(f"{spec if cfg is None else cfg.label()} ({bits:.2f})", style=c.hex)


class LayersScreen(StepScreen):
    STEP = "layers"

    def body(self) -> ComposeResult:
        yield Label("Per layer: how concentrated K and V energy is (outliers; redder = harder to quantize), how "
                    "much of K is a constant mean (removed exactly by centering), and the configs the search chose "
                    "(warmer = fewer bits). Arrows select a layer.", classes="lead")
        yield DataTable(id="layers", cursor_type="row", zebra_stripes=True)
        yield Static("", id="layer-detail", classes="info")

    def on_mount(self) -> None:
        t = self.query_one("#layers", DataTable)
        t.add_column("layer", key="layer")
        t.add_column("K outlier", key="k_outlier")
        t.add_column("K mean share", key="k_mean")
        t.add_column("V outlier", key="v_outlier")
        t.add_column("K cache (bits)", key="k_cfg")
        t.add_column("V cache (bits)", key="v_cfg")

    def refresh_view(self) -> None:
        t = self.query_one("#layers", DataTable)
        t.clear()
        cal, prof = self.session.calibration, self.session.profile
        detail = self.query_one("#layer-detail", Static)
        if cal is None:
            detail.update("No calibration yet: run step 2 (Ctrl+B).")
            return
        self.stats = cal.layer_summary()
        d = cal.head_dim
        for s in self.stats:
            t.add_row(Text(str(s.layer), justify="right"), heat_cell(s.k_outlier), heat_cell(s.k_mean_share),
                      heat_cell(s.v_outlier), config_cell(layer_spec(prof, "k", s.layer), d),
                      config_cell(layer_spec(prof, "v", s.layer), d), key=str(s.layer))
        self.show_layer(0)
        if prof is None:
            self.say("Configs appear once a profile is chosen (step 4).", "info")
        else:
            self.say("")

    @on(DataTable.RowHighlighted, "#layers")
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_layer(event.cursor_row)

    def show_layer(self, i: int) -> None:
        stats = getattr(self, "stats", [])
        if not 0 <= i < len(stats):
            return
        s, prof = stats[i], self.session.profile
        lines = [f"[b]Layer {s.layer}[/b]",
                 f"K outlier concentration {s.k_outlier:.3f}: share of centered K energy in the top quarter "
                 "of channels (1/4 = evenly spread)",
                 f"K mean share {s.k_mean_share:.3f}: share of K energy in its per-channel mean (removed "
                 "exactly by centering)",
                 f"V outlier concentration {s.v_outlier:.3f}"]
        if prof is not None:
            k, v = layer_spec(prof, "k", i), layer_spec(prof, "v", i)
            s8 = " — s8=N: each group's scale in one byte on the log grid 2^((e + N)/32)" \
                if "s8=" in f"{k} {v}" else ""
            proj = " — scale=proj: group scales that keep inner products unshrunk" \
                if "scale=proj" in f"{k} {v}" else ""
            tc = " — tc: bitshift-trellis codes (each value read from its code and the codes before it)" \
                if "code=trellis" in f"{k} {v}" else ""
            follows = f", following RoPE every {prof.transforms.k_basis_block} positions" \
                if prof.transforms.k_basis_block else ""
            kb = " — K in the calibrated basis (keys weighted by the queries; the hi group gets its leading " \
                f"directions{follows})" if kbasis.used(prof.transforms.k_basis, prof.model.n_layer)[s.layer] else ""
            lines.append(f"Chosen: K {k}, V {v} (profile {escape(prof.name)}){s8}{proj}{tc}{kb}")
        self.query_one("#layer-detail", Static).update("\n".join(lines))
