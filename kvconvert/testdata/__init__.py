"""The real test models and texts (fetched from the package registries and cached): used by the
tests, the benchmarks, `kvconvert fetch` and `kvconvert demo`; nothing in the core imports it."""
