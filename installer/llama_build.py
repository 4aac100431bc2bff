"""Build and install a llama-cpp-python wheel that works on *this* machine.

Why this exists: llama-cpp-python ships no binary wheels on PyPI, so pip compiles
it. A default build uses ``GGML_NATIVE=ON`` (``-march=native``), which turns on
every instruction set the CPU *advertises* through CPUID, AMX included. On
machines whose kernel does not grant AMX to user processes the first decode
dies with SIGSEGV in ``ggml_backend_amx_mul_mat``. The kernel's own view of
usable features is ``/proc/cpuinfo``'s ``flags`` line (it hides ``amx_*`` when
AMX cannot be used), so we build with ``GGML_NATIVE=OFF`` and switch on exactly
the instruction sets listed there.

Second trap: pip caches a wheel it built from an sdist keyed by the sdist URL,
not by ``CMAKE_ARGS``; a machine that once built a crashing variant keeps
reinstalling it. We therefore build with ``--no-cache-dir`` into our own wheel
cache whose directory name is a hash of (version, Python, CMake arguments), and
install from there.

This module is stdlib-only: it runs before edged itself is installed.
Usage: ``python installer/llama_build.py [--print-args] [--rebuild]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"

# /proc/cpuinfo flag -> ggml CMake option. Order is irrelevant; the key is sorted.
_X86_FLAG_OPTIONS: dict[str, str] = {
    "sse4_2": "GGML_SSE42",
    "avx": "GGML_AVX",
    "avx2": "GGML_AVX2",
    "avx_vnni": "GGML_AVX_VNNI",
    "fma": "GGML_FMA",
    "f16c": "GGML_F16C",
    "bmi2": "GGML_BMI2",
    "avx512f": "GGML_AVX512",
    "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
}


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first CPU listed in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cuda_available() -> bool:
    """True when a CUDA toolkit and an NVIDIA driver with a GPU are present."""
    if os.environ.get("EDGED_LLAMA_CUDA") == "0":
        return False
    if os.environ.get("EDGED_LLAMA_CUDA") == "1":
        return True
    if shutil.which("nvcc") is None or shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def cmake_args(cpuinfo: str | None, machine: str, cuda: bool) -> list[str]:
    """The CMake arguments for this machine (pure: table-tested)."""
    args: list[str] = []
    if machine.lower() in {"x86_64", "amd64"} and cpuinfo is not None:
        flags = cpu_flags(cpuinfo)
        args.append("-DGGML_NATIVE=OFF")
        for flag, option in sorted(_X86_FLAG_OPTIONS.items(), key=lambda kv: kv[1]):
            args.append(f"-D{option}={'ON' if flag in flags else 'OFF'}")
        # AMX stays off: it is only usable when the kernel grants it, and it
        # buys nothing for the small quantized models edged targets on CPU.
        args += ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    if cuda:
        args.append("-DGGML_CUDA=ON")
    extra = os.environ.get("EDGED_LLAMA_CMAKE_ARGS", "").split()
    return args + extra


def build_key(args: list[str]) -> str:
    material = "\n".join(
        [
            LLAMA_CPP_PYTHON_VERSION,
            sys.implementation.cache_tag or "",
            platform.machine(),
            *sorted(args),
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def wheel_cache_dir() -> Path:
    base = os.environ.get("EDGED_WHEEL_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "edged" / "wheels"


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def ensure_wheel(args: list[str], rebuild: bool) -> Path:
    target = wheel_cache_dir() / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}-{build_key(args)}"
    wheels = sorted(target.glob("llama_cpp_python-*.whl")) if target.is_dir() else []
    if wheels and not rebuild:
        print(f"edged: reusing llama-cpp-python wheel built for this machine: {wheels[0].name}")
        return wheels[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["CMAKE_ARGS"] = " ".join(args)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    print(f"edged: building llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (takes minutes)")
    print(f"edged: CMAKE_ARGS={env['CMAKE_ARGS']}", flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-cache-dir",
                "--no-binary",
                "llama-cpp-python",
                "-w",
                tmp,
                f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
            ],
            env=env,
        )
        built = sorted(Path(tmp).glob("llama_cpp_python-*.whl"))
        if not built:
            raise SystemExit("edged: pip wheel produced no llama-cpp-python wheel")
        staging = Path(tmp) / "out"
        staging.mkdir()
        shutil.move(str(built[0]), staging / built[0].name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # the cache entry appears whole or not at all
    return target / built[0].name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-args", action="store_true", help="print CMake args and exit")
    parser.add_argument("--rebuild", action="store_true", help="ignore the wheel cache")
    parser.add_argument("--wheel-only", action="store_true", help="build, do not install")
    ns = parser.parse_args(argv)
    cpuinfo_path = Path("/proc/cpuinfo")
    cpuinfo = cpuinfo_path.read_text() if cpuinfo_path.exists() else None
    args = cmake_args(cpuinfo, platform.machine(), cuda_available())
    if ns.print_args:
        print(" ".join(args))
        return 0
    wheel = ensure_wheel(args, ns.rebuild)
    if not ns.wheel_only:
        _run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
