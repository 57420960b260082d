"""Tokenizer bridge: Hugging Face ``tokenizer.json`` <-> GGUF ``tokenizer.*`` metadata.

Two tokenizer families are supported, named as GGUF names them:

* ``gpt2``: byte-level BPE (Qwen2/Qwen2.5, SmolLM2, Llama 3). The GGUF stores
  tokens, types and merges, plus a pre-tokenizer *name* (see ``_pretok``).
* ``llama``: SentencePiece-style BPE with byte fallback (Llama 2 family). The
  GGUF stores tokens, types and scores; llama.cpp merges by score.

HF -> GGUF follows llama.cpp's ``convert_hf_to_gguf.py`` (``get_vocab_base``,
``get_vocab_base_pre``, ``LlamaModel.set_vocab``) and gguf-py's
``SpecialVocab``. GGUF -> HF rebuilds a tokenizer.json that tokenizes exactly
as llama.cpp does for that metadata (with special tokens parsed), so the same
builder also serves as the runtime's in-memory tokenizer (``load_tokenizer``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
from gguf import Keys, TokenType

from . import _pretok
from ..base.atomic import atomic_path
from ..base.errors import InputError, OutputError

if TYPE_CHECKING:
    import tokenizers

__all__ = ["TokenizerSpec", "spec_from_hf", "spec_from_gguf", "add_to_gguf", "write_hf", "load_tokenizer"]

MODELS = ("gpt2", "llama")
SPECIAL_KINDS = ("bos", "eos", "unk", "sep", "pad", "mask", "eot", "eom")
_ID_KEYS = {
    "bos": Keys.Tokenizer.BOS_ID, "eos": Keys.Tokenizer.EOS_ID, "unk": Keys.Tokenizer.UNK_ID,
    "sep": Keys.Tokenizer.SEP_ID, "pad": Keys.Tokenizer.PAD_ID, "mask": Keys.Tokenizer.MASK_ID,
    "eot": Keys.Tokenizer.EOT_ID, "eom": Keys.Tokenizer.EOM_ID,
}
_SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_HF_NO_LIMIT = 10**12  # transformers writes int(1e30) for "no model_max_length"


@dataclass
class TokenizerSpec:
    """Everything GGUF stores about a tokenizer (``tokenizer.*`` keys)."""

    model: str  # tokenizer.ggml.model: "gpt2" or "llama"
    pre: str | None  # tokenizer.ggml.pre: "qwen2", "smollm", "llama-bpe", "gpt-2"; "default" for llama
    tokens: list[str]
    token_types: list[int]  # gguf.TokenType values
    merges: list[str] = field(default_factory=list)  # "a b" (gpt2 only)
    scores: list[float] | None = None  # llama only
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    sep_id: int | None = None
    pad_id: int | None = None
    mask_id: int | None = None
    eot_id: int | None = None
    eom_id: int | None = None
    add_bos: bool | None = None
    add_eos: bool | None = None
    add_space_prefix: bool | None = None
    chat_template: str | None = None
    # Not a tokenizer.* key: comes from / goes to the model's context length.
    model_max_length: int | None = None
    source = None  # not a field: the file the spec was read from (str), for messages

    def special_id(self, kind: str) -> int | None:
        return getattr(self, f"{kind}_id")

    def effective_add_bos(self) -> bool:
        """Whether llama.cpp prepends BOS for this spec (its default when the key is absent)."""
        if self.add_bos is not None:
            return self.add_bos
        pre = _pretok.PRE_TOKENIZERS.get(self.pre or "")
        return self.model == "llama" or (pre is not None and pre.add_bos)

    def effective_add_space_prefix(self) -> bool:
        return self.model == "llama" if self.add_space_prefix is None else self.add_space_prefix


# --------------------------------------------------------------------------- HF -> spec

def spec_from_hf(hf_dir: Path) -> TokenizerSpec:
    """Read ``tokenizer.json`` (+ ``tokenizer_config.json``, ``config.json``) in ``hf_dir``.

    Raises ``InputError`` for a missing, corrupt or unsupported tokenizer, and
    for a byte-level BPE whose pre-tokenizer llama.cpp would not reproduce.
    """
    hf_dir = Path(hf_dir)
    tok_path = hf_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise InputError(f"{tok_path}: not found; kvconvert needs the fast-tokenizer file "
                         "(save the tokenizer with transformers' save_pretrained to create it)")
    tj = _read_json(tok_path)
    tc = _read_json(hf_dir / "tokenizer_config.json") if (hf_dir / "tokenizer_config.json").is_file() else {}
    cfg = _read_json(hf_dir / "config.json") if (hf_dir / "config.json").is_file() else {}

    model = tj.get("model")
    kind = model.get("type") if isinstance(model, dict) else None
    if kind != "BPE" or not isinstance(model.get("vocab"), dict):
        raise InputError(f"{tok_path}: tokenizer model {kind or 'unknown'} is not supported; kvconvert converts "
                         "byte-level BPE (Qwen2, Llama 3, SmolLM) and byte-fallback BPE (Llama 2) tokenizers")
    added = [a for a in tj.get("added_tokens") or [] if isinstance(a, dict)]
    if not all(isinstance(a.get("id"), int) and isinstance(a.get("content"), str) for a in added):
        raise InputError(f"{tok_path}: malformed added_tokens entry; re-save the tokenizer with transformers")
    if not all(isinstance(i, int) for i in model["vocab"].values()):
        raise InputError(f"{tok_path}: model.vocab ids must be integers; re-save the tokenizer with transformers")
    id_to_tok: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    id_to_tok.update((a["id"], a["content"]) for a in added)
    n_vocab = _config_vocab_size(cfg) or max(id_to_tok, default=-1) + 1
    if id_to_tok and max(id_to_tok) >= n_vocab:
        raise InputError(f"{tok_path}: token id {max(id_to_tok)} is beyond config.json vocab_size {n_vocab}; "
                         "the tokenizer does not belong to this model")

    spm = bool(model.get("byte_fallback"))
    tokens, types = _hf_tokens(id_to_tok, added, n_vocab, spm, model.get("unk_token"))
    ids, add = _hf_special(tj, tc, cfg, added, n_vocab, tok_path)
    if spm:
        merged = ["".join(m) if isinstance(m, list) else str(m).replace(" ", "", 1) for m in model.get("merges") or []]
        spec = TokenizerSpec("llama", "default", tokens, types, [], _scores_from_merges(tokens, types, merged))
        if not _spm_prepends_space(tj):
            spec.add_space_prefix = False  # llama.cpp's SentencePiece default is to prepend one
    elif not (merges := _hf_merges(model.get("merges") or [], tok_path)):
        raise InputError(f"{tok_path}: byte-level BPE without merges; llama.cpp cannot load such a vocabulary")
    else:
        spec = TokenizerSpec("gpt2", _detect_pre(tj, tok_path), tokens, types, merges)
    for k, v in ids.items():
        setattr(spec, f"{k}_id", v)
    spec.add_bos, spec.add_eos = add.get("bos"), add.get("eos")
    spec.chat_template = _hf_chat_template(hf_dir, tc)
    mml = tc.get("model_max_length")
    if isinstance(mml, int) and 0 < mml < _HF_NO_LIMIT:
        spec.model_max_length = mml
    if _is_llama_arch(cfg):  # llama.cpp's LlamaModel.set_vocab extras
        if isinstance(tc.get("add_prefix_space"), bool):
            spec.add_space_prefix = tc["add_prefix_space"]
        if _config_vocab_size(cfg) == 49152:  # "Apply to granite small models only" (SmolLM2 too)
            spec.add_bos = False
    return spec


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read as JSON ({err}); restore the file from the original model") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object; restore the file from the original model")
    return data


def _config_vocab_size(cfg: dict[str, Any]) -> int | None:
    n = cfg.get("vocab_size", (cfg.get("text_config") or {}).get("vocab_size"))
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _is_llama_arch(cfg: dict[str, Any]) -> bool:
    return cfg.get("model_type") == "llama" or "LlamaForCausalLM" in (cfg.get("architectures") or [])


def _looks_special(text: str) -> bool:
    """llama.cpp's ``does_token_look_special``: added tokens treated as CONTROL."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _hf_tokens(id_to_tok: dict[int, str], added: list[dict[str, Any]], n_vocab: int, spm: bool,
               unk: str | None) -> tuple[list[str], list[int]]:
    added_by_text = {a["content"]: a for a in added}
    tokens: list[str] = []
    types: list[TokenType] = []
    for i in range(n_vocab):
        tok = id_to_tok.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        a = added_by_text.get(tok)
        if a is not None and not (spm and tok == unk):
            if a.get("special") or _looks_special(tok):
                types.append(TokenType.CONTROL)
            else:
                tok = tok.replace(_SPM_SPACE, " ")  # llama.cpp pre-normalizes user-defined spaces
                types.append(TokenType.USER_DEFINED)
        elif spm and tok == unk:
            types.append(TokenType.UNKNOWN)  # as the sentencepiece path types <unk>
        elif spm and _BYTE_TOKEN.fullmatch(tok):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(tok)
    return tokens, [int(t) for t in types]


def _hf_merges(raw: list[Any], path: Path) -> list[str]:
    if not raw or isinstance(raw[0], str):
        return list(raw)
    if isinstance(raw[0], list) and len(raw[0]) == 2:
        # Pair form (tokenizers >= 0.20): a space inside a part is stored as U+0120,
        # the byte-level spelling of a space, as gguf-py does.
        return [" ".join(p.replace(" ", "\u0120") for p in pair) for pair in raw]
    raise InputError(f"{path}: unknown merges format in model.merges; re-save the tokenizer with tokenizers >= 0.20")


def _hf_special(tj: dict[str, Any], tc: dict[str, Any], cfg: dict[str, Any], added: list[dict[str, Any]],
                n_vocab: int, path: Path) -> tuple[dict[str, int], dict[str, bool]]:
    """Special ids and add_* flags as gguf-py's ``SpecialVocab`` finds them."""
    tc = dict(tc)
    kinds = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"]
    ids: dict[str, int] = {}
    add: dict[str, bool] = {}

    def content(entry: Any) -> str | None:
        entry = entry.get("content") if isinstance(entry, dict) else entry
        return entry if isinstance(entry, str) else None

    def set_id(kind: str, tid: Any) -> None:
        if not isinstance(tid, int) or isinstance(tid, bool) or kind in ids:
            return
        if tid < 0:
            raise InputError(f"{path.parent}: invalid {kind} token id {tid}; fix config.json/tokenizer_config.json")
        if tid < n_vocab:
            ids[kind] = tid

    bos, cls, eos, sep = (content(tc.get(f"{k}_token")) for k in ("bos", "cls", "eos", "sep"))
    if not bos and cls and tc:
        tc["bos_token"] = bos = cls
    if not eos and sep and tc:
        tc["eos_token"] = eos = sep
    post = tj.get("post_processor") or {}
    for proc in post.get("processors", [post]):
        if proc.get("type") == "RobertaProcessing":
            add["bos"] = add["eos"] = True
        elif proc.get("type") == "TemplateProcessing":
            single = proc.get("single") or []
            if len(single) <= 1:
                continue
            if first := single[0].get("SpecialToken", {}).get("id"):
                bos = bos if tc else first
                add["bos"] = first in (bos, cls)
            if last := single[-1].get("SpecialToken", {}).get("id"):
                if not tc:
                    eos = last
                elif last != eos:  # the template's last token wins; the old EOS becomes EOT (or EOM)
                    extra = "eot" if "eot" not in kinds else "eom" if "eom" not in kinds else None
                    if extra:
                        kinds.append(extra)
                        tc[f"{extra}_token"] = eos
                    tc["eos_token"] = eos = last
                add["eos"] = last == eos
    if tc:
        for kind in kinds:
            if isinstance(tc.get(f"add_{kind}_token"), bool):
                add[kind] = tc[f"add_{kind}_token"]
            want = content(tc.get(f"{kind}_token"))
            if want is not None:
                set_id(kind, next((a["id"] for a in added if a["content"] == want), None))
    for kind in kinds:
        tid = cfg.get(f"{kind}_token_id", (cfg.get("text_config") or {}).get(f"{kind}_token_id"))
        set_id(kind, tid)
    return {k: v for k, v in ids.items() if k in SPECIAL_KINDS}, add


def _hf_chat_template(hf_dir: Path, tc: dict[str, Any]) -> str | None:
    template = tc.get("chat_template")
    if template is None and (hf_dir / "chat_template.jinja").is_file():
        template = (hf_dir / "chat_template.jinja").read_text(encoding="utf-8")
    elif template is None and (hf_dir / "chat_template.json").is_file():
        template = _read_json(hf_dir / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: GGUF's main template is the "default" one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    return template if isinstance(template, str) else None


def _spm_prepends_space(tj: dict[str, Any]) -> bool:
    """Whether a byte-fallback tokenizer.json prepends "▁" to the text (Prepend or Metaspace)."""
    norm = tj.get("normalizer") or {}
    steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    if any(n.get("type") == "Prepend" and n.get("prepend") == _SPM_SPACE for n in steps):
        return True
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for p in steps:
        if p.get("type") == "Metaspace":
            legacy = "always" if p.get("add_prefix_space", True) else "never"
            if p.get("prepend_scheme", legacy) != "never":
                return True
    return False


def _detect_pre(tj: dict[str, Any], path: Path) -> str:
    """``tokenizer.ggml.pre`` by llama.cpp's chkhsh; else by the pre_tokenizer's regexes."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(json.dumps(tj))
    except Exception as err:  # tokenizers raises plain Exception subclasses
        raise InputError(f"{path}: the tokenizers library cannot load it ({err}); re-save the tokenizer") from None
    h = _pretok.chkhsh(tok.encode(_pretok.CHKTXT).ids)
    name = _pretok.CHKHSH.get(h) or _pretok.name_from_signature(
        _pretok.signature(tj.get("pre_tokenizer")), bool(tj["model"].get("ignore_merges")))
    if name is None:
        raise InputError(f"{path}: pre-tokenizer not recognised (llama.cpp chkhsh {h}); kvconvert supports "
                         f"{', '.join(_pretok.PRE_TOKENIZERS)}: use a model with one of those tokenizers")
    return name


def _scores_from_merges(tokens: list[str], types: list[int], merged: list[str]) -> list[float]:
    """SentencePiece-like scores: the earlier a merge creates a token, the higher its score.

    ``merged[r]`` is the token that merge rank ``r`` produces.

    (llama.cpp's own fallback writes -1000 for every token, which makes its
    score-driven merging left-to-right; ranks keep HF's merge order.) Tokens no
    merge creates score 0 like SentencePiece's control and byte pieces, or
    lowest if they are normal multi-character pieces BPE could never produce.
    """
    rank: dict[str, int] = {}
    for r, tok in enumerate(merged):
        rank.setdefault(tok, r)
    floor = -float(len(merged) + 1)
    return [-float(rank[t]) if t in rank else floor if ty == TokenType.NORMAL and len(t) > 1 else 0.0
            for t, ty in zip(tokens, types, strict=True)]


# --------------------------------------------------------------------------- GGUF -> spec

def spec_from_gguf(reader: "gguf.GGUFReader") -> TokenizerSpec:
    """The ``tokenizer.*`` metadata of an open GGUF file."""
    where = getattr(reader.data, "filename", None) or "GGUF file"

    def get(key: str, default: Any = None) -> Any:
        f = reader.get_field(key)
        if f is None:
            return default
        try:
            return f.contents()
        except UnicodeDecodeError:
            raise InputError(f"{where}: {key} is not valid UTF-8; the file is corrupt") from None

    model = get(Keys.Tokenizer.MODEL)
    if model is None:
        raise InputError(f"{where}: no tokenizer metadata (tokenizer.ggml.model); use a GGUF with a vocabulary")
    if model not in MODELS:
        raise InputError(f"{where}: tokenizer model {model!r} is not supported "
                         f"(kvconvert supports {', '.join(MODELS)})")
    pre = get(Keys.Tokenizer.PRE)
    if model == "gpt2" and pre not in _pretok.PRE_TOKENIZERS:
        raise InputError(f"{where}: pre-tokenizer {pre!r} is not supported "
                         f"(kvconvert supports {', '.join(_pretok.PRE_TOKENIZERS)})")
    tokens = get(Keys.Tokenizer.LIST) or []
    types = get(Keys.Tokenizer.TOKEN_TYPE) or [TokenType.NORMAL] * len(tokens)
    scores = get(Keys.Tokenizer.SCORES)
    if not tokens or len(types) != len(tokens) or (scores is not None and len(scores) != len(tokens)):
        raise InputError(f"{where}: tokenizer token list, types and scores disagree in length; the file is corrupt")
    merges = get(Keys.Tokenizer.MERGES) or []
    for key, values, kind in ((Keys.Tokenizer.LIST, tokens, str), (Keys.Tokenizer.MERGES, merges, str),
                              (Keys.Tokenizer.TOKEN_TYPE, types, int), (Keys.Tokenizer.SCORES, scores or [], float)):
        if not isinstance(values, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
            raise InputError(f"{where}: {key} must be a list of {kind.__name__} values; the file is corrupt")
    if scores is not None and not all(math.isfinite(x) for x in scores):
        raise InputError(f"{where}: {Keys.Tokenizer.SCORES} holds NaN or infinite values; the file is corrupt")
    spec = TokenizerSpec(model, pre, tokens, [int(t) for t in types], merges,
                         [float(s) for s in scores] if scores is not None else None)
    spec.source = str(where)
    for kind, key in _ID_KEYS.items():
        tid = get(key)
        if tid is not None and (isinstance(tid, bool) or not isinstance(tid, int) or not 0 <= tid < len(tokens)):
            raise InputError(f"{where}: {key} {tid!r} is outside the vocabulary (0..{len(tokens) - 1})")
        setattr(spec, f"{kind}_id", tid)
    spec.add_bos, spec.add_eos = get(Keys.Tokenizer.ADD_BOS), get(Keys.Tokenizer.ADD_EOS)
    spec.add_space_prefix = get(Keys.Tokenizer.ADD_PREFIX)
    spec.chat_template = get(Keys.Tokenizer.CHAT_TEMPLATE)
    for key, value, kind in ((Keys.Tokenizer.ADD_BOS, spec.add_bos, bool), (Keys.Tokenizer.ADD_EOS, spec.add_eos, bool),
                             (Keys.Tokenizer.ADD_PREFIX, spec.add_space_prefix, bool),
                             (Keys.Tokenizer.CHAT_TEMPLATE, spec.chat_template, str)):
        if value is not None and not isinstance(value, kind):
            raise InputError(f"{where}: {key} must be a {kind.__name__}, got {value!r}; the file is corrupt")
    arch = get(Keys.General.ARCHITECTURE)
    if arch:
        spec.model_max_length = get(Keys.LLM.CONTEXT_LENGTH.format(arch=arch))
    return spec


# --------------------------------------------------------------------------- spec -> GGUF

def add_to_gguf(writer: "gguf.GGUFWriter", spec: TokenizerSpec) -> None:
    """Write the ``tokenizer.*`` keys in the order and form llama.cpp's converter does."""
    _check_spec(spec)
    writer.add_tokenizer_model(spec.model)
    if spec.pre is not None:
        writer.add_tokenizer_pre(spec.pre)
    writer.add_token_list(spec.tokens)
    if spec.scores is not None:
        writer.add_token_scores(spec.scores)
    writer.add_token_types(spec.token_types)
    if spec.merges:
        writer.add_token_merges(spec.merges)
    for kind in SPECIAL_KINDS:
        if (tid := spec.special_id(kind)) is not None:
            getattr(writer, f"add_{kind}_token_id")(tid)
    if spec.add_bos is not None:
        writer.add_add_bos_token(spec.add_bos)
    if spec.add_eos is not None:
        writer.add_add_eos_token(spec.add_eos)
    if spec.chat_template is not None:
        writer.add_chat_template(spec.chat_template)
    if spec.add_space_prefix is not None:
        writer.add_add_space_prefix(spec.add_space_prefix)


def _check_spec(spec: TokenizerSpec) -> None:
    if spec.model not in MODELS:
        raise InputError(f"tokenizer model {spec.model!r} is not supported (kvconvert supports {', '.join(MODELS)})")
    if spec.model == "gpt2" and spec.pre not in _pretok.PRE_TOKENIZERS:
        raise InputError(f"pre-tokenizer {spec.pre!r} is not supported "
                         f"(kvconvert supports {', '.join(_pretok.PRE_TOKENIZERS)})")
    n = len(spec.tokens)
    if len(spec.token_types) != n or (spec.scores is not None and len(spec.scores) != n):
        raise InputError(f"tokenizer has {n} tokens but {len(spec.token_types)} types"
                         + (f" and {len(spec.scores)} scores" if spec.scores is not None else ""))
    for kind in SPECIAL_KINDS:
        tid = spec.special_id(kind)
        if tid is not None and not 0 <= tid < n:
            raise InputError(f"tokenizer {kind} token id {tid} is outside the vocabulary (0..{n - 1})")


# --------------------------------------------------------------------------- spec -> HF

def load_tokenizer(spec: TokenizerSpec) -> "tokenizers.Tokenizer":
    """An in-memory fast tokenizer that encodes text as llama.cpp does for ``spec``.

    Control and user-defined tokens written in the text are recognised (as
    llama.cpp's tokenize with ``parse_special=true``); ``encode(text)`` adds
    BOS/EOS as llama.cpp's ``add_special`` would.
    """
    from tokenizers import Tokenizer

    where = f"{spec.source}: " if spec.source else ""
    try:
        return Tokenizer.from_str(json.dumps(_tokenizer_json(spec)))
    except InputError as err:
        if where and not str(err).startswith(where):
            raise InputError(f"{where}{err}") from None
        raise
    except Exception as err:
        raise InputError(f"{where}tokenizer metadata is inconsistent ({err}); the source file is corrupt") from None


def write_hf(spec: TokenizerSpec, out_dir: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``out_dir``.

    ``tokenizers.Tokenizer.from_file`` on it tokenizes exactly like llama.cpp
    does with ``spec``. transformers' ``AutoTokenizer`` loads it too, but may
    swap in a model-specific class chosen by config.json's ``model_type``
    (transformers 5 rebuilds Qwen2's pre-tokenizer and adds its NFC
    normalizer, as for the original checkpoint). Unused ``[PAD<id>]`` fillers
    are left out, as in the original HF files: the model's config.json
    ``vocab_size`` accounts for them.
    """
    out_dir = Path(out_dir)
    try:
        tj = _tokenizer_json(spec)
    except InputError as err:
        if spec.source and not str(err).startswith(f"{spec.source}: "):
            raise InputError(f"{spec.source}: {err}") from None
        raise
    named = {k: spec.tokens[i] for k in ("bos", "eos", "unk", "sep", "pad", "mask")
             if (i := spec.special_id(k)) is not None}
    added_meta = {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word",
                                                    "special")} for a in tj["added_tokens"]}
    config: dict[str, Any] = {}
    if spec.add_bos is not None:
        config["add_bos_token"] = spec.add_bos
    if spec.add_eos is not None:
        config["add_eos_token"] = spec.add_eos
    if spec.add_space_prefix is not None:
        config["add_prefix_space"] = spec.add_space_prefix
    config["added_tokens_decoder"] = added_meta
    config.update({f"{k}_token": v for k, v in named.items()})
    if spec.chat_template is not None:
        config["chat_template"] = spec.chat_template
    config["clean_up_tokenization_spaces"] = False
    if spec.model_max_length:
        config["model_max_length"] = spec.model_max_length
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # the generic class: tokenizer.json as written

    def entry(text: str) -> dict[str, Any]:
        return {"content": text, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    extra = [a["content"] for a in tj["added_tokens"] if a["special"] and a["content"] not in named.values()]
    special_map: dict[str, Any] = {f"{k}_token": entry(v) for k, v in named.items()}
    if extra:
        special_map["additional_special_tokens"] = [entry(t) for t in extra]

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in (("tokenizer.json", tj), ("tokenizer_config.json", config),
                           ("special_tokens_map.json", special_map)):
            with atomic_path(out_dir / name) as tmp:
                tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as err:
        raise OutputError(f"cannot write the tokenizer files in {out_dir}: {err.strerror or err}; "
                          "choose a writable output directory") from None


def _tokenizer_json(spec: TokenizerSpec) -> dict[str, Any]:
    """The tokenizer.json that reproduces llama.cpp's tokenization of ``spec``."""
    _check_spec(spec)
    spm = spec.model == "llama"
    vocab: dict[str, int] = {}
    added: list[dict[str, Any]] = []
    for i, (tok, ty) in enumerate(zip(spec.tokens, spec.token_types, strict=True)):
        if ty == TokenType.UNUSED and tok == f"[PAD{i}]":
            continue
        vocab[tok] = i  # on duplicates the last id wins, as in llama.cpp's token_to_id
        # llama.cpp's special-token cache: what tokenize(parse_special=true) matches in raw text
        if ty in (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN):
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": ty != TokenType.USER_DEFINED})
    if spm:
        merges = _merges_from_scores(spec)
    else:
        merges = []
        for m in spec.merges:
            cut = m.find(" ", 1)  # llama.cpp splits at the first space after the first character
            left, right = m[:cut], m[cut + 1:]
            # checked here: tokenizers panics (PanicException is no Exception) on merges outside the vocab
            if cut < 0 or left not in vocab or right not in vocab or left + right not in vocab:
                raise InputError(f"tokenizer merge {m!r} does not join two tokens into a token; "
                                 "the source file is corrupt")
            merges.append([left, right])
    unk = spec.tokens[spec.unk_id] if spm and spec.unk_id is not None else None
    model = {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": spm, "byte_fallback": spm,
             "ignore_merges": not spm and _pretok.PRE_TOKENIZERS[spec.pre].ignore_merges,
             "vocab": vocab, "merges": merges}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    if spm:
        prefix = spec.effective_add_space_prefix()
        steps = [{"type": "Prepend", "prepend": _SPM_SPACE}] if prefix else []
        normalizer = {"type": "Sequence", "normalizers": [
            *steps, {"type": "Replace", "pattern": {"String": " "}, "content": _SPM_SPACE}]}
        pre_tokenizer = None
        decoder = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": _SPM_SPACE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            *([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if prefix else [])]}
    else:
        normalizer, pre_tokenizer, decoder = None, _pretok.pre_tokenizer_json(spec.pre), byte_level
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
            "post_processor": _post_processor(spec, None if spm else byte_level), "decoder": decoder,
            "model": model}


def _post_processor(spec: TokenizerSpec, default: dict[str, Any] | None) -> dict[str, Any] | None:
    """BOS/EOS insertion as llama.cpp's add_special does it."""
    add_bos, add_eos = spec.effective_add_bos(), bool(spec.add_eos)
    if add_bos and spec.bos_id is None or add_eos and spec.eos_id is None:
        raise InputError("tokenizer asks to add BOS/EOS but has no BOS/EOS token id; the source file is corrupt")
    if not (add_bos or add_eos):
        return default
    head = [spec.tokens[spec.bos_id]] if add_bos else []  # type: ignore[index]
    tail = [spec.tokens[spec.eos_id]] if add_eos else []  # type: ignore[index]

    def seq(name: str) -> list[dict[str, Any]]:
        return ([{"SpecialToken": {"id": t, "type_id": 0}} for t in head] + [{"Sequence": {"id": name, "type_id": 0}}]
                + [{"SpecialToken": {"id": t, "type_id": 0}} for t in tail])

    specials = {spec.tokens[i]: {"id": spec.tokens[i], "ids": [i], "tokens": [spec.tokens[i]]}
                for i in ([spec.bos_id] if add_bos else []) + ([spec.eos_id] if add_eos else [])}
    return {"type": "TemplateProcessing", "single": seq("A"), "pair": seq("A") + seq("B"),
            "special_tokens": specials}


def _merges_from_scores(spec: TokenizerSpec) -> list[list[str]]:
    """BPE merges equivalent to llama.cpp's score-driven SentencePiece merging.

    llama.cpp joins the adjacent pair whose concatenation is the best-scored
    token; a BPE whose merges are every (left, right) split of every token,
    ranked by that token's score, does the same.
    """
    scores = spec.scores or [0.0] * len(spec.tokens)
    pieces = {t: i for i, t in enumerate(spec.tokens) if spec.token_types[i] == TokenType.NORMAL}
    ranked: list[tuple[float, int, int, str, str]] = []
    for tok, i in pieces.items():
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in pieces and right in pieces:
                ranked.append((-scores[i], i, cut, left, right))
    ranked.sort()
    return [[left, right] for _, _, _, left, right in ranked]
