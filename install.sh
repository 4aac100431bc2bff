#!/usr/bin/env bash
# Install edged into a virtual environment (./.venv, or $EDGED_VENV).
#
#   ./install.sh          edged and its runtime dependencies (llama.cpp backend)
#   ./install.sh --onnx   plus the ONNX Runtime backend and the GGUF->ONNX converter
#   ./install.sh --openvino  plus the OpenVINO backend (GGUF/IR on Intel CPU, GPU, NPU)
#   ./install.sh --dev    plus those and the test and lint tools
#
# llama-cpp-python is compiled for THIS machine first (installer/llama_build.py:
# instruction sets from /proc/cpuinfo, never AMX, own wheel cache keyed by the
# flags), so pip never builds or reuses a default -march=native wheel. The same
# step puts llama.cpp's GGUF converter (convert_hf_to_gguf.py, conversion/,
# gguf-py/ from the pinned sdist) into ~/.cache/edged/llama.cpp-convert/VERSION/
# for `edged convert MODEL --to gguf`.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${EDGED_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
extras=""
# --dev adds the test tools and every optional backend's extras, so the
# conformance suite runs for llama.cpp, ONNX Runtime (conversion included) and OpenVINO.
[ "${1:-}" = "--dev" ] && extras="[dev,onnx,convert,openvino]"
[ "${1:-}" = "--onnx" ] && extras="[onnx,convert]"
[ "${1:-}" = "--openvino" ] && extras="[openvino]"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" installer/llama_build.py
"$VENV/bin/python" -m pip install --quiet ".$extras"
"$VENV/bin/edged" --help > /dev/null
echo "edged installed in $VENV (run: $VENV/bin/edged --help)"
