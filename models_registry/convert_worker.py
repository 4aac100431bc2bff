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

from edged.common.gguf_rewrite import F16_FILE_TYPE, rewrite_gguf

__all__ = ["F16_FILE_TYPE", "convert", "dequantize_to_f16", "main", "rewrite_gguf"]

Emit = Callable[[str, int, int], None]
F16_NAME = "model-f16.gguf"
# Architectures the builder's own GGUF reader lacks: transformers reads the GGUF
# (it needs accelerate for that) and writes HF safetensors, which the builder reads.
HF_WEIGHTS = frozenset({"Gemma3ForCausalLM"})


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
        convert(
            Path(args.gguf),
            Path(args.work),
            Path(args.out),
            args.hf_architecture,
            emit=emit,
            transcode_blocks=not args.no_transcode,
        )
    except BaseException as exc:
        traceback.print_exc()
        _send(proto, {"error": f"{type(exc).__name__}: {exc}"[:1000]})
        return 1
    _send(proto, {"done": True})
    return 0


def convert(
    gguf_path: Path,
    work: Path,
    out: Path,
    hf_architecture: str,
    *,
    emit: Emit,
    transcode_blocks: bool = True,
) -> None:
    hf_dir = work / "hf"
    if hf_architecture in HF_WEIGHTS:
        emit("writing the model's weights for the builder", 0, 0)
        write_hf_model(gguf_path, hf_dir, hf_architecture)
        source = hf_dir
    else:
        source = work / F16_NAME
        dequantize_to_f16(gguf_path, source, emit)
        emit("writing the model configuration", 0, 0)
        write_hf_config(work, F16_NAME, hf_dir, hf_architecture)
    emit("building the int4 ONNX model", 0, 0)
    run_builder(source, hf_dir, out, work / "builder-cache")
    if transcode_blocks:
        from edged.models_registry.transcode import transcode

        report = transcode(gguf_path, out, work, emit=emit)
        print(f"transcoding: {report.summary()}", file=sys.stderr)
        emit(report.status(), 0, 0)
    emit("checking the ONNX model", 0, 0)
    check_onnx(out)


def dequantize_to_f16(src: Path, dest: Path, emit: Emit) -> None:
    """``src`` with every tensor dequantized: matrices F16, 1-D tensors and norms F32."""
    import numpy as np

    def target(name: str, ndim: int) -> Any:
        return np.float32 if ndim == 1 or name.endswith("norm.weight") else np.float16

    rewrite_gguf(src, dest, target, emit, F16_FILE_TYPE)


def write_hf_config(gguf_dir: Path, gguf_file: str, dest: Path, hf_architecture: str) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # transformers leaves this empty for GGUF checkpoints; the builder dispatches on it.
    config.architectures = [hf_architecture]
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def write_hf_model(gguf_path: Path, dest: Path, hf_architecture: str) -> None:
    """The GGUF as an HF folder (config, tokenizer, float32 safetensors), by transformers."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, name = gguf_path.parent, gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    model.config.architectures = [hf_architecture]
    # the weights are dequantized now; the builder refuses a "gguf" quantization_config
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # save_pretrained refuses a model read from a GGUF ("not serializable"): the
    # weights are plain float32 tensors by now, so write them directly
    dest.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(dest)
    save_model(model, str(dest / "model.safetensors"))
    del model
    AutoTokenizer.from_pretrained(where, gguf_file=name).save_pretrained(dest)


def _patch_builder() -> None:
    """Fit the pinned builder to transformers 5 configs: Gemma 3's RoPE settings
    now come nested per layer type ({"full_attention": {...}, "sliding_attention":
    {...}}) where the builder's Gemma3Model reads rope_theta, rope_local_base_freq
    and a flat rope_parameters."""
    import importlib

    import onnxruntime_genai.models  # noqa: F401  (puts the builder's modules on sys.path)

    gemma = importlib.import_module("builders.gemma")
    cls = gemma.Gemma3Model
    if getattr(cls, "_edged_patched", False):
        return
    original = cls.__init__

    def init(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        rope = getattr(config, "rope_parameters", None)
        if type(self) is cls and isinstance(rope, dict) and "full_attention" in rope:
            config.rope_theta = rope["full_attention"]["rope_theta"]
            config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
            config.rope_parameters = dict(rope["full_attention"])
        original(self, config, *args, **kwargs)

    cls.__init__ = init
    cls._edged_patched = True


def run_builder(source: Path, hf_dir: Path, out: Path, cache: Path) -> None:
    """onnxruntime-genai's model builder, as its command line would run it
    (``source``: an F16 GGUF or an HF folder)."""
    _patch_builder()
    argv = [
        "builder",
        *("-i", str(source)),
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
    # the builder's requantized int4 weights only (for comparisons: bench.onnx_folders)
    parser.add_argument("--no-transcode", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
