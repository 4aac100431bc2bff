"""ONNX Runtime on accelerators: edged's engine runs on the CPU only, and says so
when ONNX Runtime lists the CUDA execution provider."""

from __future__ import annotations

from edged.backends.onnx.info import INFO
from edged.backends.placement import TIER_CUDA, Choice, PlacementContext

CUDA_PROVIDER = "CUDAExecutionProvider"


def accelerator_choices(ctx: PlacementContext) -> list[Choice]:
    if CUDA_PROVIDER not in ctx.hw.onnx_providers:
        return []
    why = (
        "ONNX Runtime lists the CUDA execution provider, but edged's ONNX engine runs on "
        "the CPU only"
    )
    gpus = sorted(ctx.hw.nvidia_gpus, key=lambda g: (-g.vram_free, g.index))
    return [Choice(INFO.name, f"cuda:{g.index}", False, (why,), tier=TIER_CUDA) for g in gpus]
