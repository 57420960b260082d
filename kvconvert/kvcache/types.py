"""The cache-type registry: every KV-cache type kvconvert knows, in one place.

A cache side (K or V) is one of
  * a standard type (``STANDARD``): the block formats llama.cpp also has — their
    native id (kvc.h), stored bits per value with the block scales counted, and
    llama.cpp's GGML type id, so a comparison with llama.cpp names the same cache;
  * TurboQuant (family ``TQ``): per-layer ``turboquant.KConfig``s, written
    ``tq4``, ``tq3``, ``tq:split=32,hi=8,lo=3,qjl=hi`` (bits depend on the config);
  * ``auto``: what the GGUF's kvconvert metadata says, else f16.

``CacheSpec.parse`` turns what a user typed into one of these once, at the edge
(CLI, server, library calls); everything after it asks the spec, not the string.
Adding a standard type is one line in ``STANDARD`` (plus its kernel in C).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base.errors import InputError


@dataclass(frozen=True)
class CacheType:
    """A standard (block-quantized or float) cache type."""

    name: str
    native_id: int  # kvc.h's KVC_TYPE_* as the runtime numbers it
    bits: float  # stored bits per value, block scales included
    ggml_type: int  # llama.cpp's GGML type id for the same cache (ggml.h enum ggml_type)
    about: str


# Block layouts as ggml defines them (ggml-common.h: block_q8_0 = fp16 d + 32 int8,
# block_q4_0 = fp16 d + 16 bytes of 4-bit values): 8.5 and 4.5 bits per value.
STANDARD: dict[str, CacheType] = {t.name: t for t in (
    CacheType("f32", 0, 32.0, 0, "32-bit float"),
    CacheType("f16", 1, 16.0, 1, "16-bit float (the reference cache)"),
    CacheType("q8_0", 8, 8.5, 8, "8-bit blocks of 32 with an fp16 scale (llama.cpp's q8_0)"),
    CacheType("q4_0", 2, 4.5, 2, "4-bit blocks of 32 with an fp16 scale (llama.cpp's q4_0)"),
)}

STANDARD_BITS = {name: t.bits for name, t in STANDARD.items()}

TQ = "tq"  # the TurboQuant family's name in profiles and kvconvert.* metadata
KVC_CACHE_TQ = 64  # kvc.h's id of a TurboQuant cache
DEFAULT_SEED = 0x6B7663  # the rotation seed ("kvc") when a file or profile gives none
AUTO = "auto"

TYPES_HELP = (f"{', '.join(STANDARD)}, or TurboQuant: tq<bits> (e.g. tq4) or tq:split=N,hi=B,lo=B[,qjl=hi|lo|both]"
              "[,scale=ls|proj|norm][,s8=BASE][,code=trellis] (s8: 8-bit scales on the grid 2^((e + BASE)/32); "
              "code=trellis: bitshift-trellis codes of the same bits, CPU only)")


def is_tq(name: str) -> bool:
    """A TurboQuant spec ("tq4", "tq:...") or the family name "tq"."""
    return str(name).lower().startswith(TQ)


def standard_bits(name: str) -> float:
    """Bits per value of a standard type; InputError for anything else."""
    t = STANDARD.get(name)
    if t is None:
        raise InputError(f"unknown cache type {name!r} (standard types: {', '.join(STANDARD)})")
    return t.bits


class CacheSpec(str):
    """One cache side as given ("auto", "q8_0", "tq4", "tq:split=16,hi=6,lo=4"), checked once.

    A ``str`` (so it prints, compares and serialises as the user wrote it) that also knows
    its kind: ``kind`` is "auto", "standard" or "tq"; ``type`` the CacheType of a standard
    spec; ``native_id`` the runtime's id (None for auto). TurboQuant syntax is checked here;
    whether a split fits the head size is checked where the model is known."""

    kind: str
    type: CacheType | None

    def __new__(cls, text: str) -> "CacheSpec":
        if isinstance(text, CacheSpec):
            return text
        s = str(text).strip()
        self = super().__new__(cls, s)
        if s == AUTO:
            self.kind, self.type = AUTO, None
        elif s in STANDARD:
            self.kind, self.type = "standard", STANDARD[s]
        elif s == TQ:  # the family: per-layer configs come separately (a file's metadata, a profile)
            self.kind, self.type = TQ, None
        elif is_tq(s):
            from .turboquant import KConfig

            try:
                KConfig.parse(s, 256)  # syntax and value ranges; 256: the largest head size supported
            except ValueError as e:
                raise InputError(str(e)) from None
            self.kind, self.type = TQ, None
        else:
            raise InputError(f"unknown cache type {s!r} (choose auto, {TYPES_HELP})")
        return self

    @classmethod
    def parse(cls, text: str) -> "CacheSpec":
        return cls(text)

    @property
    def native_id(self) -> int | None:
        return None if self.kind == AUTO else KVC_CACHE_TQ if self.kind == TQ else self.type.native_id

    @property
    def ggml_type(self) -> int | None:
        """llama.cpp's id for the same cache, None if llama.cpp has no such cache."""
        return self.type.ggml_type if self.type is not None else None
