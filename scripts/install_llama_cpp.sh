#!/usr/bin/env bash
# Install llama.cpp's Python package (the independent oracle for GGUF loading,
# perplexity and speed). The wheel is built once from the registry's source
# with AVX2/AVX-512 and without AMX (AMX traps on these machines; never
# -march=native), then cached in ~/.cache/kvconvert/wheels (~15 min on 2 cores).
set -euo pipefail
py=${PYTHON:-python3}
version=0.3.36
wheels=${KVCONVERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvconvert}/wheels

if "$py" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$version')" 2>/dev/null; then
  exit 0
fi
mkdir -p "$wheels"
whl=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$whl" ]; then
  echo "building llama-cpp-python $version (once; cached in $wheels) ..." >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    "$py" -m pip wheel --quiet --no-deps "llama-cpp-python==$version" -w "$wheels"
  whl=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl | head -n1)
fi
"$py" -m pip install --quiet "$whl" "diskcache>=5.6" "jinja2>=2.11" "typing-extensions>=4.5"
