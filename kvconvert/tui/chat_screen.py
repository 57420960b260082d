"""Chat with the converted GGUF (reached from the Share step): kvconvert.serving.chat's
ChatSession, as ``kvconvert chat`` uses it, on the file's own KV caches ("auto":
the compressed caches its metadata describes). The conversation stays in the
KV cache between turns; each answer is generated in a thread worker (run_job)
and streamed into the transcript through call_from_thread, throttled. Esc or
Cancel stops a running answer at its next piece of text; Reset forgets the
conversation (the CLI's /reset)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Button, Footer, Input, Label, Static

from .base import JobPanel, StepBar, StepScreen
from .state import short_path

MAX_TOKENS = 256  # most tokens per answer
N_CTX = 4096  # the CLI's default context
STREAM_INTERVAL = 0.05  # seconds between transcript updates while an answer streams
DEFAULT_TEMP = 0.8  # the CLI's default; 0 = greedy


_CONTROL = {c: "\ufffd" for c in [*range(0x20), 0x7f] if chr(c) != "\n"} | {ord("\t"): "    "}


def printable(text: str) -> str:
    """Text as the transcript shows it: control characters (a small model may emit any byte)
    become U+FFFD instead of vanishing or moving the cursor; tabs become spaces."""
    return text.translate(_CONTROL)


def sampler_params(temperature: float):
    """The CLI's sampling (kvconvert chat's defaults) at this temperature."""
    from ..runtime.generate import SamplerParams

    return SamplerParams(temperature=temperature, top_k=40, top_p=0.95, repeat_penalty=1.1)


class ChatState:
    """What outlives one visit of the chat screen: the session and the file it runs on."""

    def __init__(self) -> None:
        self.chat = None  # kvconvert.serving.chat.ChatSession, made on the first message
        self.path: Path | None = None


class ChatScreen(StepScreen):
    STEP = "share"
    BINDINGS = [
        Binding("escape", "stop_or_back", "Stop answer / back"),
        Binding("ctrl+r", "reset", "Reset chat"),
    ]

    def __init__(self, state: ChatState | None = None) -> None:
        super().__init__()
        self.state = state or ChatState()
        self.streamed = ""  # the answer being streamed (as shown)
        self.pending_user: str | None = None  # the user turn of the answer being streamed

    @property
    def chat(self):
        return self.state.chat

    def compose(self) -> ComposeResult:  # no scrolling body: the transcript scrolls itself
        yield StepBar(self.STEP)
        with Vertical(classes="body", id="chat-body"):
            yield Static("", id="chat-file", classes="lead")
            with Horizontal(classes="row"):
                yield Label("System", classes="field")
                yield Input("", placeholder="optional system prompt (applies from the next Reset)", id="system")
                yield Label("Temp", classes="field")
                yield Input(str(DEFAULT_TEMP), id="temp", classes="short")
            with VerticalScroll(id="transcript-box"):
                yield Static("", id="transcript")
            yield JobPanel(transient=True)
            with Horizontal(classes="row"):
                yield Input("", placeholder="your message; Enter sends", id="prompt")
                yield Button("Send", id="send", variant="primary")
                yield Button("Reset", id="reset")
        yield Static("", id="message")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#prompt", Input).focus()

    # ---- view ----

    def refresh_view(self) -> None:
        r = self.session.converted
        if self.state.path is not None and (r is None or Path(r.output) != self.state.path) and \
                not self.job_running():
            self.state.chat, self.state.path = None, None  # a new conversion: a new conversation
            self.streamed = ""
        self.query_one("#chat-file", Static).update(
            "Convert a model first (step 5)." if r is None else
            Content(f"Chat with {short_path(r.output)} on its own KV caches; the conversation stays in the cache."))
        self.show_transcript()

    def show_transcript(self, pending: str | None = None) -> None:
        """The conversation so far, and ``pending``: the answer still streaming."""
        parts: list = []
        msgs = list(self.chat.messages) if self.chat is not None else []
        if pending is not None and self.pending_user is not None and \
                not (msgs and msgs[-1] == {"role": "user", "content": self.pending_user}):
            msgs.append({"role": "user", "content": self.pending_user})  # not yet in the session
        for m in msgs:
            who = {"system": ("System: ", "italic $text-muted"), "user": ("You: ", "bold $accent"),
                   "assistant": ("Assistant: ", "bold $success")}.get(m["role"], (f"{m['role']}: ", "bold"))
            parts += [who, printable(m["content"]), "\n\n"]
        if pending is not None:
            parts += [("Assistant: ", "bold $success"), printable(pending)]
        box = self.query_one("#transcript-box", VerticalScroll)
        follow = box.scroll_y >= box.max_scroll_y - 1
        self.query_one("#transcript", Static).update(Content.assemble(*parts).rstrip() if parts else
                                                      Content("Type a message below and press Enter."))
        if follow:
            box.call_after_refresh(box.scroll_end, animate=False)

    def append_answer(self, text: str) -> None:
        self.streamed += text
        self.show_transcript(self.streamed)

    # ---- actions ----

    def temperature(self) -> float | None:
        raw = self.query_one("#temp", Input).value.strip()
        try:
            t = float(raw)
        except ValueError:
            t = -1.0
        if not 0 <= t <= 10:
            self.say(f"temperature must be a number from 0 (greedy) to 10, not {raw!r}", "error")
            return None
        return t

    @on(Button.Pressed, "#send")
    @on(Input.Submitted, "#prompt")
    def send(self) -> None:
        r = self.session.converted
        if r is None:
            self.say("convert a model first (step 5)", "error")
            return
        prompt = self.query_one("#prompt", Input)
        text = prompt.value
        if not text.strip():
            self.say("type a message first", "error")
            return
        temp = self.temperature()
        if temp is None:
            return
        if self.job_running():
            self.say("wait for the answer to finish, or stop it (Esc)", "error")
            return
        path = Path(r.output)
        system = self.query_one("#system", Input).value.strip() or None
        chat = self.chat if self.state.path == path else None

        def call(progress, cancel):
            from ..serving.chat import ChatSession
            from ..runtime.engine import ContextParams, Model

            nonlocal chat
            if chat is None:
                progress(0, 1, f"loading {path.name}")
                chat = ChatSession(Model(path), ContextParams(n_ctx=N_CTX), sampler_params(temp), system=system)
                self.app.call_from_thread(self._adopt, chat, path)
            else:
                chat.sampler = sampler_params(temp)
                if not any(m["role"] == "user" for m in chat.messages) and chat.system != system:
                    chat.system = system  # a fresh conversation takes the current system prompt
                    chat.reset()
            self.app.call_from_thread(self._begin_answer, text)
            start, buf, last, stopped = len(chat.tokens), [], time.monotonic(), False
            try:
                with contextlib.closing(chat.send(text, MAX_TOKENS)) as pieces:
                    for piece in pieces:
                        buf.append(piece)
                        now = time.monotonic()
                        if now - last >= STREAM_INTERVAL:
                            last = now
                            self.app.call_from_thread(self.append_answer, "".join(buf))
                            buf.clear()
                        progress(min(len(chat.tokens) - start, MAX_TOKENS), MAX_TOKENS, "answering")
                        if cancel.is_set():  # stop at this piece; closing the stream keeps the partial answer
                            stopped = True
                            break
            finally:
                if buf:
                    self.app.call_from_thread(self.append_answer, "".join(buf))
                self.app.call_from_thread(self._end_answer)
            return stopped

        def done(stopped: bool) -> None:
            if stopped:
                self.say("Answer stopped; it stays in the conversation as far as it got.", "info")
            else:
                self.say("")

        self.run_job("answering", call, done)

    def _adopt(self, chat, path: Path) -> None:
        self.state.chat, self.state.path = chat, path

    def _begin_answer(self, text: str) -> None:
        prompt = self.query_one("#prompt", Input)
        if prompt.value == text:
            prompt.value = ""
        self.streamed, self.pending_user = "", text
        self.show_transcript("")

    def _end_answer(self) -> None:
        msgs = self.chat.messages if self.chat is not None else []
        prompt = self.query_one("#prompt", Input)
        if self.pending_user is not None and {"role": "user", "content": self.pending_user} not in msgs[-2:] \
                and not prompt.value:
            prompt.value = self.pending_user  # the turn was not taken (an error): give the text back
        self.pending_user = None
        self.show_transcript()  # from the session: the answer as kept (or the user turn dropped on an error)

    def action_stop_or_back(self) -> None:
        if self.job_running():
            self.action_cancel_job()
        else:
            self.app.pop_screen()

    @on(Button.Pressed, "#reset")
    def action_reset(self) -> None:
        if self.job_running():
            self.say("stop the answer first (Esc), then reset", "error")
            return
        if self.chat is not None:
            self.chat.system = self.query_one("#system", Input).value.strip() or None
            self.chat.reset()
        self.streamed = ""
        self.show_transcript()
        self.say("Conversation reset.", "info")
        self.query_one("#prompt", Input).focus()
