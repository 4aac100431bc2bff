"""ONNX Runtime's execution providers (run in the hardware probe's child process)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from edged.common.hardware_profile import HardwareProfile, probe_problem


def probe() -> dict[str, Any]:
    import onnxruntime

    return {
        "providers": list(onnxruntime.get_available_providers()),
        "version": onnxruntime.__version__,
    }


def apply(hw: HardwareProfile, answer: Mapping[str, Any]) -> HardwareProfile:
    problem = probe_problem(answer)
    return replace(
        hw,
        onnx_providers=tuple(str(p) for p in answer.get("providers", ())),
        notes=(*hw.notes, f"ONNX Runtime: {problem}") if problem else hw.notes,
    )
