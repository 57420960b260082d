"""Step 4: choose a profile — the search's candidates next to the shipped
policies and the f16/q8_0 baselines, with cache size and an estimated speed
at a chosen context; a bits budget re-runs kvconvert.conversion.search.search.

Enter on a policy row searches with that policy; on a candidate row, searches
again with its bits as the budget (the search then picks the best per-layer
mix at that size). The chosen profile is always the last search's winner.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.markup import escape
from textual.widgets import Button, Checkbox, DataTable, Input, Label, Static

from ..base.errors import InputError
from ..kvcache.types import STANDARD_BITS
from ..conversion.profile import Policy, load_profile, shipped_names

from .base import JobPanel, StepScreen
from .state import est_speed, fmt, kv_mib, weight_bytes

DEFAULT_CTX = 32768
# (key, title, numeric): the table's columns; rows are dicts with these keys
COLUMNS = [("name", "profile", False), ("kind", "kind", False), ("k_bpv", "K bpv", True),
           ("v_bpv", "V bpv", True), ("mib", "KV MiB", True), ("ppl", "PPL", True), ("kld", "KLD", True),
           ("speed", "est. speed", True)]
BASELINES = ("f16", "q8_0")  # standard cache types shown for comparison


def shipped_policies() -> list[Policy]:
    out = []
    for name in shipped_names():
        try:
            got = load_profile(name)
        except InputError:
            continue
        if isinstance(got, Policy):
            out.append(got)
    return out


def parse_budget(value: str, what: str) -> float | None:
    value = value.strip()
    if not value:
        return None
    try:
        x = float(value)
    except ValueError:
        raise InputError(f"{what}: {value!r} is not a number of bits per value (e.g. 4.5)") from None
    if not 1.0 < x <= 16.0:
        raise InputError(f"{what} must be between 1 and 16 bits per value (got {x:g})")
    return x


class ProfileScreen(StepScreen):
    STEP = "profile"
    AUTO_FOCUS = "#profiles"  # the table first (s/r sort it); Tab reaches the budget fields
    BINDINGS = [Binding("s", "sort_next", "Sort"), Binding("r", "sort_reverse", "Reverse")]

    def body(self) -> ComposeResult:
        yield Label("Pick how much to compress the KV cache. Enter on a policy row searches with it; "
                    "or set a budget and press Search.", classes="lead")
        with Horizontal(classes="row"):
            yield Label("K budget", classes="field")
            yield Input("", placeholder="policy", id="k-budget", type="number", classes="short")
            yield Label("V budget", classes="field")
            yield Input("", placeholder="policy", id="v-budget", type="number", classes="short")
            yield Label("Context", classes="field")
            yield Input(str(DEFAULT_CTX), id="ctx", type="integer", classes="short")
            yield Checkbox("measure PPL/KLD", True, id="check")
            yield Button("Search", id="search", variant="primary")
        yield JobPanel()
        yield DataTable(id="profiles", cursor_type="row", zebra_stripes=True)
        yield Static("", id="profile-info", classes="info")

    def on_mount(self) -> None:
        self.sort_col, self.sort_rev = "", False
        self.auto_for = None  # the calibration the automatic first search ran for
        self.rows: list[dict] = []
        t = self.query_one("#profiles", DataTable)
        for key, title, numeric in COLUMNS:
            t.add_column(Text(title, justify="right" if numeric else "left"), key=key)

    def refresh_view(self) -> None:
        self.build_rows()
        self.show_table()
        self.show_choice()
        s = self.session
        # search once on arrival with a new calibration (not again after a failure or cancel)
        if s.calibration is not None and s.search is None and self.auto_for is not s.calibration \
                and not self.job_running():
            self.auto_for = s.calibration
            self.start_search(s.policy)

    # ---- table ----

    def context_tokens(self) -> int:
        try:
            return max(1, int(self.query_one("#ctx", Input).value))
        except ValueError:
            return DEFAULT_CTX

    def build_rows(self) -> None:
        s = self.session
        rows = [{"name": f"{t} cache", "kind": "baseline", "k_bpv": STANDARD_BITS[t], "v_bpv": STANDARD_BITS[t]}
                for t in BASELINES]
        if s.search is not None:
            for i, c in enumerate(s.search.candidates):
                rows.append({"name": c.name, "kind": "chosen" if i == 0 else "candidate", "k_bpv": c.k_bpv,
                             "v_bpv": c.v_bpv, "ppl": c.ppl, "kld": c.kld})
        for p in shipped_policies():
            rows.append({"name": p.name, "kind": "policy", "k_bpv": p.k_budget,
                         "v_bpv": 16.0 if p.v_budget is None else p.v_budget, "policy": p.name})
        if s.source is not None:
            a, n = s.source.args, self.context_tokens()
            w = weight_bytes(s.source)
            for r in rows:
                r["mib"] = kv_mib(a, n, r["k_bpv"], r["v_bpv"])
                r["speed"] = est_speed(a, n, r["k_bpv"], r["v_bpv"], w)
        self.rows = rows

    def show_table(self) -> None:
        t = self.query_one("#profiles", DataTable)
        t.clear()
        rows = list(self.rows)
        if self.sort_col:
            col, numeric = self.sort_col, dict((k, n) for k, _, n in COLUMNS)[self.sort_col]

            def key(r: dict):  # numbers sort numerically, missing ones ("—") last
                v = r.get(col)
                return (v is None, v or 0.0) if numeric else str(v or "")

            rows.sort(key=key, reverse=self.sort_rev)
        for i, r in enumerate(rows):
            style = "bold" if r["kind"] == "chosen" else ""
            t.add_row(Text(r["name"], style=style), Text(r["kind"], style="dim" if r["kind"] == "baseline" else ""),
                      *(Text(fmt(r.get(k), f), justify="right") for k, f in
                        (("k_bpv", ".2f"), ("v_bpv", ".2f"), ("mib", ",.1f"), ("ppl", ".3f"), ("kld", ".4f"))),
                      Text(fmt(r.get("speed"), ".2f") + ("×" if r.get("speed") is not None else ""), justify="right"),
                      key=str(i))
        self.shown = rows

    def show_choice(self) -> None:
        prof, info = self.session.profile, self.query_one("#profile-info", Static)
        if self.session.calibration is None:
            info.update("No calibration yet: run step 2 (Ctrl+B). Shipped policies are listed for reference.")
            return
        if prof is None:
            info.update("")
            return
        kb, vb = prof.budget_bits()
        m = prof.measured
        quality = ""
        if m.get("ppl") is not None:
            quality = (f"\nMeasured on {escape(str(m.get('text', 'held-out text')))}: PPL {fmt(m.get('ppl'))} "
                       f"(f16 cache {fmt(m.get('ppl_f16'))}), KLD {fmt(m.get('kld'), '.4f')}, "
                       f"top-1 {fmt(m.get('top1'), '.1%')}")
        info.update(f"[b]Chosen: {escape(prof.name)}[/b] (policy {escape(prof.policy)}): "
                    f"K {kb:.2f} and V {vb:.2f} bits per value, {prof.k_type}/{prof.v_type} caches.{quality}\n"
                    "Est. speed: decode speed relative to an f16 cache at this context (memory-bound estimate)."
                    "\n\nNext: convert (Ctrl+N).")

    @on(Input.Changed, "#ctx")
    def ctx_changed(self) -> None:
        self.build_rows()
        self.show_table()

    @on(DataTable.HeaderSelected, "#profiles")
    def header(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value or ""
        self.sort_rev = (not self.sort_rev) if key == self.sort_col else False
        self.sort_col = key
        self.show_table()

    def action_sort_next(self) -> None:
        keys = [k for k, _, _ in COLUMNS]
        self.sort_col = keys[(keys.index(self.sort_col) + 1) % len(keys)] if self.sort_col in keys else keys[0]
        self.sort_rev = False
        self.show_table()
        self.say(f"sorted by {dict((k, t) for k, t, _ in COLUMNS)[self.sort_col]}", "info")

    def action_sort_reverse(self) -> None:
        self.sort_rev = not self.sort_rev
        self.show_table()

    # ---- search ----

    @on(DataTable.RowSelected, "#profiles")
    def row_selected(self, event: DataTable.RowSelected) -> None:
        row = self.shown[int(event.row_key.value or 0)]
        if row["kind"] == "baseline":
            self.say(f"{row['name']}: a reference; to convert without a compressed cache, skip this step", "info")
        elif row["kind"] == "policy":
            self.query_one("#k-budget", Input).value = ""
            self.query_one("#v-budget", Input).value = ""
            self.start_search(row["policy"])
        elif row["kind"] == "candidate":
            self.query_one("#k-budget", Input).value = f"{row['k_bpv']:g}"
            self.query_one("#v-budget", Input).value = f"{row['v_bpv']:g}"
            self.start_search(self.session.policy)
        else:
            self.say(f"{row['name']} is the chosen profile; next: convert (Ctrl+N)", "ok")

    @on(Button.Pressed, "#search")
    @on(Input.Submitted, "#k-budget, #v-budget")
    def search_pressed(self) -> None:
        self.start_search(self.session.policy)

    def start_search(self, policy: str) -> None:
        cal = self.session.calibration
        if cal is None:
            self.say("calibrate first (step 2, Ctrl+B): the search needs the calibration", "error")
            return
        try:
            kb = parse_budget(self.query_one("#k-budget", Input).value, "K budget")
            vb = parse_budget(self.query_one("#v-budget", Input).value, "V budget")
        except InputError as e:
            self.say(str(e), "error")
            return
        check = self.query_one("#check", Checkbox).value

        def call(progress, cancel):
            from ..conversion.search import search

            return search(cal, policy=policy, k_budget=kb, v_budget=vb, check=check, progress=progress,
                          cancel=cancel)

        def done(result) -> None:
            if self.session.calibration is not cal:
                self.say("the calibration changed while searching; search again", "info")
                return
            self.session.policy = policy
            self.session.set_search(result)
            self.refresh_view()
            self.say(f"Search done: {result.profile.name}.", "ok")

        what = f"searching ({policy}" + (f", K {kb:g}" if kb else "") + (f", V {vb:g}" if vb else "") + ")"
        self.run_job(what, call, done)
