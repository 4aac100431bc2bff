"""Hardware probes: parsing (pure) and the real probes on this machine."""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edged.daemon.hardware import probe
from edged.daemon.hardware.probes import (
    HardwareMonitor,
    assemble,
    basic_profile,
    isa_features,
    parse_cpuinfo,
    run_probes,
)

CPUINFO = textwrap.dedent(
    """\
    processor\t: 0
    vendor_id\t: GenuineIntel
    cpu family\t: 6
    model\t\t: 207
    model name\t: Intel(R) Xeon(R) Processor
    stepping\t: 2
    flags\t\t: fpu avx f16c avx2 fma avx512f avx512_vnni

    processor\t: 1
    vendor_id\t: GenuineIntel
    model name\t: something else
    flags\t\t: fpu
    """
)


def test_parse_cpuinfo_reads_the_first_processor() -> None:
    cpu = parse_cpuinfo(CPUINFO)
    assert cpu.name == "Intel(R) Xeon(R) Processor"
    assert (cpu.family, cpu.model, cpu.stepping) == (6, 207, 2)
    assert {"avx2", "avx512f", "avx512_vnni"} <= cpu.flags
    assert cpu.ident == "GenuineIntel family 6 model 207 stepping 2"


CPUID_NO_AMX = {
    "cpuid": {"avx2": True, "avx512f": True, "amx_tile": False, "avx512_bf16": True},
    "xcomp_supported": 0xE7,
    "perm": {"ok": False, "errno": 95, "error": "Operation not supported"},
}


@pytest.mark.parametrize(
    ("flags", "cpuid", "reported", "usable", "note"),
    [
        # a VM that hides AMX: neither CPUID nor the kernel has it
        ("avx2", CPUID_NO_AMX, False, False, "Operation not supported"),
        # CPUID has it, the kernel refuses the tile permission: the crash case
        ("avx2", {**CPUID_NO_AMX, "cpuid": {"amx_tile": True}}, True, False, "reported by CPUID"),
        # everything in order
        (
            "avx2 amx_tile",
            {"cpuid": {"amx_tile": True}, "perm": {"ok": True}},
            True,
            True,
            "granted",
        ),
        # the child probe crashed: never claim usable
        ("avx2 amx_tile", {"error": "the probe crashed (signal 11)"}, True, False, "could not run"),
        (
            "avx2",
            {"skipped": "not an x86-64 CPU (aarch64)"},
            False,
            False,
            "not an x86-64",
        ),
    ],
)
def test_amx_reported_vs_usable(
    flags: str, cpuid: dict[str, object], reported: bool, usable: bool, note: str
) -> None:
    cpu = parse_cpuinfo(CPUINFO.replace("fpu avx f16c avx2 fma avx512f avx512_vnni", flags))
    isa, _ = isa_features(cpu, "x86_64", cpuid)
    amx = next(f for f in isa if f.name == "amx")
    assert (amx.reported, amx.usable) == (reported, usable)
    assert note in amx.note


def test_cpuid_feature_the_kernel_does_not_enable_is_not_usable() -> None:
    cpu = parse_cpuinfo(CPUINFO)
    isa, notes = isa_features(cpu, "x86_64", CPUID_NO_AMX)
    bf16 = next(f for f in isa if f.name == "avx512_bf16")
    assert bf16.reported and not bf16.usable and "kernel" in bf16.note
    assert any("Emerald Rapids" in n and "AMX" in n for n in notes)


def test_missing_libraries_and_crashes_become_notes() -> None:
    cpu = parse_cpuinfo(CPUINFO)
    hw = assemble(
        basic_profile(),
        cpu,
        {
            "cpuid": CPUID_NO_AMX,
            "nvml": {"error": "NVMLError_LibraryNotFound: NVML Shared Library Not Found"},
            "openvino": {"missing": "openvino is not installed"},
            "onnxruntime": {"error": "timed out after 30 s"},
            "llama.cpp": {"gpu_offload": False, "version": "0.3.36"},
        },
    )
    text = "\n".join(hw.notes)
    assert "NVML Shared Library Not Found" in text
    assert "OpenVINO: openvino is not installed" in text
    assert "ONNX Runtime: timed out" in text
    assert "built without CUDA" in text
    assert hw.nvidia_gpus == () and hw.openvino_devices == () and not hw.llama_gpu_offload


def test_nvml_answer_becomes_gpus() -> None:
    gpu = {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "vram_total": 85520809984,
        "vram_free": 84986691584,
        "driver": "550.54.15",
        "compute_capability": "9.0",
    }
    hw = assemble(basic_profile(), parse_cpuinfo(CPUINFO), {"nvml": {"gpus": [gpu]}})
    assert hw.nvidia_gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert hw.nvidia_gpus[0].compute_capability == "9.0"


def test_a_hanging_or_unknown_probe_is_bounded() -> None:
    out = run_probes(["no-such-probe"], timeout_s=20)
    assert "error" in out["no-such-probe"]


def _arch_prctl_amx_in_a_child() -> bool:
    """Ask Linux for AMX tile permission independently of edged's code."""
    code = (
        "import ctypes,sys;"
        "libc=ctypes.CDLL(None,use_errno=True);"
        "sys.exit(0 if libc.syscall(158,0x1023,18)==0 else 1)"
    )
    return subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.skipif(
    platform.machine() != "x86_64" or sys.platform != "linux",
    reason="arch_prctl AMX permission exists on x86-64 Linux only",
)
def test_real_probe_on_this_machine() -> None:
    hw = probe()
    assert hw.threads >= 1 and hw.memory_total > 0 and hw.cpu
    amx = hw.feature("amx")
    assert amx is not None
    assert amx.usable == _arch_prctl_amx_in_a_child()
    if not amx.usable:
        assert "arch_prctl" in amx.note
    # every optional probe either answered or left a note naming it
    assert set(hw.probed) == {"cpuid", "nvml", "openvino", "onnxruntime", "llama.cpp"}
    cpu_flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text()).flags
    avx2 = hw.feature("avx2")
    assert avx2 is not None and avx2.usable == ("avx2" in cpu_flags)
    if importlib.util.find_spec("openvino") is not None:
        assert any(d.name == "CPU" for d in hw.openvino_devices)
    if importlib.util.find_spec("onnxruntime") is not None:
        assert "CPUExecutionProvider" in hw.onnx_providers
    if not hw.nvidia_gpus:
        assert any(n.startswith("NVIDIA") for n in hw.notes)
    json.dumps(hw.notes)  # plain strings


def test_monitor_probes_in_the_background_and_refreshes() -> None:
    mon = HardwareMonitor(optional=("llama.cpp",)).start()
    assert mon.basic.cores >= 1  # ready at once
    first = mon.profile()
    assert first.probed == ("llama.cpp",)
    again = mon.refresh()
    assert again.probed == ("llama.cpp",) and again.memory_available > 0
