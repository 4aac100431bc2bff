"""The safetensors -> GGUF conversion, in its own process.

Run by :mod:`edged.models_registry.convert_gguf` as ``python -m
edged.models_registry.convert_gguf_worker --folder DIR --converter DIR --work DIR
--out FILE --quant f16|q8_0|q4_k_m``. It runs llama.cpp's ``convert_hf_to_gguf.py``
from ``--converter`` (which puts its own ``gguf-py`` first on ``sys.path``) and,
for q4_k_m, llama.cpp's quantizer through llama-cpp-python; the daemon never
imports this module.

Protocol (convert_worker.py's): one JSON object per line on stdout:
``{"status", "completed", "total"}`` while working, then ``{"done": true}`` or
``{"error": "..."}``. Everything else goes to stderr, which the parent logs.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import runpy
import sys
import traceback
from pathlib import Path

from edged.models_registry.convert_worker import _send

# Straight from the converter (--outtype); the rest via an F16 GGUF and the quantizer.
DIRECT = {"f16": "f16", "q8_0": "q8_0"}
QUANTIZED = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
F16_NAME = "model-f16.gguf"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # from here on, anything printed lands in the log
    sys.stdout = os.fdopen(1, "w", buffering=1, encoding="utf-8", closefd=False)

    def emit(status: str) -> None:
        _send(proto, {"status": status, "completed": 0, "total": 0})

    try:
        folder, converter, work, out = (
            Path(args.folder),
            Path(args.converter),
            Path(args.work),
            Path(args.out),
        )
        if args.quant in DIRECT:
            emit(f"converting the safetensors to GGUF ({args.quant.upper()})")
            run_converter(converter, folder, out, DIRECT[args.quant])
        else:
            f16 = work / F16_NAME
            emit("converting the safetensors to GGUF (F16)")
            run_converter(converter, folder, f16, "f16")
            emit(f"quantizing to {args.quant.upper()} with llama.cpp")
            quantize(f16, out, QUANTIZED[args.quant])
            f16.unlink()
        if not out.is_file():
            raise RuntimeError("the converter wrote no GGUF file")
    except BaseException as exc:
        traceback.print_exc()
        _send(proto, {"error": f"{type(exc).__name__}: {exc}"[:1000]})
        return 1
    _send(proto, {"done": True})
    return 0


def run_converter(converter: Path, folder: Path, out: Path, outtype: str) -> None:
    """llama.cpp's convert_hf_to_gguf.py, as its command line would run it."""
    script = converter / "convert_hf_to_gguf.py"
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(script), str(folder), "--outtype", outtype, "--outfile", str(out)]
    sys.path.insert(0, str(converter))  # its ``conversion`` package
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"convert_hf_to_gguf.py exited with {exc.code}") from exc
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def quantize(src: Path, dest: Path, ftype_name: str) -> None:
    """llama.cpp's quantizer (llama_model_quantize) from ``src`` to ``dest``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = max(1, os.cpu_count() or 1)
    code = llama_cpp.llama_model_quantize(
        str(src).encode(), str(dest).encode(), ctypes.byref(params)
    )
    if code != 0:
        raise RuntimeError(f"llama_model_quantize failed ({code})")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edged.models_registry.convert_gguf_worker")
    parser.add_argument("--folder", required=True)
    parser.add_argument("--converter", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quant", required=True, choices=[*DIRECT, *QUANTIZED])
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
