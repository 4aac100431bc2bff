"""Hardware probing and backend selection.

:func:`probe` reads the machine (cheaply: no backend library is imported).
:func:`select_backends` is a pure function from a :class:`HardwareProfile`, the
formats a model is available in and the installed backends to an ordered list
of :class:`Choice` with the reasons ``edged hw`` prints.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass(frozen=True)
class HardwareProfile:
    os: str
    arch: str
    cpu: str
    cores: int
    threads: int
    cpu_features: frozenset[str]
    memory_total: int
    memory_available: int
    nvidia_gpus: tuple[str, ...] = ()
    intel_gpu: bool = False
    intel_npu: bool = False


@dataclass(frozen=True)
class Choice:
    backend: str
    device: str
    available: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)


_FEATURES = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "amx_tile", "neon", "asimd")


def _cpu_name_and_flags() -> tuple[str, frozenset[str]]:
    info = Path("/proc/cpuinfo")
    name, flags = platform.processor() or platform.machine(), frozenset[str]()
    if info.exists():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and name in ("", platform.machine()):
                name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = frozenset(value.split())
    return name, flags


def _nvidia_gpus() -> tuple[str, ...]:
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if out.returncode != 0:
        return ()
    return tuple(line.strip() for line in out.stdout.splitlines() if line.strip())


def _intel_accelerators() -> tuple[bool, bool]:
    drm = Path("/sys/class/drm")
    gpu = False
    if drm.is_dir():
        for vendor in drm.glob("card*/device/vendor"):
            try:
                gpu = gpu or vendor.read_text().strip() == "0x8086"
            except OSError:
                continue
    npu = Path("/dev/accel/accel0").exists()
    return gpu, npu


def probe() -> HardwareProfile:
    name, flags = _cpu_name_and_flags()
    vm = psutil.virtual_memory()
    gpu, npu = _intel_accelerators()
    return HardwareProfile(
        os=platform.system().lower(),
        arch=platform.machine().lower(),
        cpu=name,
        cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        threads=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        cpu_features=frozenset(f for f in _FEATURES if f in flags),
        memory_total=int(vm.total),
        memory_available=int(vm.available),
        nvidia_gpus=_nvidia_gpus(),
        intel_gpu=gpu,
        intel_npu=npu,
    )


def llama_cuda_built() -> bool:
    """Whether the installed llama.cpp library was built with CUDA (file check only)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return any(lib.glob("libggml-cuda*"))


def select_backends(
    hw: HardwareProfile,
    formats: Iterable[str],
    installed: Iterable[str],
    *,
    llama_cuda: bool = False,
) -> list[Choice]:
    """Rank (backend, device) pairs for a model available in ``formats``. Pure."""
    fmts, have = set(formats), set(installed)
    choices: list[Choice] = []
    if "gguf" in fmts:
        if hw.nvidia_gpus:
            ok = "llama.cpp" in have and llama_cuda
            why = [f"NVIDIA GPU found: {hw.nvidia_gpus[0]}"]
            if "llama.cpp" not in have:
                why.append("llama-cpp-python is not installed")
            elif not llama_cuda:
                why.append("the installed llama.cpp was built without CUDA")
            else:
                why.append("llama.cpp offloads all layers to the GPU")
            choices.append(Choice("llama.cpp", "cuda:0", ok, tuple(why)))
        why = ["GGUF model; llama.cpp runs quantized GGUF natively on the CPU"]
        feats = sorted(hw.cpu_features & {"avx2", "avx512f", "neon", "asimd"})
        if feats:
            why.append("CPU vector extensions: " + ", ".join(feats))
        if "llama.cpp" not in have:
            why.append("llama-cpp-python is not installed")
        choices.append(Choice("llama.cpp", "cpu", "llama.cpp" in have, tuple(why)))
    else:
        choices.append(Choice("llama.cpp", "cpu", False, ("the model has no GGUF variant",)))
    why = []
    if "onnx" in fmts:
        why.append("ONNX Runtime GenAI runs ONNX variants (int4) on the CPU")
    else:
        why.append("no ONNX variant yet (edged convert MODEL --to onnx makes one)")
    if "onnxruntime" not in have:
        why.append("onnxruntime-genai is not installed (pip install 'edged[onnx]')")
    if "gguf" in fmts:
        why.append("ranked after llama.cpp: no batching across streams, no saved session KV")
    choices.append(
        Choice("onnxruntime", "cpu", "onnx" in fmts and "onnxruntime" in have, tuple(why))
    )
    # Available choices first, keeping the preference order within each group.
    return sorted(choices, key=lambda c: not c.available)
