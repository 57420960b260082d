"""Chat on the native runtime: the GGUF's chat template, and a multi-turn session that
keeps the conversation in the KV cache.

Templates are rendered as Hugging Face's ``apply_chat_template`` renders them: jinja2's
``ImmutableSandboxedEnvironment`` with ``trim_blocks``/``lstrip_blocks``, the loop-controls
extension, ``raise_exception``, ``strftime_now``, a ``tojson`` that does not escape HTML,
and the special tokens (``bos_token``, ``eos_token``, …) as variables. The rendered text is
tokenized as llama.cpp does (special tokens parsed); a BOS that the template already writes
is not added a second time (llama.cpp's ``common_chat_templates_apply`` strips it before its
tokenizer adds one). Generation stops on EOS, EOT and the template's end-of-turn token
(``<|im_end|>``, ``<|eot_id|>``, ``<|end|>``, ``<end_of_turn>``, ...) when the template
writes it.

A GGUF without ``tokenizer.chat_template`` gets ChatML, llama.cpp's fallback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterator

import numpy as np

from ..base.errors import InputError
from ..runtime.generate import SamplerParams, sample
from ..kvcache.types import is_tq
from ..runtime.engine import Context, ContextParams, Model, check_logits

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# End-of-turn markers of the common template families: a stop token when the vocabulary has it
# as one token and the template writes it.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|END_OF_TURN_TOKEN|>", "<|endoftext|>",
               "<|eom_id|>", "</s>")


class ContextFull(InputError):
    """The conversation no longer fits the context."""


class ChatTemplateError(InputError):
    """The template raised (raise_exception) or failed to render for these messages."""


def _compile(source: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise InputError(f"the model's chat template does not parse (line {e.lineno}: {e.message}); "
                         "pass another template") from None


class ChatTemplate:
    """A jinja2 chat template, rendered as transformers' apply_chat_template(tokenize=False)."""

    def __init__(self, source: str, special: dict[str, str] | None = None):
        self.source = source
        self.special = dict(special or {})
        self._tmpl = _compile(source)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
               tools: list[dict] | None = None, **kwargs) -> str:
        import jinja2

        msgs = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return self._tmpl.render(messages=msgs, tools=tools, documents=None,
                                     add_generation_prompt=add_generation_prompt, **{**self.special, **kwargs})
        except jinja2.exceptions.TemplateError as e:
            raise ChatTemplateError(f"the chat template refused these messages: {e}") from None


@dataclass
class ChatFormat:
    """How a model chats: its template, special tokens, tokenization of a rendered chat, stop ids."""

    model: Model
    template: ChatTemplate
    bos_text: str | None
    eos_text: str | None
    add_bos: bool
    add_eos: bool
    bos_id: int | None
    stop_ids: set[int] = field(default_factory=set)

    @classmethod
    def for_model(cls, model: Model, template: str | None = None) -> "ChatFormat":
        spec = model.source.tokenizer_spec()
        source = template or spec.chat_template or CHATML

        def text(i):
            return spec.tokens[i] if i is not None and 0 <= i < len(spec.tokens) else None

        special = {f"{k}_token": text(spec.special_id(k)) or "" for k in ("bos", "eos", "unk", "pad")}
        stops = {t for t in (spec.eos_id, spec.eot_id, spec.eom_id) if t is not None}
        vocab = {}
        for marker in END_OF_TURN:
            if marker in source:
                vocab.setdefault(marker, None)
        if vocab:
            for i, tok in enumerate(spec.tokens):
                if tok in vocab and spec.token_types[i] in (3, 4):  # CONTROL or USER_DEFINED: one token
                    stops.add(i)
        return cls(model, ChatTemplate(source, special), text(spec.bos_id), text(spec.eos_id),
                   spec.effective_add_bos(), bool(spec.add_eos), spec.bos_id, stops)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kw) -> str:
        return self.template.render(messages, add_generation_prompt, **kw)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of text with special tokens parsed; BOS as llama.cpp adds it (not twice)."""
        bos = add_special and self.add_bos and self.bos_id is not None
        if bos and self.bos_text and text.startswith(self.bos_text):
            text = text[len(self.bos_text):]  # the template writes the BOS: the tokenizer adds it once
        ids = self.model.tokenizer.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos else []) + ids

    def tokenize_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kw) -> list[int]:
        text = self.render(messages, add_generation_prompt, **kw)
        if self.add_eos and self.eos_text and text.endswith(self.eos_text):
            text = text[:-len(self.eos_text)]
        return self.encode(text)


class TextStream:
    """Incremental detokenization: whole UTF-8 characters only, and stop strings.

    ``push(token)`` returns the new text that can be shown (held back while it might be the
    start of a stop string); ``stopped`` turns true when a stop string appears (the text
    before it is returned, the stop string itself never). ``flush()`` returns what is held."""

    def __init__(self, model: Model, stop: list[str] | None = None):
        self.model = model
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.text = ""  # decoded so far (complete characters)
        self.shown = 0  # characters of text handed out
        self.stopped = False

    def push(self, tok: int) -> str:
        self.ids.append(tok)
        text = self.model.tokenizer.decode(self.ids, skip_special_tokens=False)
        if text.endswith("\ufffd"):
            return ""
        self.text = text
        return self._release(final=False)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        end = len(self.text)
        for s in self.stop:
            # search from where a stop string could begin that was not yet seen whole
            i = self.text.find(s, max(0, self.shown - len(s) + 1))
            if i >= 0 and i < end:
                end = i
                self.stopped = True
        if not self.stopped and not final:
            for s in self.stop:  # hold back a tail that may grow into a stop string
                for k in range(min(len(s) - 1, end - self.shown), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        out = self.text[self.shown:end] if end > self.shown else ""
        self.shown = max(self.shown, end)
        return out

    def flush(self) -> str:
        return self._release(final=True)


def keeps_first_batch_mean(params: ContextParams) -> bool:
    """Whether a context (resolved params) centers K on the mean of its first batch, which it
    keeps for its whole life (no calibrated means): a cleared cache then is not a new one."""
    centered = params.k_center if params.k_center is not None else is_tq(params.type_k)
    return bool(centered and params.k_mean is None)


class ChatSession:
    """A multi-turn conversation kept in one context: each turn prefills only the tokens that
    the newly rendered conversation adds to the cached ones (the cache is cut back to the
    common prefix with ``Context.reset`` when the rendering does not extend it)."""

    def __init__(self, model: Model, ctx_params: ContextParams | None = None,
                 sampler: SamplerParams = SamplerParams(), system: str | None = None,
                 template: str | None = None):
        self.model = model
        self.fmt = ChatFormat.for_model(model, template)
        self.ctx: Context = model.context(ctx_params or ContextParams())
        self.sampler = sampler
        self.system = system
        self.rng = np.random.default_rng(sampler.seed)
        self.messages: list[dict[str, str]] = []
        self.tokens: list[int] = []  # what the cache holds, in order
        self.prefilled = 0  # tokens evaluated by the last turn's prefill (for tests and stats)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def _sync(self, ids: list[int]) -> np.ndarray:
        """Make the cache hold ``ids``, evaluating only what it lacks; logits after the last."""
        n = 0
        lim = min(len(ids), len(self.tokens), self.ctx.n_past)
        while n < lim and ids[n] == self.tokens[n]:
            n += 1
        if n == len(ids):  # nothing new: re-evaluate the last token for its logits
            n -= 1
        if 0 < n < self.ctx.n_past and n < self.ctx.rewind_floor:
            n = 0  # sliding-window layers no longer hold what position n needs: prefill it all again
        if n == 0 and self.ctx.n_past and keeps_first_batch_mean(self.ctx.params):
            self.ctx = self.model.context(self.ctx.params)  # start over: a new mean from the new first batch
        elif n < self.ctx.n_past:
            self.ctx.reset(n)
        self.tokens = self.tokens[:n]
        new = ids[n:]
        self.prefilled = len(new)
        logits = check_logits(self.ctx.eval(new), self.ctx, "for the chat prompt")
        self.tokens += new
        return logits

    def send(self, text: str, max_tokens: int = 512) -> Iterator[str]:
        """Add a user turn and stream the assistant's answer (text pieces); the answer is
        added to the conversation when the iterator is exhausted (or closed early)."""
        self.messages.append({"role": "user", "content": text})
        ids = self.fmt.tokenize_chat(self.messages)
        n_ctx = self.ctx.params.n_ctx
        if len(ids) >= n_ctx:
            self.messages.pop()
            raise ContextFull(f"the conversation ({len(ids)} tokens) does not fit the context of {n_ctx} tokens; "
                             "/reset it or use a larger --ctx")
        logits = self._sync(ids)
        stream = TextStream(self.model)
        history = list(ids)
        try:
            for _ in range(max_tokens):
                tok = sample(logits, self.sampler, history, self.rng)
                if tok in self.fmt.stop_ids:
                    break
                history.append(tok)
                piece = stream.push(tok)
                if piece:
                    yield piece
                if self.ctx.n_past >= n_ctx:
                    break
                logits = check_logits(self.ctx.eval([tok]), self.ctx, f"at position {self.ctx.n_past}")
                self.tokens.append(tok)
            tail = stream.flush()
            if tail:
                yield tail
        finally:
            self.messages.append({"role": "assistant", "content": stream.text})

    def ask(self, text: str, max_tokens: int = 512) -> str:
        return "".join(self.send(text, max_tokens))
