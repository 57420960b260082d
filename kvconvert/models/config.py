"""Typed model configuration, built from a Hugging Face ``config.json``.

``ModelArgs`` is the one description of a model that every stage passes
around (converter, reference model, runtime, calibration). ``from_dict`` keeps
the keys it knows and ignores the rest, like mlx-lm's ``BaseModelArgs``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base import validate as V
from ..base.errors import InputError


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. Only ``llama3`` (Llama 3.1+) changes frequencies."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    SUPPORTED = ("default", "llama3")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "RopeScaling | None":
        if not d:
            return None
        if not isinstance(d, dict):
            raise InputError(f"rope_scaling must be an object, got {V._show(d)}")
        rope_type = d.get("rope_type", d.get("type", "default"))
        if rope_type not in cls.SUPPORTED:
            raise InputError(
                f"RoPE scaling type {rope_type!r} is not supported (supported: {', '.join(cls.SUPPORTED)})"
            )
        if rope_type == "default":
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known and k != "rope_type"}, rope_type=rope_type)

    def __post_init__(self) -> None:
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            V.finite_float(None, f"rope_scaling.{name}", getattr(self, name), 0.0, 1e6, lo_open=True)
        V.int_in(None, "rope_scaling.original_max_position_embeddings", self.original_max_position_embeddings,
                 1, V.MAX_CTX)
        if self.rope_type == "llama3" and not self.low_freq_factor < self.high_freq_factor:
            raise InputError(f"rope_scaling: low_freq_factor ({self.low_freq_factor}) must be below "
                             f"high_freq_factor ({self.high_freq_factor})")


LAYER_TYPES = ("full_attention", "sliding_attention")
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}  # HF name -> the block's activation


@dataclass(frozen=True)
class ModelArgs:
    architecture: str  # HF class name, e.g. "Qwen2ForCausalLM"
    model_type: str  # HF model_type, e.g. "qwen2"
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float = 10000.0
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v (and for llama also o) projection biases
    rope_scaling: RopeScaling | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # attention variants (models/arch/base.py reads them; docs/design.md §1 "Architectures")
    sliding_window: int = 0  # 0: none; else a query sees the keys at distance < sliding_window
    layer_types: tuple[str, ...] | None = None  # per layer "sliding_attention" / "full_attention"; None: all
    # layers slide when sliding_window is set
    rope_local_theta: float = 0.0  # RoPE base of sliding layers (Gemma 3); 0: rope_theta
    query_pre_attn_scalar: float = 0.0  # scores scaled by its -1/2 power (Gemma); 0: head_dim
    hidden_act: str = "silu"  # MLP gate activation: silu, or gelu_pytorch_tanh (Gemma)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # upper bounds of the dimensions (far above any supported model; bound every allocation by them)
    LIMITS = {"hidden_size": V.MAX_HIDDEN, "intermediate_size": V.MAX_FFN, "num_hidden_layers": V.MAX_LAYERS,
              "num_attention_heads": V.MAX_HEADS, "num_key_value_heads": V.MAX_HEADS, "vocab_size": V.MAX_VOCAB,
              "head_dim": V.MAX_HEAD_DIM}

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "vocab_size"):
            V.int_in(None, name, getattr(self, name), 1, self.LIMITS[name])
        V.int_in(None, "head_dim", self.head_dim, 0, V.MAX_HEAD_DIM)
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // max(self.num_attention_heads, 1))
        if self.head_dim <= 0:
            raise InputError(f"head_dim must be a positive integer, got {self.head_dim!r}")
        object.__setattr__(self, "rms_norm_eps", V.finite_float(None, "rms_norm_eps", self.rms_norm_eps, 0.0, 0.5,
                                                                lo_open=True))
        object.__setattr__(self, "rope_theta", V.finite_float(None, "rope_theta", self.rope_theta, 1.0, 1e12,
                                                              lo_open=True))
        V.int_in(None, "max_position_embeddings", self.max_position_embeddings, 1, V.MAX_CTX)
        V.boolean(None, "tie_word_embeddings", self.tie_word_embeddings)
        V.boolean(None, "attention_bias", self.attention_bias)
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(self, name) is not None:
                V.int_in(None, name, getattr(self, name), 0, V.MAX_VOCAB)
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise InputError(f"rope_scaling must be an object, got {V._show(self.rope_scaling)}")
        if not isinstance(self.architecture, str) or not isinstance(self.model_type, str):
            raise InputError("architectures[0] and model_type must be strings")
        if self.num_attention_heads % self.num_key_value_heads:
            raise InputError(
                f"model config: num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise InputError(f"model config: head_dim must be even for RoPE, got {self.head_dim}")
        V.int_in(None, "sliding_window", self.sliding_window, 0, V.MAX_CTX)
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
            if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= set(LAYER_TYPES):
                raise InputError(f"model config: layer_types must list {self.num_hidden_layers} of "
                                 f"{', '.join(LAYER_TYPES)}")
        for name in ("rope_local_theta", "query_pre_attn_scalar"):
            v = getattr(self, name)
            object.__setattr__(self, name, 0.0 if v == 0 else V.finite_float(None, name, v, 0.0, 1e12, lo_open=True))
        if self.hidden_act not in ACTIVATIONS:
            raise InputError(f"model config: activation {self.hidden_act!r} is not supported "
                             f"(supported: {', '.join(ACTIVATIONS)})")

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (GQA group size)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelArgs":
        archs = d.get("architectures") or []
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise InputError(f"architectures must be a list of strings, got {V._show(archs)}")
        architecture = archs[0] if archs else ""
        known = {f.name for f in dataclasses.fields(cls)} - {"architecture", "rope_scaling", "extra"}
        kw = {k: d[k] for k in known if k in d and d[k] is not None}
        rope_params = d.get("rope_parameters")  # transformers >= 5 nests rope settings here
        rope = d.get("rope_scaling")
        if isinstance(rope_params, dict) and isinstance(rope_params.get("full_attention"), dict):
            # per layer type (Gemma 3 in transformers >= 5): the sliding layers have their own base
            local = rope_params.get("sliding_attention") or {}
            if "rope_theta" in local:
                kw.setdefault("rope_local_theta", local["rope_theta"])
            rope_params = rope_params["full_attention"]
        if isinstance(rope_params, dict):
            if "rope_theta" in rope_params:
                kw.setdefault("rope_theta", rope_params["rope_theta"])
            rope = rope or rope_params
        if isinstance(kw.get("eos_token_id"), list):
            if not kw["eos_token_id"]:
                raise InputError("eos_token_id is an empty list")
            kw["eos_token_id"] = kw["eos_token_id"][0]
        if "model_type" in d and not isinstance(d["model_type"], str):
            raise InputError(f"model_type must be a string, got {V._show(d['model_type'])}")
        kw.setdefault("num_key_value_heads", d.get("num_attention_heads"))
        if d.get("model_type") == "qwen2":
            kw.setdefault("attention_bias", True)
        if "rope_local_base_freq" in d:  # Gemma 3 in transformers 4.x
            kw.setdefault("rope_local_theta", d["rope_local_base_freq"])
        act = d.get("hidden_activation", d.get("hidden_act"))
        if act is not None:
            kw["hidden_act"] = act
        if "use_sliding_window" in d and not d["use_sliding_window"]:  # Qwen: the window is switched off
            kw.pop("sliding_window", None)
            kw.pop("layer_types", None)
        if kw.get("layer_types") is not None and not isinstance(kw["layer_types"], (list, tuple)):
            raise InputError(f"layer_types must be a list, got {V._show(kw['layer_types'])}")
        if (kw.get("layer_types") is not None and kw.get("sliding_window") is None
                and "sliding_attention" not in kw["layer_types"]):
            kw.pop("layer_types")  # all full: the default
        missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads", "vocab_size", "rms_norm_eps") if k not in kw]
        if missing:
            raise InputError(f"model config: missing {', '.join(missing)}")
        return cls(architecture=architecture, rope_scaling=RopeScaling.from_dict(rope), extra=dict(d), **kw)

    @classmethod
    def from_file(cls, path: Path) -> "ModelArgs":
        if not Path(path).exists():
            raise InputError(f"{path}: not found; a Hugging Face model directory needs a config.json")
        V.regular_file(path, "config.json file")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except OSError as e:
            raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise InputError(f"{path}: not valid JSON ({e}); re-download or fix the file") from None
        if not isinstance(d, dict):
            raise InputError(f"{path}: expected a JSON object")
        try:
            return cls.from_dict(d)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
        except (TypeError, ValueError, OverflowError) as e:
            raise InputError(f"{path}: invalid value ({e})") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json a Hugging Face ``transformers`` model of this shape expects."""
        d: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        }
        if self.model_type == "llama":
            d["attention_bias"] = self.attention_bias
            d["mlp_bias"] = False
        if self.model_type in ("qwen2", "qwen3"):
            d["use_sliding_window"] = False
        if self.model_type in ("qwen3", "mistral", "gemma3_text"):
            d["attention_bias"] = self.attention_bias
        if self.sliding_window or self.model_type == "mistral":
            d["sliding_window"] = self.sliding_window or None
        if self.layer_types is not None:
            d["layer_types"] = list(self.layer_types)
        if self.hidden_act != "silu":
            d["hidden_act"] = d["hidden_activation"] = self.hidden_act
        if self.query_pre_attn_scalar:
            q = self.query_pre_attn_scalar
            d["query_pre_attn_scalar"] = int(q) if float(q).is_integer() else q  # transformers wants an int
        if self.rope_local_theta:
            d["rope_local_base_freq"] = self.rope_local_theta  # transformers 4.x; 5.x reads rope_parameters
            d["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": self.rope_theta},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": self.rope_local_theta}}
        if self.rope_scaling is not None:
            d["rope_scaling"] = {k: v for k, v in dataclasses.asdict(self.rope_scaling).items()}
        if self.bos_token_id is not None:
            d["bos_token_id"] = self.bos_token_id
        if self.eos_token_id is not None:
            d["eos_token_id"] = self.eos_token_id
        return d
