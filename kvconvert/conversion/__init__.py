"""From a model to a rotation-ready GGUF: calibrate, search, transforms and patching, the writer,
the check of the written file, and the pipeline that orders them."""
