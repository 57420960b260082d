"""Chat templates and chat sessions (kvconvert.serving.chat, `kvconvert chat`, `kvconvert run --chat`).

The oracle for templates is transformers' ``apply_chat_template`` on a
``PreTrainedTokenizerFast`` built from the project's tokenizer for the real GGUF, given
the GGUF's own ``tokenizer.chat_template``: rendered text and token ids must be identical.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvconvert.testdata import fixtures
from kvconvert.serving.chat import ChatFormat, ChatSession, ChatTemplate, ChatTemplateError, TextStream
from kvconvert.runtime.generate import SamplerParams
from kvconvert.runtime.engine import ContextParams, Model
from kvconvert.formats.tokenizer import load_tokenizer

GREEDY = SamplerParams(temperature=0.0, repeat_penalty=1.0)
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."},
     {"role": "user", "content": "Name a colour: <b>&</b> \"quoted\" ünïcödé 🦙"}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Write\n  two lines\n\nplease."}],
]


@pytest.fixture(scope="module")
def qwen() -> Model:
    return Model(fixtures.qwen25_coder_gguf())


@pytest.fixture(scope="module")
def smollm2() -> Model:
    return Model(fixtures.smollm2_gguf())


@pytest.fixture(scope="module", params=["smollm2", "qwen"])
def model(request) -> Model:
    return request.getfixturevalue(request.param)


def _hf_tokenizer(model: Model, template: str | None = None):
    from transformers import PreTrainedTokenizerFast

    spec = model.source.tokenizer_spec()
    tok = PreTrainedTokenizerFast(tokenizer_object=load_tokenizer(spec), bos_token=spec.tokens[spec.bos_id],
                                  eos_token=spec.tokens[spec.eos_id])
    tok.chat_template = template or spec.chat_template
    return tok


def _hf_ids(tok, messages, add_generation_prompt=True) -> list[int]:
    out = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_template_matches_transformers(model) -> None:
    fmt = ChatFormat.for_model(model)
    assert fmt.template.source == model.source.tokenizer_spec().chat_template  # the GGUF's own template
    hf = _hf_tokenizer(model)
    im_start, im_end = (model.tokenizer.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>"))
    assert im_end in fmt.stop_ids
    for messages in CONVERSATIONS:
        for gen in (True, False):
            text = fmt.render(messages, add_generation_prompt=gen)
            assert text == hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
            ids = fmt.tokenize_chat(messages, add_generation_prompt=gen)
            assert ids == _hf_ids(hf, messages, gen)
            # special tokens are parsed as one id each
            assert ids.count(im_start) == text.count("<|im_start|>") >= len(messages) + gen
            assert ids.count(im_end) == text.count("<|im_end|>")


# A template exercising what HF's environment provides: raise_exception, tojson without HTML
# escaping, loop controls, trim_blocks/lstrip_blocks, namespace, strftime_now, special tokens.
CUSTOM = """{{ bos_token }}
{% set ns = namespace(n=0) %}
{% for m in messages %}
    {% if m.role == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}
    {% if m.content == 'skip' %}{% continue %}{% endif %}
    {% if m.content == 'stop' %}{% break %}{% endif %}
    {% set ns.n = ns.n + 1 %}
<|im_start|>{{ m.role }} {{ m | tojson }}<|im_end|>
{% endfor %}
count={{ ns.n }} year={{ strftime_now('%Y')|length }} eos={{ eos_token }}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_custom_template_environment_as_transformers(smollm2) -> None:
    tmpl = ChatTemplate(CUSTOM, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})
    hf = _hf_tokenizer(smollm2, CUSTOM)
    msgs = [{"role": "user", "content": "a <b> & 'c' é"}, {"role": "assistant", "content": "skip"},
            {"role": "user", "content": "second"}, {"role": "user", "content": "stop"},
            {"role": "user", "content": "never"}]
    text = tmpl.render(msgs)
    assert text == hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert '"a <b> & \'c\' é"' in text and "never" not in text and "skip" not in text
    assert "count=2 year=4 eos=<|im_end|>" in text
    assert "\n    " not in text  # lstrip_blocks removed the indentation of block lines
    with pytest.raises(ChatTemplateError, match="no tools here"):
        tmpl.render([{"role": "tool", "content": "x"}])
    with pytest.raises(Exception):  # the sandbox refuses attribute access to internals
        ChatTemplate("{{ messages.__class__.__mro__ }}").render([])


def test_bos_is_not_doubled(smollm2) -> None:
    fmt = ChatFormat.for_model(smollm2)
    fmt.add_bos = True  # as for a file whose tokenizer adds BOS (llama.cpp's add_bos)
    bos = fmt.bos_id
    fmt.template = ChatTemplate("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
                                {"bos_token": fmt.bos_text})
    ids = fmt.tokenize_chat([{"role": "user", "content": "Hello"}])
    assert ids[0] == bos and ids[1] != bos and ids.count(bos) == 1
    fmt.template = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}")
    ids2 = fmt.tokenize_chat([{"role": "user", "content": "Hello"}])
    assert ids2 == ids  # without the template's BOS the tokenizer adds it, once
    fmt.add_bos = False
    assert fmt.tokenize_chat([{"role": "user", "content": "Hello"}]) == ids[1:]


def test_stop_strings_in_text_stream(smollm2) -> None:
    ids = smollm2.tokenizer.encode("Hello world. The END is near", add_special_tokens=False).ids
    st = TextStream(smollm2, ["END", "xyz"])
    out = "".join(st.push(t) for t in ids) + st.flush()
    assert out == "Hello world. The " and st.stopped
    st = TextStream(smollm2, ["world!"])  # a partial match is held back, then released
    pieces = [st.push(t) for t in ids]
    assert "".join(pieces) + st.flush() == "Hello world. The END is near" and not st.stopped
    st = TextStream(smollm2)
    emoji = smollm2.tokenizer.encode("🦙", add_special_tokens=False).ids
    assert len(emoji) > 1 and [st.push(t) for t in emoji][:-1] == [""] * (len(emoji) - 1)
    assert st.text == "🦙"


def test_greedy_chat_answers_paris(qwen) -> None:
    s = ChatSession(qwen, ContextParams(n_ctx=512), GREEDY)
    answer = s.ask("What is the capital of France?", 40)
    assert "Paris" in answer
    assert s.messages[-1] == {"role": "assistant", "content": answer}


def test_multi_turn_keeps_the_cache(qwen) -> None:
    s = ChatSession(qwen, ContextParams(n_ctx=512), GREEDY, system="You are brief.")
    a1 = s.ask("What is the capital of France?", 24)
    n1 = len(s.tokens)
    a2 = s.ask("And of Germany?", 24)
    full = s.fmt.tokenize_chat(s.messages[:-1])
    # only the new turn was prefilled: the end of the previous answer plus the new user message
    assert s.prefilled == len(full) - n1 and 0 < s.prefilled < 20
    assert "Berlin" in a2
    # the same conversation from scratch gives the same greedy answer
    fresh = ChatSession(qwen, ContextParams(n_ctx=512), GREEDY, system="You are brief.")
    fresh.messages += [{"role": "user", "content": "What is the capital of France?"},
                       {"role": "assistant", "content": a1}]
    assert fresh.ask("And of Germany?", 24) == a2
    assert fresh.prefilled == len(full)
    # /reset, then the first question again: its whole prompt is still the cache's prefix, so the
    # cache is cut back to it and only its last token is evaluated again (for the logits)
    s.reset()
    assert s.ask("What is the capital of France?", 24) == a1
    assert s.prefilled == 1
    s.reset()
    s.ask("What is the capital of Spain?", 24)  # shares the system prompt and the turn's opening
    assert 0 < s.prefilled < len(s.fmt.tokenize_chat(s.messages[:-1])) // 2


def test_conversation_longer_than_the_context(smollm2) -> None:
    from kvconvert.serving.chat import ContextFull

    s = ChatSession(smollm2, ContextParams(n_ctx=64), GREEDY)
    with pytest.raises(ContextFull, match="does not fit the context of 64"):
        s.ask("word " * 80, 4)
    assert s.messages == []  # the refused turn is not kept


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvconvert.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_cli_chat_and_run_chat() -> None:
    path = str(fixtures.qwen25_coder_gguf())
    r = _cli("chat", path, "--temp", "0", "--ctx", "512", "-n", "40", "--system", "You are brief.",
             stdin="What is the capital of France?\nAnd of Germany?\n/reset\nWhat is the capital of Italy?\n")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 3 and "Paris" in lines[0] and "Berlin" in lines[1] and "Rome" in lines[2]
    assert "Paris" not in r.stdout.split("Berlin")[1]  # after /reset the earlier turns are gone
    r = _cli("run", path, "--chat", "-p", "What is the capital of France?", "--temp", "0", "-n", "40",
             "--ctx", "512")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and "What is the capital" not in r.stdout  # the answer, not the prompt
    r = _cli("run", str(fixtures.smollm2_gguf()), "--chat", "-p", "word " * 80, "--ctx", "64")
    assert r.returncode == 2 and "does not fit the context of 64" in r.stderr and "Traceback" not in r.stderr
