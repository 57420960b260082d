"""The native engine binding (cffi) and what runs on it: generation, evaluation, benchmarks, metrics."""
