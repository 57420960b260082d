"""The package version (one place: the facade, the GGUF writer and `--version` read it)."""

__version__ = "0.1.0"
