"""The devices OpenVINO finds (run in the hardware probe's child process)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from edged.common.hardware_profile import AcceleratorDevice, HardwareProfile, probe_problem

PROPERTIES = (
    "DEVICE_ARCHITECTURE",
    "OPTIMIZATION_CAPABILITIES",
    "GPU_DEVICE_TOTAL_MEM_SIZE",
    "GPU_EXECUTION_UNITS_COUNT",
    "NPU_DEVICE_TOTAL_MEM_SIZE",
    "DEVICE_GOPS",
)


def probe() -> dict[str, Any]:
    import openvino as ov

    core = ov.Core()
    devices = []
    for name in core.available_devices:
        supported = set(map(str, core.get_property(name, "SUPPORTED_PROPERTIES")))

        def get(key: str, name: str = name, supported: set[str] = supported) -> str:
            if key not in supported:
                return ""
            try:
                value = core.get_property(name, key)
            except Exception:  # a property the plugin lists but cannot read
                return ""
            if isinstance(value, (list, tuple)):
                return " ".join(str(v) for v in value)
            return str(value).split(".")[-1] if key == "DEVICE_TYPE" else str(value)

        props = {k: v for k in PROPERTIES if (v := get(k))}
        devices.append(
            {
                "name": name,
                "full_name": get("FULL_DEVICE_NAME"),
                "type": get("DEVICE_TYPE").lower(),
                "properties": props,
            }
        )
    return {"devices": devices, "version": ov.get_version()}


def apply(hw: HardwareProfile, answer: Mapping[str, Any]) -> HardwareProfile:
    devices: list[AcceleratorDevice] = []
    for d in answer.get("devices", ()):
        props = tuple(sorted((str(k), str(v)) for k, v in dict(d.get("properties", {})).items()))
        devices.append(
            AcceleratorDevice(
                name=str(d["name"]),
                full_name=str(d.get("full_name", "")),
                type=str(d.get("type", "")),
                properties=props,
            )
        )
    problem = probe_problem(answer)
    return replace(
        hw,
        openvino_devices=tuple(devices),
        notes=(*hw.notes, f"OpenVINO: {problem}") if problem else hw.notes,
    )
