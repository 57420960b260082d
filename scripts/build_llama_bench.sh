#!/usr/bin/env bash
# Build llama.cpp's own llama-bench and llama-perplexity (the speed and PPL peer
# of bench/peer.py) from the same pinned sources as the Python oracle: the
# llama-cpp-python 0.3.36 sdist from the package registry, its vendor/llama.cpp,
# with the flags of scripts/install_llama_cpp.sh (AVX2/AVX-512, every AMX option
# off: AMX traps on these machines; never -march=native) plus the VNNI/VBMI/BF16
# extensions the CPU has. Release, static, only the two targets. Cached in
# $KVCONVERT_CACHE/llama.cpp-0.3.36/bin-<flags hash> (default ~/.cache/kvconvert)
# and rebuilt only if a binary is missing; prints the bin
# directory on stdout (~10-20 min on 2 cores the first time).
set -euo pipefail
py=${PYTHON:-python3}
version=0.3.36
flags="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
# A speed peer must be as fast as llama.cpp can be here: the AVX-512/AVX extensions this CPU has
# (kvconvert's kernels use VNNI where present) are switched on too — never AMX, never -march=native.
for ext in avx512_vnni:AVX512_VNNI avx512vbmi:AVX512_VBMI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
  if grep -qw "${ext%%:*}" /proc/cpuinfo 2>/dev/null; then flags="$flags -DGGML_${ext##*:}=ON"; fi
done
root=${KVCONVERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvconvert}/llama.cpp-$version
bin=$root/bin-$(echo "$flags" | sha1sum | cut -c1-8)  # one build per flag set
targets="llama-bench llama-perplexity"

built() { for t in $targets; do [ -x "$bin/$t" ] || return 1; done; }

if built; then echo "$bin"; exit 0; fi
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9  # a second build waits for the first, then finds its binaries
if built; then echo "$bin"; exit 0; fi

if ! command -v cmake >/dev/null; then
  echo "cmake not found: installing it with pip" >&2
  "$py" -m pip install --quiet cmake
fi
sdist=$root/llama_cpp_python-$version.tar.gz
if [ ! -f "$sdist" ]; then
  echo "downloading the llama-cpp-python $version sdist ..." >&2
  "$py" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$version" -d "$root" >&2
fi
work=$(mktemp -d "$root/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar xzf "$sdist" -C "$work"
src=$work/llama_cpp_python-$version/vendor/llama.cpp
start=$SECONDS
echo "building $targets from $src (once; cached in $bin) ..." >&2
# shellcheck disable=SC2086  # $flags is a word list
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release $flags -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_OPENSSL=OFF >"$work/configure.log" 2>&1 || { cat "$work/configure.log" >&2; exit 1; }
# shellcheck disable=SC2086
cmake --build "$work/build" --config Release -j "$(nproc)" --target $targets >"$work/build.log" 2>&1 \
  || { tail -n 60 "$work/build.log" >&2; exit 1; }
mkdir -p "$bin.tmp"
for t in $targets; do cp "$work/build/bin/$t" "$bin.tmp/"; done
{
  echo "llama-cpp-python $version sdist, vendor/llama.cpp"
  echo "cmake -DCMAKE_BUILD_TYPE=Release $flags -DBUILD_SHARED_LIBS=OFF"
  echo "$(c++ --version | head -n1)"
} >"$bin.tmp/BUILD_INFO"
rm -rf "$bin" && mv "$bin.tmp" "$bin"
echo "built in $((SECONDS - start)) s" >&2
echo "$bin"
