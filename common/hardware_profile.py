"""What edged knows about the machine: a plain, JSON-able value.

A :class:`HardwareProfile` is what the probes (:mod:`edged.daemon.hardware.probes`) produce and what
backend selection (:mod:`edged.daemon.hardware.ranking`) consumes. Tests build profiles from JSON
fixtures with :func:`profile_from_dict`; the daemon serves one through
System.Hardware.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class IsaFeature:
    """One instruction-set extension: does the CPU report it, may a process use it."""

    name: str  # "avx2", "avx512f", "amx", ...
    reported: bool  # the CPU advertises it (CPUID, or /proc/cpuinfo flags)
    usable: bool  # the OS lets a process use it
    note: str = ""  # why not usable, or how it was decided


@dataclass(frozen=True)
class NvidiaGpu:
    index: int
    name: str
    vram_total: int  # bytes
    vram_free: int  # bytes
    driver: str = ""
    compute_capability: str = ""  # "8.9"


@dataclass(frozen=True)
class AcceleratorDevice:
    """An OpenVINO device: "CPU", "GPU", "GPU.1", "NPU"."""

    name: str
    full_name: str = ""
    type: str = ""  # "integrated", "discrete", "" (OpenVINO's DEVICE_TYPE, lowercased)
    properties: tuple[tuple[str, str], ...] = ()

    @property
    def kind(self) -> str:
        """ "cpu", "gpu" or "npu" (the name without its index)."""
        return self.name.split(".")[0].lower()

    @property
    def device(self) -> str:
        """The device string edged uses for it: the name, lowercased ("gpu.1")."""
        return self.name.lower()

    def prop(self, key: str) -> str:
        return dict(self.properties).get(key, "")


@dataclass(frozen=True)
class HardwareProfile:
    os: str
    arch: str
    cpu: str
    cores: int  # physical
    threads: int  # logical
    cpu_features: frozenset[str]  # ISA extensions a process may use (lowercase names)
    memory_total: int  # bytes
    memory_available: int  # bytes, when probed
    isa: tuple[IsaFeature, ...] = ()
    cpu_id: str = ""  # "GenuineIntel family 6 model 207 stepping 2"
    nvidia_gpus: tuple[NvidiaGpu, ...] = ()
    openvino_devices: tuple[AcceleratorDevice, ...] = ()
    onnx_providers: tuple[str, ...] = ()
    llama_gpu_offload: bool = False
    notes: tuple[str, ...] = ()  # probes that found nothing or failed, and why
    probed: tuple[str, ...] = field(default=(), compare=False)  # optional probes that ran

    def feature(self, name: str) -> IsaFeature | None:
        return next((f for f in self.isa if f.name == name), None)


def profile_to_dict(hw: HardwareProfile) -> dict[str, Any]:
    data = asdict(hw)
    data["cpu_features"] = sorted(hw.cpu_features)
    for dev in data["openvino_devices"]:
        dev["properties"] = dict(dev["properties"])
    return data


def _known(cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


def profile_from_dict(raw: Mapping[str, Any]) -> HardwareProfile:
    """The inverse of :func:`profile_to_dict` (unknown keys are ignored)."""
    data = _known(HardwareProfile, raw)
    data["cpu_features"] = frozenset(data.get("cpu_features", ()))
    data["isa"] = tuple(IsaFeature(**_known(IsaFeature, f)) for f in data.get("isa", ()))
    data["nvidia_gpus"] = tuple(
        NvidiaGpu(**_known(NvidiaGpu, g)) for g in data.get("nvidia_gpus", ())
    )
    devices = []
    for d in data.get("openvino_devices", ()):
        dev = _known(AcceleratorDevice, d)
        dev["properties"] = tuple(
            sorted((str(k), str(v)) for k, v in dict(dev.get("properties", {})).items())
        )
        devices.append(AcceleratorDevice(**dev))
    data["openvino_devices"] = tuple(devices)
    for key in ("onnx_providers", "notes", "probed"):
        data[key] = tuple(data.get(key, ()))
    return HardwareProfile(**data)


def probe_problem(answer: Mapping[str, Any]) -> str:
    """Why a child probe found nothing: its "missing", "error" or "skipped" text, or ""."""
    for key in ("missing", "error", "skipped"):
        if answer.get(key):
            return str(answer[key])
    return ""
