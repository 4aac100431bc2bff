"""What the installed llama.cpp can do here (run in the hardware probe's child process)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from edged.common.hardware_profile import HardwareProfile, probe_problem


def probe() -> dict[str, Any]:
    import llama_cpp

    return {
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "version": str(llama_cpp.__version__),
    }


def apply(hw: HardwareProfile, answer: Mapping[str, Any]) -> HardwareProfile:
    if problem := probe_problem(answer):
        note = f"llama.cpp: {problem}"
    elif not answer.get("gpu_offload"):
        note = "llama.cpp: this build cannot offload to a GPU (built without CUDA)"
    else:
        note = ""
    return replace(
        hw,
        llama_gpu_offload=bool(answer.get("gpu_offload", False)),
        notes=(*hw.notes, note) if note else hw.notes,
    )
