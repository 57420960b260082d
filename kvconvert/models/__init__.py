"""Model descriptions: typed config, architectures, RoPE, weight sources (HF, GGUF, Hub) and the
numpy reference forward. Stands on ``base``, ``formats`` and ``kvcache``."""
