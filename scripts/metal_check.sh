#!/usr/bin/env bash
# The first run of the Metal backend on a Mac (issue 20), in one command:
#   bash scripts/metal_check.sh
# 1. installs kvconvert (the build compiles native/src/metal/backend_metal.m and links Metal),
# 2. runs tests/test_metal.py with the Mac-only tests on: the MSL through Xcode's `metal`
#    compiler, and Metal-vs-CPU logits on the tiny models (KVC_TEST_METAL_DEVICE=1),
# 3. prints decode/prefill tables on SmolLM2-135M for the CPU and Metal backends (f16 cache
#    and the shipped balanced TurboQuant profile) and, if `llama-bench` is on PATH (a
#    llama.cpp build, Metal by default on macOS), llama.cpp's numbers on the same f16 file.
# Nothing here has run yet: please report what it prints (docs/design.md §9).
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
[ "$(uname)" = Darwin ] || { echo "metal_check.sh: macOS only" >&2; exit 2; }

"$py" -m pip install --quiet -e '.[test]' || exit 1
KVC_TEST_METAL_DEVICE=1 "$py" -m pytest -q -p no:cacheprovider tests/test_metal.py tests/test_kernels.py
status=$?

out=${KVC_METAL_CHECK_DIR:-$(mktemp -d)}
model=$(kvconvert fetch smollm2-135m | sed -n 's/^smollm2-135m: //p')
kvconvert convert "$model" -o "$out/smollm2-f16.gguf" --profile none --weights f16 || exit 1
kvconvert convert "$model" -o "$out/smollm2-balanced.gguf" --profile smollm2-135m-balanced --weights f16 --no-check || exit 1
for backend in cpu metal; do
  echo "== $backend, f16 cache"
  KVC_BACKEND=$backend kvconvert bench "$out/smollm2-f16.gguf" --depths 0,512,4096 --ctk f16 --ctv f16 || status=1
  echo "== $backend, TurboQuant (balanced profile)"
  KVC_BACKEND=$backend kvconvert bench "$out/smollm2-balanced.gguf" --depths 0,512,4096 || status=1
done
if command -v llama-bench >/dev/null; then
  echo "== llama.cpp (llama-bench, its default Metal build), f16 cache"
  llama-bench -m "$out/smollm2-f16.gguf" -p 512 -n 32 || true
fi
exit $status
