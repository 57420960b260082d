"""Mistral: Llama with a sliding attention window on every layer (``sliding_window``
in config.json; none in the later releases). GGUF arch ``llama`` like llama.cpp's
converter writes it, plus ``llama.attention.sliding_window``, which llama.cpp
ignores for this arch (it attends to the whole context).
"""

from __future__ import annotations

from .llama import Llama


class Mistral(Llama):
    hf_architecture = "MistralForCausalLM"
    model_type = "mistral"


ARCH = Mistral()
