"""Tests of kvconvert.formats.tokenizer (HF tokenizer.json <-> GGUF tokenizer metadata).

The oracle is llama.cpp's own tokenizer (llama-cpp-python, vocab-only loads):
real GGUFs must tokenize real text (Austen, evaluation part) identically, and
GGUFs written from hand-built Hugging Face tokenizers must tokenize like the
Hugging Face originals. SmolLM2 runs in the default suite; Qwen2.5 is ``slow``.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from pathlib import Path

import gguf
import pytest
from gguf import TokenType
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from kvconvert.formats import _pretok
from kvconvert.formats import tokenizer as T
from kvconvert.base.errors import InputError, OutputError
from kvconvert.testdata.fixtures import austen_text, qwen25_coder_gguf, smollm2_gguf

# Unicode letters/digits/marks/emoji, whitespace runs, code, contractions, special tokens.
VARIED = (
    "Hello world! I've been 'told' he's here; we'LL see, 'RE you sure? ÇA VA? naïve café — “quotes” ‘x’\n"
    "def f(x):\n\tif x >= 10_000:\n\t\treturn x**2  # comment\n\n\n   trailing   \r\n"
    "数字123456789 ٣٤٥ ²³ Ⅻ 🦙🚀👨‍👩‍👧 कि ñ Ω≈ç√∫ ſt K e\u0301 "
    "\u00a0nbsp\u2003em\u200bzw\ufeff\x00 "
    "<|im_start|>user\nhi<|im_end|> <tool_call>{}</tool_call><|endoftext|><|endoftext|>"
    " 3.14159 1,000,000 ...!!!??? ''''``` \"\"\" "
)


# -- helpers ------------------------------------------------------------------

def _llama_vocab(path: Path):
    """llama.cpp's tokenizer for a GGUF (vocab-only load)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (CI installs it)")
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def _llama_ids(llm, text: str, add_bos: bool = False) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)


def _write_vocab_gguf(path: Path, spec: T.TokenizerSpec) -> Path:
    """A tensor-less llama-arch GGUF holding ``spec``: enough for a vocab-only load."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(64)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(64)
    T.add_to_gguf(w, spec)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tokenizer_fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def _corpus() -> list[str]:
    return [line for line in austen_text("calib")[:300_000].splitlines() if line.strip()]


# -- real GGUFs ------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2() -> tuple[Path, T.TokenizerSpec]:
    path = smollm2_gguf()
    return path, T.spec_from_gguf(gguf.GGUFReader(path))


@pytest.fixture(scope="module")
def qwen() -> tuple[Path, T.TokenizerSpec]:
    path = qwen25_coder_gguf()
    return path, T.spec_from_gguf(gguf.GGUFReader(path))


@pytest.fixture(scope="module")
def eval_text() -> str:
    return austen_text("eval")


def test_smollm2_metadata(smollm2) -> None:
    _, s = smollm2
    assert (s.model, s.pre, len(s.tokens), len(s.merges)) == ("gpt2", "smollm", 49152, 48900)
    control = [i for i, t in enumerate(s.token_types) if t == TokenType.CONTROL]
    assert control == list(range(17)) and s.tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert set(s.token_types[17:]) == {TokenType.NORMAL}
    assert (s.bos_id, s.eos_id, s.unk_id, s.pad_id) == (1, 2, 0, 2)
    assert (s.add_bos, s.add_eos, s.add_space_prefix) == (False, None, False)
    assert s.merges[:2] == ["Ġ t", "Ġ a"] and s.model_max_length == 8192
    assert s.chat_template and "<|im_start|>" in s.chat_template


@pytest.mark.slow
def test_qwen_metadata(qwen) -> None:
    _, s = qwen
    assert (s.model, s.pre, len(s.tokens), len(s.merges)) == ("gpt2", "qwen2", 151936, 151387)
    assert s.tokens[151643:151646] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert s.token_types[151657:151659] == [TokenType.USER_DEFINED] * 2  # <tool_call>, </tool_call>
    assert s.tokens[151665:] == [f"[PAD{i}]" for i in range(151665, 151936)]
    assert set(s.token_types[151665:]) == {TokenType.UNUSED}
    assert (s.bos_id, s.eos_id, s.pad_id, s.add_bos) == (151643, 151645, 151643, False)


def _check_against_llama_cpp(path: Path, spec: T.TokenizerSpec, text: str) -> None:
    llm = _llama_vocab(path)
    tok = T.load_tokenizer(spec)
    assert _pretok.CHKHSH[_pretok.chkhsh(tok.encode(_pretok.CHKTXT).ids)] == spec.pre
    for sample in (VARIED, _pretok.CHKTXT, text):
        want = _llama_ids(llm, sample)
        assert len(want) > len(sample) // 8
        assert tok.encode(sample, add_special_tokens=False).ids == want
    assert tok.encode(VARIED).ids == _llama_ids(llm, VARIED, add_bos=True)


def test_smollm2_tokenizes_like_llama_cpp(smollm2, eval_text) -> None:
    _check_against_llama_cpp(*smollm2, eval_text)


@pytest.mark.slow
def test_qwen_tokenizes_like_llama_cpp(qwen, eval_text) -> None:
    _check_against_llama_cpp(*qwen, eval_text)


def _check_round_trip(path: Path, spec: T.TokenizerSpec, model_type: str, tmp_path: Path) -> None:
    """GGUF -> HF -> GGUF keeps every tokenizer field and every tokenizer.* key of the real file."""
    hf = tmp_path / "hf"
    T.write_hf(spec, hf)
    assert {p.name for p in hf.iterdir()} == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    # import_gguf writes config.json next to these; vocab_size accounts for the [PAD] fillers.
    (hf / "config.json").write_text(json.dumps({"model_type": model_type, "vocab_size": len(spec.tokens)}))
    back = T.spec_from_hf(hf)
    for f in dataclasses.fields(T.TokenizerSpec):
        assert getattr(back, f.name) == getattr(spec, f.name), f.name
    out = _write_vocab_gguf(tmp_path / "back.gguf", back)
    assert _tokenizer_fields(out) == _tokenizer_fields(path)

    llm = _llama_vocab(path)
    from transformers import AutoTokenizer

    raw = Tokenizer.from_file(str(hf / "tokenizer.json"))
    assert raw.encode(VARIED, add_special_tokens=False).ids == _llama_ids(llm, VARIED)
    # transformers 5 maps model_type qwen2 to its own Qwen2Tokenizer, which rebuilds the
    # pre-tokenizer from the vocabulary and adds Qwen's NFC normalizer (llama.cpp has none).
    auto = AutoTokenizer.from_pretrained(hf)
    nfc = unicodedata.normalize("NFC", VARIED)
    assert auto(nfc, add_special_tokens=False)["input_ids"] == _llama_ids(llm, nfc)
    assert auto.eos_token == spec.tokens[spec.eos_id]
    assert auto.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).count("<|im_start|>") >= 2


def test_smollm2_round_trip(smollm2, tmp_path) -> None:
    _check_round_trip(*smollm2, "llama", tmp_path)


@pytest.mark.slow
def test_qwen_round_trip(qwen, tmp_path) -> None:
    _check_round_trip(*qwen, "qwen2", tmp_path)


# -- hand-built Hugging Face tokenizers -------------------------------------------

# Pre-tokenizer spellings as Hugging Face files carry them -> the GGUF name they imply.
HF_PRE_TOKENIZERS = {
    "gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
    "qwen2": pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
    "llama-bpe": pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
}
N_CONFIG_VOCAB = 700  # config.json vocab_size: larger than the tokenizer, as for Qwen2.5


def _byte_level_dir(tmp_path: Path, pre: str, *, ignore_merges: bool | None = None,
                    config: dict | None = None, tokenizer_config: dict | None = None) -> Path:
    """A byte-level BPE tokenizer trained on Austen with special and user-defined added tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = HF_PRE_TOKENIZERS[pre]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    tok.add_tokens(["<tool_call>", "<|fim_x|>"])  # non-special; the second one looks special
    tj = json.loads(tok.to_str())
    tj["model"]["ignore_merges"] = pre == "llama-bpe" if ignore_merges is None else ignore_merges
    d = tmp_path / f"hf-{pre}"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(tj))
    tc = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
          "chat_template": "{{ messages[0]['content'] }}", "model_max_length": 4096} | (tokenizer_config or {})
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    (d / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": N_CONFIG_VOCAB} | (config or {})))
    return d


def test_hand_built_byte_level_spec(tmp_path) -> None:
    d = _byte_level_dir(tmp_path, "gpt-2")
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    s = T.spec_from_hf(d)
    n = hf.get_vocab_size()
    assert (s.model, s.pre, len(s.tokens)) == ("gpt2", "gpt-2", N_CONFIG_VOCAB)
    added = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "<|fim_x|>")
    ids = {t: hf.token_to_id(t) for t in added}
    for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_x|>"):
        assert s.token_types[ids[t]] == TokenType.CONTROL, t
    assert s.token_types[ids["<tool_call>"]] == TokenType.USER_DEFINED
    assert s.tokens[n:] == [f"[PAD{i}]" for i in range(n, N_CONFIG_VOCAB)]
    assert set(s.token_types[n:]) == {TokenType.UNUSED}
    assert sum(t == TokenType.NORMAL for t in s.token_types) == n - 5
    assert [s.tokens[i] for i in range(n)] == [hf.id_to_token(i) for i in range(n)]
    want = (ids["<|im_start|>"], ids["<|im_end|>"], ids["<|endoftext|>"], None)
    assert (s.bos_id, s.eos_id, s.pad_id, s.unk_id) == want
    assert (s.add_bos, s.add_eos, s.add_space_prefix, s.model_max_length) == (None, None, None, 4096)
    assert s.chat_template == "{{ messages[0]['content'] }}"
    merges = json.loads((d / "tokenizer.json").read_text())["model"]["merges"]
    assert isinstance(merges[0], list) and s.merges == [" ".join(m) for m in merges]


def test_merges_string_and_pair_forms_agree(tmp_path) -> None:
    d = _byte_level_dir(tmp_path, "gpt-2")
    pairs = T.spec_from_hf(d).merges
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["model"]["merges"] = [" ".join(m) for m in tj["model"]["merges"]]
    (d / "tokenizer.json").write_text(json.dumps(tj))
    assert T.spec_from_hf(d).merges == pairs


@pytest.mark.parametrize("pre", list(HF_PRE_TOKENIZERS))
def test_hand_built_tokenizer_through_llama_cpp(tmp_path, pre) -> None:
    """HF tokenizer -> spec -> GGUF: llama.cpp tokenizes like the HF original, and so does load_tokenizer."""
    d = _byte_level_dir(tmp_path, pre)
    s = T.spec_from_hf(d)
    assert s.pre == pre  # unknown vocabulary: named from its pre-tokenizer regexes
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    llm = _llama_vocab(_write_vocab_gguf(tmp_path / "v.gguf", s))
    ours = T.load_tokenizer(s)
    text = VARIED + "\n".join(austen_text("eval").splitlines()[:400])
    want = hf.encode(text).ids  # none of these HF files adds BOS/EOS
    assert _llama_ids(llm, text) == want
    assert ours.encode(text, add_special_tokens=False).ids == want
    # no add_bos_token anywhere: llama.cpp's default for the name decides
    assert _llama_ids(llm, "Hi", add_bos=True) == ours.encode("Hi").ids


def test_ignore_merges_must_match_the_pre_tokenizer(tmp_path) -> None:
    d = _byte_level_dir(tmp_path, "llama-bpe", ignore_merges=False)
    with pytest.raises(InputError, match="tokenizer.json.*pre-tokenizer not recognised"):
        T.spec_from_hf(d)


def test_unknown_pre_tokenizer_is_refused(tmp_path) -> None:
    d = _byte_level_dir(tmp_path, "gpt-2")
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                      "use_regex": False}]}
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(InputError) as err:
        T.spec_from_hf(d)
    assert str(d / "tokenizer.json") in str(err.value) and "\n" not in str(err.value)


def test_special_tokens_as_gguf_py_finds_them(tmp_path) -> None:
    # Llama-3 style: BOS added by the post-processor, no add_bos_token in tokenizer_config.
    d = _byte_level_dir(tmp_path, "llama-bpe", config={"bos_token_id": 0, "eos_token_id": 5})
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["post_processor"] = {"type": "TemplateProcessing",
                            "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                       {"Sequence": {"id": "A", "type_id": 0}}],
                            "pair": [], "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                                                            "tokens": ["<|im_start|>"]}}}
    (d / "tokenizer.json").write_text(json.dumps(tj))
    tc = json.loads((d / "tokenizer_config.json").read_text())
    s = T.spec_from_hf(d)
    assert (s.bos_id, s.eos_id, s.add_bos) == (1, 2, True)  # tokenizer_config's ids win over config.json's
    # No bos_token in tokenizer_config: the id comes from config.json, and the template's
    # first token is then not "the" BOS, so gguf-py does not set add_bos.
    (d / "tokenizer_config.json").write_text(json.dumps(tc | {"bos_token": None}))
    s = T.spec_from_hf(d)
    assert (s.bos_id, s.eos_id, s.add_bos) == (0, 2, False)
    (d / "tokenizer_config.json").write_text(json.dumps(tc | {"add_bos_token": False}))
    assert T.spec_from_hf(d).add_bos is False
    # llama.cpp's LlamaModel extras: add_prefix_space, and no BOS for 49152-token vocabularies
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 49152}))
    (d / "tokenizer_config.json").write_text(json.dumps(tc | {"add_bos_token": True, "add_prefix_space": False}))
    s = T.spec_from_hf(d)
    assert (s.add_bos, s.add_space_prefix, len(s.tokens)) == (False, False, 49152)


# -- SentencePiece-style (byte-fallback BPE, GGUF model "llama") -----------------------

def _byte_fallback_dir(tmp_path: Path) -> Path:
    """A Llama-2-style tokenizer.json: <unk>/<s>/</s>, 256 byte pieces, Austen-trained pieces."""
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trained.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>"],
                                                               show_progress=False))
    model = json.loads(trained.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    special = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True} for i, t in enumerate(["<unk>", "<s>", "</s>"])]
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    tj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos,
                                    {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": model | {"vocab": vocab, "byte_fallback": True, "fuse_unk": True, "unk_token": "<unk>"},
    }
    d = tmp_path / "hf-spm"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(tj))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                         "unk_token": "<unk>"}))
    return d


def test_byte_fallback_tokenizer_through_llama_cpp(tmp_path) -> None:
    d = _byte_fallback_dir(tmp_path)
    s = T.spec_from_hf(d)
    assert (s.model, s.pre, s.merges, s.bos_id, s.eos_id, s.unk_id) == ("llama", "default", [], 1, 2, 0)
    assert s.token_types[:3] == [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    assert set(s.token_types[3:259]) == {TokenType.BYTE} and set(s.token_types[259:]) == {TokenType.NORMAL}
    assert s.scores is not None and s.scores[s.tokens.index("▁t")] > s.scores[s.tokens.index("▁the")]
    assert s.add_bos is True and s.add_space_prefix is None  # the normalizer prepends "▁", llama.cpp's default

    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    gg = _write_vocab_gguf(tmp_path / "v.gguf", s)
    llm = _llama_vocab(gg)
    back = T.spec_from_gguf(gguf.GGUFReader(gg))
    T.write_hf(back, tmp_path / "out")
    rebuilt = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    lines = [VARIED, "x  y</s>w <s> a"] + [ln for ln in austen_text("eval").splitlines() if ln.strip()][:1500]
    for line in lines:
        want = hf.encode(line).ids
        assert _llama_ids(llm, line, add_bos=True) == want, line
        assert rebuilt.encode(line).ids == want, line
    assert T.spec_from_hf(tmp_path / "out").token_types == s.token_types


# -- bad input --------------------------------------------------------------------------

def test_missing_tokenizer_json(tmp_path) -> None:
    with pytest.raises(InputError, match=f"{tmp_path / 'tokenizer.json'}: not found"):
        T.spec_from_hf(tmp_path)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "config.json"])
def test_corrupt_json(tmp_path, name) -> None:
    d = _byte_level_dir(tmp_path, "gpt-2")
    (d / name).write_text('{"model": {"type": "BPE", ')
    with pytest.raises(InputError) as err:
        T.spec_from_hf(d)
    assert str(d / name) in str(err.value) and "\n" not in str(err.value)


def test_wordpiece_is_refused(tmp_path) -> None:
    tok = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(InputError, match=f"{tmp_path / 'tokenizer.json'}: tokenizer model WordPiece is not supported"):
        T.spec_from_hf(tmp_path)


@pytest.mark.parametrize("model, pre, message", [("bert", None, "tokenizer model 'bert' is not supported"),
                                                 ("gpt2", "deepseek-llm", "pre-tokenizer 'deepseek-llm'")])
def test_unsupported_gguf_tokenizer(tmp_path, model, pre, message) -> None:
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model(model)
    if pre:
        w.add_tokenizer_pre(pre)
    w.add_token_list(["a", "b", "ab"])
    w.add_token_merges(["a b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(InputError, match=message) as err:
        T.spec_from_gguf(gguf.GGUFReader(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("change, message", [
    ({"merges": ["a c"]}, "merge 'a c' does not join two tokens"),
    ({"merges": ["ab"]}, "merge 'ab' does not join two tokens"),
    ({"bos_id": 3}, "bos token id 3 is outside the vocabulary"),
    ({"token_types": [1, 1]}, "3 tokens but 2 types"),
    ({"pre": "default"}, "pre-tokenizer 'default' is not supported"),
    ({"add_bos": True}, "add BOS/EOS but has no BOS/EOS token id"),
])
def test_inconsistent_spec_is_refused(tmp_path, change, message) -> None:
    spec = dataclasses.replace(T.TokenizerSpec("gpt2", "gpt-2", ["a", "b", "ab"], [1, 1, 1], ["a b"]), **change)
    with pytest.raises(InputError, match=message):
        T.load_tokenizer(spec)
    with pytest.raises(InputError, match=message):
        T.write_hf(spec, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_write_hf_onto_a_file_is_an_output_error(tmp_path) -> None:
    spec = T.TokenizerSpec("gpt2", "gpt-2", ["a", "b", "ab"], [1, 1, 1], ["a b"])
    (tmp_path / "taken").write_text("x")
    with pytest.raises(OutputError, match=str(tmp_path / "taken")):
        T.write_hf(spec, tmp_path / "taken")
    T.write_hf(spec, tmp_path / "ok")
    assert Tokenizer.from_file(str(tmp_path / "ok" / "tokenizer.json")).encode("abba").tokens == ["ab", "b", "a"]
