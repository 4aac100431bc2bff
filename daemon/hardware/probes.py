"""Reading the machine into a :class:`HardwareProfile`.

The cheap part (``/proc/cpuinfo``, psutil) runs in the daemon. Everything that
imports a backend library or executes machine code runs in a child process
(:mod:`.probe_child`) under a timeout, all children at once: a missing
library, a missing driver, a crash or a hang becomes a line in
``HardwareProfile.notes``, never an exception.

:class:`HardwareMonitor` probes once in the background when the daemon starts
and keeps the result; ``edged hw`` asks it to probe again.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from edged.backends.info import load_hook
from edged.backends.registry import BACKENDS
from edged.common.hardware_profile import HardwareProfile, IsaFeature, NvidiaGpu, probe_problem

PROBE_TIMEOUT_S = 30.0
# The machine's own probes, then each backend's (named as the backend is).
OPTIONAL_PROBES = ("cpuid", "nvml", *(b.name for b in BACKENDS if b.probe))

# ISA extensions worth reporting, named as /proc/cpuinfo names them.
X86_FEATURES = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni")
ARM_FEATURES = ("asimd", "neon", "sve", "sve2", "i8mm", "asimddp")

# Intel family 6 models with AMX in silicon (for the "hidden by the hypervisor" note).
_AMX_MODELS = {143: "Sapphire Rapids", 207: "Emerald Rapids", 173: "Granite Rapids"}


@dataclass(frozen=True)
class CpuInfo:
    name: str = ""
    vendor: str = ""
    family: int = -1
    model: int = -1
    stepping: int = -1
    flags: frozenset[str] = frozenset()

    @property
    def ident(self) -> str:
        if self.family < 0:
            return ""
        return f"{self.vendor} family {self.family} model {self.model} stepping {self.stepping}"


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's name, vendor, family/model/stepping and flags."""
    seen: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep:
            if seen:  # a blank line ends the first processor's block
                break
            continue
        seen.setdefault(key, value.strip())

    def num(key: str) -> int:
        try:
            return int(seen.get(key, "-1"))
        except ValueError:
            return -1

    flags = seen.get("flags") or seen.get("Features") or ""
    return CpuInfo(
        name=seen.get("model name") or seen.get("Model") or seen.get("Hardware") or "",
        vendor=seen.get("vendor_id", ""),
        family=num("cpu family"),
        model=num("model"),
        stepping=num("stepping"),
        flags=frozenset(flags.split()),
    )


def isa_features(
    cpu: CpuInfo, arch: str, cpuid: Mapping[str, Any] | None
) -> tuple[tuple[IsaFeature, ...], tuple[str, ...]]:
    """Reported vs usable ISA extensions, and notes.

    Reported: CPUID says the CPU has it, or /proc/cpuinfo lists it. Usable:
    /proc/cpuinfo lists it (Linux drops a flag whose register state it does
    not manage), and for AMX also ``arch_prctl(ARCH_REQ_XCOMP_PERM,
    XFEATURE_XTILEDATA)`` succeeded, the permission every process must ask for
    before its first tile instruction.
    """
    notes: list[str] = []
    if arch in ("aarch64", "arm64"):
        feats = tuple(
            IsaFeature(f, f in cpu.flags, f in cpu.flags, "/proc/cpuinfo Features")
            for f in ARM_FEATURES
        )
        return feats, ()
    bits: Mapping[str, Any] = (cpuid or {}).get("cpuid", {})
    out: list[IsaFeature] = []
    for f in X86_FEATURES:
        listed = f in cpu.flags
        by_cpuid = bool(bits.get(f, False))
        note = ""
        if by_cpuid and not listed:
            note = "CPUID reports it but the kernel does not enable it (/proc/cpuinfo)"
        out.append(IsaFeature(f, listed or by_cpuid, listed, note))
    out.append(_amx(cpu, cpuid, notes))
    return tuple(out), tuple(notes)


def _amx(cpu: CpuInfo, cpuid: Mapping[str, Any] | None, notes: list[str]) -> IsaFeature:
    listed = "amx_tile" in cpu.flags
    if cpuid is None or "cpuid" not in cpuid:
        why = "could not run the CPUID/arch_prctl check"
        if cpuid and cpuid.get("skipped"):
            why = str(cpuid["skipped"])
        return IsaFeature("amx", listed, False, f"not usable: {why}")
    bits = cpuid["cpuid"]
    by_cpuid = bool(bits.get("amx_tile"))
    perm = cpuid.get("perm") or {}
    reported = by_cpuid or listed
    where = "CPUID leaf 7 EDX bits 22/24/25" + (" and /proc/cpuinfo" if listed else "")
    if perm.get("ok"):
        return IsaFeature("amx", reported, True, "arch_prctl(ARCH_REQ_XCOMP_PERM) granted")
    err = perm.get("error") or "refused"
    parts = [
        f"reported by {where}" if reported else "not reported by CPUID or /proc/cpuinfo",
        f"arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) failed: {err}",
    ]
    supp = cpuid.get("xcomp_supported")
    if isinstance(supp, int):
        parts.append(f"XSAVE features the kernel supports: {supp:#x}, no tile data (bit 18)")
    gen = _AMX_MODELS.get(cpu.model) if cpu.vendor == "GenuineIntel" and cpu.family == 6 else None
    if gen and not reported:
        notes.append(
            f"the CPU is family 6 model {cpu.model} ({gen}), which has AMX in silicon, "
            "but this machine (a VM?) hides it: native code must be built without AMX here "
            "(installer/llama_build.py builds so)"
        )
    return IsaFeature("amx", reported, False, "not usable: " + "; ".join(parts))


def basic_profile(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> HardwareProfile:
    """CPU, cores and memory: cheap, no child process."""
    try:
        cpu = parse_cpuinfo(cpuinfo_path.read_text(errors="replace"))
    except OSError:
        cpu = CpuInfo()
    arch = platform.machine().lower()
    vm = psutil.virtual_memory()
    known = X86_FEATURES + ARM_FEATURES
    return HardwareProfile(
        os=platform.system().lower(),
        arch=arch,
        cpu=cpu.name or platform.processor() or arch,
        cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        threads=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        cpu_features=frozenset(f for f in known if f in cpu.flags),
        memory_total=int(vm.total),
        memory_available=int(vm.available),
        cpu_id=cpu.ident,
    )


# ---------------------------------------------------------------- child probes


def run_probes(
    names: Iterable[str], timeout_s: float = PROBE_TIMEOUT_S
) -> dict[str, dict[str, Any]]:
    """Run child probes in parallel; each answer is its JSON, or {"error": ...}."""
    procs: dict[str, subprocess.Popen[str]] = {}
    out: dict[str, dict[str, Any]] = {}
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for name in names:
        try:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "edged.daemon.hardware.probe_child", name],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        except OSError as exc:
            out[name] = {"error": f"could not start the probe: {exc}"}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[name] = {"error": f"timed out after {timeout_s:g} s"}
            continue
        if proc.returncode != 0:
            how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
            out[name] = {"error": f"the probe crashed ({how})" + (f": {tail[0]}" if tail else "")}
            continue
        try:
            answer = json.loads(stdout)
        except ValueError:
            out[name] = {"error": "the probe printed no JSON"}
            continue
        out[name] = answer if isinstance(answer, dict) else {"error": "unexpected answer"}
    return out


def assemble(
    base: HardwareProfile, cpu: CpuInfo, answers: Mapping[str, Mapping[str, Any]]
) -> HardwareProfile:
    """Fold the child probes' answers into ``base``. Pure (table-testable)."""
    notes: list[str] = []
    cpuid = answers.get("cpuid")
    if cpuid is not None and probe_problem(cpuid) and "cpuid" not in cpuid:
        notes.append(f"CPUID/AMX check: {probe_problem(cpuid)}")
    isa, isa_notes = isa_features(cpu, base.arch, cpuid)
    notes += isa_notes

    gpus: list[NvidiaGpu] = []
    nvml = answers.get("nvml", {})
    if problem := probe_problem(nvml):
        notes.append(f"NVIDIA (NVML): {problem}")
    for g in nvml.get("gpus", ()):
        gpus.append(
            NvidiaGpu(
                index=int(g["index"]),
                name=str(g["name"]),
                vram_total=int(g["vram_total"]),
                vram_free=int(g["vram_free"]),
                driver=str(g.get("driver", "")),
                compute_capability=str(g.get("compute_capability", "")),
            )
        )
    if "nvml" in answers and not problem and not gpus:
        notes.append("NVIDIA (NVML): the driver is loaded but lists no GPU")
    hw = replace(
        base,
        isa=isa,
        cpu_features=frozenset(f.name for f in isa if f.usable) or base.cpu_features,
        nvidia_gpus=tuple(gpus),
        notes=tuple(notes),
        probed=tuple(sorted(answers)),
    )
    for b in BACKENDS:  # each backend reads its own probe's answer
        if b.apply_probe and b.name in answers:
            hw = load_hook(b.apply_probe)(hw, answers[b.name])
    return hw


def probe(
    optional: Iterable[str] = OPTIONAL_PROBES, timeout_s: float = PROBE_TIMEOUT_S
) -> HardwareProfile:
    """Probe everything (the child probes run in parallel)."""
    try:
        cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        cpu = CpuInfo()
    return assemble(basic_profile(), cpu, run_probes(optional, timeout_s))


class HardwareMonitor:
    """The daemon's probe result: probed once in the background, refreshed on request.

    ``basic`` is ready at once (CPU, cores, memory); :meth:`profile` waits for the
    full probe (at most ``PROBE_TIMEOUT_S`` plus a margin) and refreshes the
    available-memory figure, which changes all the time, on every call.
    """

    def __init__(self, optional: Iterable[str] = OPTIONAL_PROBES) -> None:
        self.basic = basic_profile()
        self._optional = tuple(optional)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._profile = self.basic
        self._thread: threading.Thread | None = None

    def start(self) -> HardwareMonitor:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._done.clear()
                self._thread = threading.Thread(
                    target=self._run, name="edged-hw-probe", daemon=True
                )
                self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._profile = probe(self._optional)
        except Exception as exc:  # never let a probe take the daemon down
            self._profile = replace(self.basic, notes=(f"hardware probe failed: {exc}",))
        finally:
            self._done.set()

    def profile(self, timeout_s: float = PROBE_TIMEOUT_S + 5) -> HardwareProfile:
        if self._thread is None:
            self.start()
        if not self._done.wait(timeout_s):
            base = self._profile
            return replace(base, notes=(*base.notes, "the hardware probe is still running"))
        mem = int(psutil.virtual_memory().available)
        return replace(self._profile, memory_available=mem)

    def refresh(self, timeout_s: float = PROBE_TIMEOUT_S + 5) -> HardwareProfile:
        self._done.wait(timeout_s)  # let a running probe finish first
        self._thread = None
        self.start()
        return self.profile(timeout_s)
