#!/usr/bin/env bash
# Build llama.cpp's own llama-server, llama-bench, llama-batched-bench and llama-embedding from
# the sources inside the llama-cpp-python sdist edged pins, with the same CPU
# flags as edged's build, into a folder OUTSIDE the repository (default
# ~/.cache/edged/llama.cpp-bench). Only the comparison benchmarks use them;
# CI never builds them. Prints the folder to pass as --llama-bin.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/edged/llama.cpp-bench}"
PY="${PYTHON:-.venv/bin/python}"
# The installer is a script, not an installed module: ask it (loading it by file
# spec without registering it in sys.modules crashes its dataclasses).
VERSION=$("$PY" installer/llama_build.py --print-version)
ARGS=$("$PY" installer/llama_build.py --print-args)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK" >&2
tar -xzf "$WORK"/llama_cpp_python-*.tar.gz -C "$WORK"
SRC=$(echo "$WORK"/llama_cpp_python-*/vendor/llama.cpp)
# shellcheck disable=SC2086
cmake -S "$SRC" -B "$WORK/build" $ARGS -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$WORK/build" -j"$(nproc)" --target llama-server llama-bench llama-batched-bench llama-embedding >&2
mkdir -p "$OUT"
cp -a "$WORK"/build/bin/. "$OUT"/
echo "$OUT"
