"""The install's llama.cpp build flags: AMX never on, ISA from the kernel's view."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "llama_build", Path(__file__).parents[2] / "installer" / "llama_build.py"
)
assert spec and spec.loader
llama_build = importlib.util.module_from_spec(spec)
sys.modules["llama_build"] = llama_build
spec.loader.exec_module(llama_build)

CPUINFO_AMX = (
    "processor : 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx512f amx_tile amx_int8\n"
)
CPUINFO_OLD = "processor : 0\nflags\t\t: fpu sse4_2 avx\n"


def test_native_off_and_amx_off_even_when_listed() -> None:
    args = llama_build.cmake_args(CPUINFO_AMX, "x86_64", cuda=False)
    assert "-DGGML_NATIVE=OFF" in args
    assert "-DGGML_AMX_TILE=OFF" in args and "-DGGML_AMX_INT8=OFF" in args
    assert "-DGGML_AVX2=ON" in args and "-DGGML_AVX512=ON" in args


def test_missing_features_are_off() -> None:
    args = llama_build.cmake_args(CPUINFO_OLD, "x86_64", cuda=False)
    assert "-DGGML_AVX=ON" in args and "-DGGML_AVX2=OFF" in args and "-DGGML_FMA=OFF" in args


def test_cache_key_depends_on_flags_and_cuda() -> None:
    a = llama_build.build_key(llama_build.cmake_args(CPUINFO_AMX, "x86_64", cuda=False))
    b = llama_build.build_key(llama_build.cmake_args(CPUINFO_OLD, "x86_64", cuda=False))
    c = llama_build.build_key(llama_build.cmake_args(CPUINFO_AMX, "x86_64", cuda=True))
    assert len({a, b, c}) == 3


def test_arm_keeps_native() -> None:
    args = llama_build.cmake_args(None, "aarch64", cuda=False)
    assert "-DGGML_NATIVE=OFF" not in args
