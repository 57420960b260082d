#!/usr/bin/env bash
# Install kvconvert with everything its tests need, then run the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}

"$py" -m pip install --quiet -e '.[test]' torch==2.13.0
bash scripts/install_llama_cpp.sh
"$py" -m pytest "$@"
# The C runtime's tests again under AddressSanitizer/UBSan (~1 min), on full runs.
if [ $# -eq 0 ] && [ -z "${KVCONVERT_SKIP_ASAN:-}" ]; then
  bash scripts/asan.sh
fi
