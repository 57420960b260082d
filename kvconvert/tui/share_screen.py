"""Step 7: share — upload the GGUF, its profile and a generated model card to
a Hub model repo (kvconvert.hub.transfer.push), with a live preview of the card
(kvconvert.hub.modelcard). The token comes from HF_TOKEN or the local login and
is never shown: the screen only says where it was found."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.widgets import Button, Checkbox, Input, Label, Markdown, Static

from .base import JobPanel, StepScreen
from .chat_screen import ChatScreen, ChatState
from .state import error_message, hub_token, short_path, token_source


def suggested_repo(session) -> str:
    return f"your-name/{Path(session.converted.output).stem}"


class ShareScreen(StepScreen):
    STEP = "share"
    BINDINGS = [Binding("ctrl+t", "chat", "Chat with it")]

    def body(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Static("", id="share-file", classes="lead")
            yield Button("Chat with it", id="chat")
        with Horizontal(classes="row"):
            yield Label("Repo", classes="field")
            yield Input("", placeholder="your-name/model-kv", id="repo-id")
            yield Checkbox("private", False, id="private")
            yield Button("Upload", id="upload", variant="primary")
        yield Static("", id="token-status", classes="hint")
        yield JobPanel()
        yield Static("", id="share-info", classes="info")
        yield Label("Model card preview (README.md)", classes="heading")
        with VerticalScroll(id="card-box"):
            yield Markdown("", id="card")

    def on_mount(self) -> None:
        self.card_text = ""
        self.chat_state = ChatState()  # the conversation outlives each visit of the chat screen

    def refresh_view(self) -> None:
        r = self.session.converted
        self.query_one("#share-file", Static).update(
            "Convert a model first (step 5)." if r is None else
            Content(f"Share {short_path(r.output)} with its profile and a model card on the Hugging Face Hub."))
        src = token_source()
        self.query_one("#token-status", Static).update(
            f"Token: found ({src}); it is never shown." if src else
            "No Hugging Face token: set HF_TOKEN or run `hf auth login`, then come back to this step.")
        self.update_preview()

    @on(Button.Pressed, "#chat")
    def action_chat(self) -> None:
        if self.session.converted is None:
            self.say("convert a model first (step 5), then chat with it", "error")
            return
        self.app.push_screen(ChatScreen(self.chat_state))

    def repo_id(self) -> str:
        return self.query_one("#repo-id", Input).value.strip()

    @on(Input.Changed, "#repo-id")
    def update_preview(self) -> None:
        r = self.session.converted
        if r is None:
            self.set_card("")
            return
        try:
            from ..hub.transfer import prepare_push

            # exactly what the upload sends: the shareable profile, the eval reports beside the file
            _, files = prepare_push(Path(r.output), self.repo_id() or suggested_repo(self.session),
                                    self.session.profile)
            self.set_card(next(f.source for f in files if f.path_in_repo == "README.md").decode())
        except Exception as e:  # the preview is a convenience: say why it is missing
            self.set_card("")
            self.say(f"no model card preview: {error_message(e)}", "error")

    def set_card(self, text: str) -> None:
        if text != self.card_text:
            self.card_text = text
            # the YAML front matter is for the Hub; the preview shows the page
            body = text.split("\n---\n", 1)[1] if text.startswith("---\n") and "\n---\n" in text else text
            self.query_one("#card", Markdown).update(body)

    @on(Button.Pressed, "#upload")
    @on(Input.Submitted, "#repo-id")
    def upload(self) -> None:
        r = self.session.converted
        if r is None:
            self.say("convert a model first (step 5)", "error")
            return
        repo = self.repo_id()
        if not repo:
            self.say("type the repo id to upload to, as OWNER/NAME", "error")
            return
        private = self.query_one("#private", Checkbox).value
        prof, gguf = self.session.profile, Path(r.output)

        def call(progress, cancel):
            from ..hub import transfer as hub

            return hub.push(gguf, repo, private=private, profile=prof, token=hub_token(), progress=progress)

        def done(url) -> None:
            self.query_one("#share-info", Static).update(
                Content(f"Uploaded to {repo}" + (" (private)" if private else "") + f": {url}"))
            self.say("Upload done.", "ok")

        self.query_one("#share-info", Static).update("")
        self.run_job(f"uploading to {repo}", call, done, cancellable=False)  # push has no cancel flag
