#!/usr/bin/env bash
# Run the native runtime's tests under AddressSanitizer + UBSan: build an
# instrumented extension in a scratch copy of the tree and run the C-facing
# test files there, plus the fuzz test of the native loader (its child process
# inherits the preload) (Python itself is not instrumented: libasan is preloaded,
# leak checking is off because the interpreter never frees everything).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files -z | xargs -0 -I{} cp --parents {} "$work"
cd "$work"
CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
LDFLAGS="-fsanitize=address,undefined" \
  "$py" setup.py -q build_ext --inplace >/dev/null 2>build.log || { cat build.log; exit 1; }
asan=$(gcc -print-file-name=libasan.so)
LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  "$py" -m pytest -q -p no:cacheprovider ${ASAN_PYTEST_ARGS:-} tests/test_kernels.py tests/test_kquant.py tests/test_runtime_ops.py tests/test_runtime.py \
  tests/test_cli_runtime.py tests/test_recent_window.py "tests/test_bad_files.py::test_fuzz_native_loader"
