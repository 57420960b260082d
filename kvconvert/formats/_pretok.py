"""Pre-tokenizer tables shared by the HF <-> GGUF tokenizer bridge.

GGUF names a byte-level BPE pre-tokenizer (``tokenizer.ggml.pre``) instead of
storing its regex; llama.cpp maps each name to a fixed list of split regexes.
This module holds, for the names kvconvert supports, the facts needed both ways:

* ``CHKTXT``/``CHKHSH``: llama.cpp's ``convert_hf_to_gguf.py``
  (``get_vocab_base_pre``) identifies a Hugging Face tokenizer by the sha256 of
  ``str(token_ids)`` of a fixed test string; the string and the hashes below are
  copied from that file.
* ``PRE_TOKENIZERS``: the regexes llama.cpp applies for each name, copied from
  ``llm_tokenizer_bpe``'s constructor in llama.cpp's ``src/llama-vocab.cpp``,
  and whether the name implies ``ignore_merges`` / ``add_bos``
  (``llama_vocab::impl::load`` in the same file).
* ``signature``: a canonical form of a tokenizer.json ``pre_tokenizer`` so an
  unknown vocabulary with a known pre-tokenizer can still be named.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

# Test string of get_vocab_base_pre (llama.cpp convert_hf_to_gguf.py).
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n"
    "\U0001F680 (normal) \U0001F636\u200d\U0001F32B\uFE0F (multiple emojis concatenated) \u2705 "
    "\U0001F999\U0001F999 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "\u1780\u17B6\u1793\u17CB\u178F\u17C2\u1796\u17B7\u179F\u17C1\u179F\u17A2\u17B6\u1785\U0001F601 "
    "?\u6211\u60F3\u5728apple\u5DE5\u4F5C1314151\u5929\uFF5E ------======= "
    "\u043D\u0435\u0449\u043E \u043D\u0430 \u0411\u044A\u043B\u0433\u0430\u0440\u0441\u043A\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# chkhsh -> tokenizer.ggml.pre, for the pre-tokenizers kvconvert can rebuild
# (llama.cpp convert_hf_to_gguf.py, get_vocab_base_pre).
CHKHSH: dict[str, str] = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5-7B
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM-135M
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai gpt2
}


def chkhsh(token_ids: list[int]) -> str:
    """llama.cpp's pre-tokenizer fingerprint of the ids of ``CHKTXT``."""
    return hashlib.sha256(str(list(token_ids)).encode()).hexdigest()


# Regexes as llama.cpp runs them (src/llama-vocab.cpp). The (?i:...) groups of
# the Hugging Face originals are spelled out as [sS] etc. there, so
# Oniguruma's Unicode case folding cannot match more than llama.cpp does.
GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
QWEN2_RE = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_RE = (
    _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DIGIT_RE = r"\p{N}"

# Spellings found in Hugging Face tokenizer.json files (or implied by their
# components) that split text exactly like the llama.cpp regex they map to.
_EQUIVALENT_RE = {
    # GPT-2's own regex; the trailing \s+ only claims single whitespace
    # characters that llama.cpp leaves unmatched and splits off all the same.
    GPT2_RE + r"|\s+": GPT2_RE,
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": QWEN2_RE,
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": LLAMA3_RE,
}


@dataclass(frozen=True)
class PreTokenizer:
    """What a ``tokenizer.ggml.pre`` name means to llama.cpp's BPE tokenizer."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False  # whole pre-token looked up in the vocab before merging
    add_bos: bool = False  # llama.cpp's default when the GGUF has no add_bos_token key


PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "gpt-2": PreTokenizer((GPT2_RE,)),
    "smollm": PreTokenizer((DIGIT_RE, GPT2_RE)),
    "qwen2": PreTokenizer((QWEN2_RE,)),
    "llama-bpe": PreTokenizer((LLAMA3_RE,), ignore_merges=True, add_bos=True),
}


def pre_tokenizer_json(name: str) -> dict[str, Any]:
    """The tokenizer.json ``pre_tokenizer`` that splits like llama.cpp's ``name``."""
    steps: list[dict[str, Any]] = [
        {"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated", "invert": False}
        for rx in PRE_TOKENIZERS[name].regexes
    ]
    steps.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False})
    return {"type": "Sequence", "pretokenizers": steps}


def signature(pre_tokenizer: dict[str, Any] | None) -> tuple[str, ...] | None:
    """Canonical split regexes (then ``"<bytelevel>"``) of a tokenizer.json pre_tokenizer.

    Returns None for any component whose splitting is not understood here.
    """
    if pre_tokenizer is None:
        return None
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        out: list[str] = []
        for step in pre_tokenizer.get("pretokenizers", []):
            sig = signature(step)
            if sig is None:
                return None
            out.extend(sig)
        return tuple(out)
    if kind == "Split":
        pattern = pre_tokenizer.get("pattern", {})
        if "Regex" not in pattern or pre_tokenizer.get("invert") or pre_tokenizer.get("behavior") != "Isolated":
            return None
        rx = pattern["Regex"]
        return (_EQUIVALENT_RE.get(rx, rx),)
    if kind == "Digits":
        return (DIGIT_RE,) if pre_tokenizer.get("individual_digits") else None
    if kind == "ByteLevel":
        if pre_tokenizer.get("add_prefix_space"):
            return None
        return (GPT2_RE, "<bytelevel>") if pre_tokenizer.get("use_regex", True) else ("<bytelevel>",)
    return None


def name_from_signature(sig: tuple[str, ...] | None, ignore_merges: bool) -> str | None:
    """The supported pre-tokenizer name whose llama.cpp splitting equals ``sig``."""
    if sig is None:
        return None
    for name, pre in PRE_TOKENIZERS.items():
        if sig == (*pre.regexes, "<bytelevel>") and ignore_merges == pre.ignore_merges:
            return name
    return None
