"""Tiny random Qwen2 / Llama / Qwen3 / Mistral / Gemma 3 checkpoints in Hugging Face format, for tests.

Random weights test plumbing and exactness, never quality. K gets structure
that calibration can find: a large k_proj bias (Qwen2) and a few outlier rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from kvconvert.models.arch import from_hf
from kvconvert.models.config import ModelArgs
from kvconvert.models.source import tensor_specs
from kvconvert.formats.safetensors_io import write_streaming

CORPUS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune,",
    "must be in want of a wife. However little known the feelings or views of such a man may be",
    "def forward(self, x):\n    return self.proj(x) + 1  # 42 tokens, 3.14 and café",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! 1234567890",
]


@dataclass(frozen=True)
class TinySpec:
    arch: str = "qwen2"  # "qwen2", "llama", "qwen3", "mistral" or "gemma3"
    head_dim: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    n_layers: int = 2
    intermediate: int = 384
    vocab: int = 384
    tied: bool = False
    attention_bias: bool = False  # llama only (qwen2 always has q/k/v biases)
    rope_theta: float = 10000.0
    llama3_rope: bool = False
    dtype: str = "f32"  # safetensors dtype: f32, f16, bf16
    seed: int = 0
    sliding_window: int = 0  # mistral, gemma3 (its every 6th layer is global)


HF_CLASS = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
            "mistral": "MistralForCausalLM", "gemma3": "Gemma3ForCausalLM"}


def make_tokenizer(vocab: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - 2, special_tokens=["<|endoftext|>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def make_tiny_model(out: Path, spec: TinySpec = TinySpec()) -> Path:
    """Write config.json, tokenizer files and model.safetensors into ``out``."""
    rng = np.random.default_rng(spec.seed)
    hidden = spec.n_heads * spec.head_dim
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(spec.vocab)
    vocab = tok.get_vocab_size()
    config = {
        "architectures": [HF_CLASS[spec.arch]],
        "model_type": "gemma3_text" if spec.arch == "gemma3" else spec.arch,
        "hidden_size": hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab,
        "rms_norm_eps": 1e-6,
        "rope_theta": spec.rope_theta,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": spec.tied,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 0,
    }
    if spec.arch == "llama":
        config["attention_bias"] = spec.attention_bias
        config["mlp_bias"] = False
        if spec.llama3_rope:
            config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    elif spec.arch in ("qwen2", "qwen3"):
        config["use_sliding_window"] = False
        config["attention_bias"] = spec.arch == "qwen2" or spec.attention_bias
    elif spec.arch == "mistral":
        config["sliding_window"] = spec.sliding_window or None
    elif spec.arch == "gemma3":
        from kvconvert.models.arch.gemma3 import layer_types

        config.update(hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=spec.head_dim,
                      sliding_window=spec.sliding_window, layer_types=list(layer_types(spec.n_layers)),
                      rope_local_base_freq=10000.0, attention_bias=False, final_logit_softcapping=None,
                      attn_logit_softcapping=None,
                      rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": spec.rope_theta},
                                       "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|endoftext|>", "add_bos_token": False,
        "model_max_length": 2048, "tokenizer_class": "PreTrainedTokenizerFast",
    }))
    assert vocab <= spec.vocab

    args = ModelArgs.from_dict(config)
    specs = [s for s in tensor_specs(from_hf(args.architecture), args) if s.hf != "rope_freqs"]
    tensors = {s.hf: _init(rng, s.hf, s.shape, spec) - s.norm_offset for s in specs}
    write_streaming(out / "model.safetensors", [(s.hf, s.shape) for s in specs], spec.dtype,
                    iter(tensors.items()))
    return out


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...], spec: TinySpec) -> np.ndarray:
    if name.endswith("norm.weight"):
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    scale = 1.0 / np.sqrt(shape[-1]) if len(shape) == 2 else 0.02
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    if "k_proj" in name:
        # Qwen2.5-like K structure: a large mean (bias) and outlier channels in each head.
        rows = np.arange(shape[0]) % spec.head_dim
        outlier = (rows == 3) | (rows == spec.head_dim // 2 + 3)
        if name.endswith(".bias"):
            x += np.where(outlier, 4.0, 0.5 * rng.standard_normal(shape[0])).astype(np.float32)
        else:
            x[outlier] *= 6.0
    elif name.endswith(".bias"):
        x *= 10
    if "embed_tokens" in name or "lm_head" in name:
        x = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    return x
