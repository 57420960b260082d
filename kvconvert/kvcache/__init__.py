"""KV-cache formats: the TurboQuant twin and its codebooks, the kvconvert.* cache metadata,
and the mapping to llama.cpp's cache types. Stands on ``base`` and ``formats``."""
