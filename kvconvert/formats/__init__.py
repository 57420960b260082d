"""File formats: GGUF and safetensors I/O, the GGUF key names, the tokenizer.

Stands on ``base`` only."""
