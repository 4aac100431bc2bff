"""The GGUF -> int4 ONNX conversion, in its own process.

Run by :mod:`edged.models_registry.convert` as
``python -m edged.models_registry.convert_worker --gguf F --work DIR --out DIR
--hf-architecture LlamaForCausalLM``. This module imports the heavy tools (gguf,
transformers, torch, onnx, onnxruntime-genai); the daemon never imports it.

Protocol: one JSON object per line on stdout: ``{"status", "completed", "total"}``
while working, then ``{"done": true}`` or ``{"error": "..."}``. Everything else
written to stdout or stderr (the builder's output, tracebacks, native libraries)
goes to stderr, which the parent logs to a file.

Steps: dequantize every tensor to F16 (1-D tensors such as norms to F32) and write
an F16 GGUF with all the metadata; write an HF-style config folder (config.json,
tokenizer files) from it with transformers; run onnxruntime-genai's model
builder (int4, CPU); replace the builder's int4 weights with the GGUF's own
quantized blocks (:mod:`.transcode`: no second rounding where MatMulNBits can
hold the GGUF type; the status line and the log say which weights kept their
blocks and which the builder requantized); load the result once with
onnxruntime-genai.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

Emit = Callable[[str, int, int], None]

F16_FILE_TYPE = 1  # LLAMA_FTYPE_MOSTLY_F16
F16_NAME = "model-f16.gguf"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # from here on, anything printed lands in the log
    sys.stdout = os.fdopen(1, "w", buffering=1, encoding="utf-8", closefd=False)

    last = 0.0

    def emit(status: str, completed: int = 0, total: int = 0) -> None:
        nonlocal last
        now = time.monotonic()
        if 0 < completed < total and now - last < 0.2:
            return
        last = now
        _send(proto, {"status": status, "completed": completed, "total": total})

    try:
        convert(Path(args.gguf), Path(args.work), Path(args.out), args.hf_architecture, emit=emit)
    except BaseException as exc:
        traceback.print_exc()
        _send(proto, {"error": f"{type(exc).__name__}: {exc}"[:1000]})
        return 1
    _send(proto, {"done": True})
    return 0


def convert(gguf_path: Path, work: Path, out: Path, hf_architecture: str, *, emit: Emit) -> None:
    f16 = work / F16_NAME
    dequantize_to_f16(gguf_path, f16, emit)
    hf_dir = work / "hf"
    emit("writing the model configuration", 0, 0)
    write_hf_config(work, F16_NAME, hf_dir, hf_architecture)
    emit("building the int4 ONNX model", 0, 0)
    run_builder(f16, hf_dir, out, work / "builder-cache")
    from edged.models_registry.transcode import transcode

    report = transcode(gguf_path, out, work, emit=emit)
    print(f"transcoding: {report.summary()}", file=sys.stderr)
    emit(report.status(), 0, 0)
    emit("checking the ONNX model", 0, 0)
    check_onnx(out)


def dequantize_to_f16(src: Path, dest: Path, emit: Emit) -> None:
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize

    reader = GGUFReader(src)
    arch = _field_value(reader.fields["general.architecture"], GGUFValueType)
    writer = GGUFWriter(dest, str(arch))
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        value = _field_value(field, GGUFValueType)
        if name == "general.alignment":
            writer.add_custom_alignment(int(value))
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, vtype, sub_type=sub_type)
    writer.add_file_type(F16_FILE_TYPE)

    def target(name: str, ndim: int) -> Any:
        return np.float32 if ndim == 1 or name.endswith("norm.weight") else np.float16

    tensors = list(reader.tensors)
    shapes = [tuple(int(x) for x in reversed(t.shape)) for t in tensors]
    for t, shape in zip(tensors, shapes, strict=True):
        dtype = np.dtype(target(t.name, len(shape)))
        writer.add_tensor_info(t.name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = len(tensors)
    emit("dequantizing the GGUF to F16", 0, total)
    for i, (t, shape) in enumerate(zip(tensors, shapes, strict=True)):
        data = dequantize(t.data, t.tensor_type).reshape(shape)
        writer.write_tensor_data(np.ascontiguousarray(data, dtype=target(t.name, len(shape))))
        emit("dequantizing the GGUF to F16", i + 1, total)
    writer.close()


def _field_value(field: Any, value_types: Any) -> Any:
    """A GGUFReader field's value as a Python scalar, string or list."""
    vtype = field.types[0]
    if vtype == value_types.ARRAY:
        if len(field.types) > 2:
            raise ValueError(f"nested arrays are not supported ({field.name})")
        if field.types[-1] == value_types.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if vtype == value_types.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    return field.parts[field.data[0]].tolist()[0]


def write_hf_config(gguf_dir: Path, gguf_file: str, dest: Path, hf_architecture: str) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # transformers leaves this empty for GGUF checkpoints; the builder dispatches on it.
    config.architectures = [hf_architecture]
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def run_builder(f16: Path, hf_dir: Path, out: Path, cache: Path) -> None:
    """onnxruntime-genai's model builder, as its command line would run it."""
    argv = [
        "builder",
        *("-i", str(f16)),
        *("-m", str(hf_dir)),
        *("-o", str(out)),
        *("-p", "int4"),
        *("-e", "cpu"),
        *("-c", str(cache)),
    ]
    saved = sys.argv
    sys.argv = argv
    try:
        runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"the model builder exited with {exc.code}") from exc
    finally:
        sys.argv = saved
    if not (out / "genai_config.json").is_file():
        raise RuntimeError("the model builder wrote no genai_config.json")


def check_onnx(out: Path) -> None:
    import onnxruntime_genai as og

    model = og.Model(str(out))
    og.Tokenizer(model)
    del model


def _send(proto: IO[str], message: dict[str, Any]) -> None:
    proto.write(json.dumps(message) + "\n")
    proto.flush()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edged.models_registry.convert_worker")
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--hf-architecture", required=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
