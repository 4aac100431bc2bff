"""Probes that run in a child process: ``python -m edged.daemon.hardware.probe_child NAME``.

NAME is one of the machine's probes here (CPUID, NVML) or a backend's name,
whose probe the backend names in its registry entry. Each prints one JSON
object on stdout. They import backend libraries or run
machine code (CPUID), so they never run inside the daemon: a crash, a hang or
a slow import costs the child, and the parent turns it into a note.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import platform
import sys
from collections.abc import Callable
from typing import Any

ARCH_GET_XCOMP_SUPP = 0x1021
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
SYS_ARCH_PRCTL_X86_64 = 158

# x86-64 System V: void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4])
_CPUID_CODE = bytes(
    [
        0x53,  # push rbx
        0x49, 0x89, 0xD0,  # mov r8, rdx
        0x89, 0xF8,  # mov eax, edi
        0x89, 0xF1,  # mov ecx, esi
        0x0F, 0xA2,  # cpuid
        0x41, 0x89, 0x00,  # mov [r8], eax
        0x41, 0x89, 0x58, 0x04,  # mov [r8+4], ebx
        0x41, 0x89, 0x48, 0x08,  # mov [r8+8], ecx
        0x41, 0x89, 0x50, 0x0C,  # mov [r8+12], edx
        0x5B,  # pop rbx
        0xC3,  # ret
    ]
)  # fmt: skip


# CPUID bits, named as /proc/cpuinfo names the features.
_LEAF1_ECX = {"fma": 12, "avx": 28, "f16c": 29}
_LEAF7_EBX = {"avx2": 5, "avx512f": 16}
_LEAF7_ECX = {"avx512_vnni": 11}
_LEAF7_EDX = {"amx_bf16": 22, "amx_tile": 24, "amx_int8": 25}
_LEAF7_1_EAX = {"avx_vnni": 4, "avx512_bf16": 5}


def _cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(_CPUID_CODE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    proto = ctypes.CFUNCTYPE(
        None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)
    )
    out = (ctypes.c_uint32 * 4)()
    proto(addr)(leaf, subleaf, out)
    return out[0], out[1], out[2], out[3]


def probe_cpuid() -> dict[str, Any]:
    """AMX as CPUID reports it (leaf 7 EDX) and as Linux grants it (arch_prctl)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {"skipped": f"not an x86-64 CPU ({platform.machine()})"}
    bits: dict[str, bool] = {}
    max_leaf = _cpuid(0)[0]
    ecx1 = _cpuid(1)[2]
    for name, bit in _LEAF1_ECX.items():
        bits[name] = bool(ecx1 >> bit & 1)
    if max_leaf >= 7:
        _, ebx, ecx, edx = _cpuid(7, 0)
        for table, reg in ((_LEAF7_EBX, ebx), (_LEAF7_ECX, ecx), (_LEAF7_EDX, edx)):
            for name, bit in table.items():
                bits[name] = bool(reg >> bit & 1)
        eax1 = _cpuid(7, 1)[0]
        for name, bit in _LEAF7_1_EAX.items():
            bits[name] = bool(eax1 >> bit & 1)
    result: dict[str, Any] = {"cpuid": bits}
    if sys.platform != "linux":
        result["perm"] = {"ok": False, "error": f"no arch_prctl on {sys.platform}"}
        return result
    libc = ctypes.CDLL(None, use_errno=True)
    supp = ctypes.c_uint64(0)
    if libc.syscall(SYS_ARCH_PRCTL_X86_64, ARCH_GET_XCOMP_SUPP, ctypes.byref(supp)) == 0:
        result["xcomp_supported"] = supp.value
    rc = libc.syscall(SYS_ARCH_PRCTL_X86_64, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
    err = ctypes.get_errno()
    result["perm"] = {"ok": rc == 0, "errno": err, "error": os.strerror(err) if rc else ""}
    return result


def probe_nvml() -> dict[str, Any]:
    import pynvml

    pynvml.nvmlInit()
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "vram_total": int(mem.total),
                    "vram_free": int(mem.free),
                    "driver": driver.decode() if isinstance(driver, bytes) else str(driver),
                    "compute_capability": f"{major}.{minor}",
                }
            )
        return {"gpus": gpus}
    finally:
        pynvml.nvmlShutdown()


PROBES: dict[str, Callable[[], dict[str, Any]]] = {
    "cpuid": probe_cpuid,
    "nvml": probe_nvml,
}


def probe_named(name: str) -> Callable[[], dict[str, Any]] | None:
    """The machine probe called ``name``, else the probe of the backend called so."""
    if name in PROBES:
        return PROBES[name]
    from edged.backends.info import load_hook
    from edged.backends.registry import BACKENDS

    for b in BACKENDS:
        if b.name == name and b.probe:
            hook: Callable[[], dict[str, Any]] = load_hook(b.probe)
            return hook
    return None


def main(argv: list[str]) -> int:
    run = probe_named(argv[0]) if len(argv) == 1 else None
    if run is None:
        print("usage: probe_child NAME (cpuid, nvml or a backend's name)", file=sys.stderr)
        return 2
    try:
        result = run()
    except ImportError as exc:
        result = {"missing": f"{exc.name or exc} is not installed"}
    except Exception as exc:  # any library error becomes the probe's answer
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
