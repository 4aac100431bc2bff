"""The install's llama.cpp build flags: AMX never on, ISA from the kernel's view,
CUDA when the toolkit and a GPU are there (probes faked: no GPU in CI)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

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
    args = llama_build.cmake_args(CPUINFO_AMX, "x86_64")
    assert "-DGGML_NATIVE=OFF" in args
    assert "-DGGML_AMX_TILE=OFF" in args and "-DGGML_AMX_INT8=OFF" in args
    assert "-DGGML_AVX2=ON" in args and "-DGGML_AVX512=ON" in args


def test_missing_features_are_off() -> None:
    args = llama_build.cmake_args(CPUINFO_OLD, "x86_64")
    assert "-DGGML_AVX=ON" in args and "-DGGML_AVX2=OFF" in args and "-DGGML_FMA=OFF" in args


def test_arm_keeps_native() -> None:
    args = llama_build.cmake_args(None, "aarch64")
    assert "-DGGML_NATIVE=OFF" not in args


NVCC_VERSION = (
    "nvcc: NVIDIA (R) Cuda compiler driver\n"
    "Cuda compilation tools, release 12.4, V12.4.131\n"
    "Build cuda_12.4.r12.4/compiler.34097967_0\n"
)
SMI_L = (
    "GPU 0: NVIDIA GeForce RTX 3060 (UUID: GPU-0a1b)\n"
    "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2c3d)\n"
)


class FakeMachine:
    """Answers the probes like a machine with the given pieces installed."""

    def __init__(
        self,
        *,
        path: dict[str, str] | None = None,
        files: set[str] | None = None,
        outputs: dict[str, str | None] | None = None,
    ) -> None:
        self.path = path or {}
        self.files = files or set()
        self.outputs = outputs or {}
        self.ran: list[list[str]] = []

    def which(self, name: str) -> str | None:
        return self.path.get(name)

    def is_file(self, path: str) -> bool:
        return path in self.files

    def run(self, cmd: list[str]) -> str | None:
        self.ran.append(cmd)
        return self.outputs.get(" ".join(cmd[1:]))


def cuda_machine(caps: str | None = "8.6\n9.0\n") -> FakeMachine:
    outputs: dict[str, str | None] = {"--version": NVCC_VERSION, "-L": SMI_L}
    outputs["--query-gpu=compute_cap --format=csv,noheader"] = caps
    return FakeMachine(
        path={"nvcc": "/usr/bin/nvcc", "nvidia-smi": "/usr/bin/nvidia-smi"}, outputs=outputs
    )


def choose(machine: FakeMachine, env: dict[str, str], tmp_path: Path) -> llama_build.CudaChoice:
    probe = llama_build.probe_cuda(
        env, machine.which, machine.is_file, machine.run, proc_driver=tmp_path / "nvidia"
    )
    return llama_build.decide_cuda(env, probe, machine.which)


def test_gpu_and_toolkit_build_cuda_for_the_gpus_architectures(tmp_path: Path) -> None:
    choice = choose(cuda_machine(), {}, tmp_path)
    args = llama_build.cmake_args(CPUINFO_AMX, "x86_64", choice)
    assert "-DGGML_CUDA=ON" in args
    assert "-DCMAKE_CUDA_ARCHITECTURES=86;90" in args
    assert "-DGGML_AMX_TILE=OFF" in args  # the CPU side keeps its rules
    assert not any(a.startswith("-DCMAKE_CUDA_COMPILER") for a in args)  # nvcc is on PATH
    assert choice.reason.startswith("CUDA: nvcc 12.4 at /usr/bin/nvcc")
    assert "NVIDIA H100 80GB HBM3" in choice.reason and "8.6, 9.0" in choice.reason
    assert choice.toolkit == "12.4"


def test_unknown_compute_capability_lets_cmake_ask_the_gpu(tmp_path: Path) -> None:
    choice = choose(cuda_machine(caps=None), {}, tmp_path)
    assert "-DCMAKE_CUDA_ARCHITECTURES=native" in choice.cmake_args()


def test_toolkit_without_gpu_builds_for_cpu(tmp_path: Path) -> None:
    machine = FakeMachine(path={"nvcc": "/usr/bin/nvcc"}, outputs={"--version": NVCC_VERSION})
    choice = choose(machine, {}, tmp_path)
    assert not choice.enabled and choice.cmake_args() == []
    assert "no NVIDIA driver/GPU" in choice.reason and "EDGED_LLAMA_CUDA=1" in choice.reason


def test_gpu_without_toolkit_builds_for_cpu(tmp_path: Path) -> None:
    machine = FakeMachine(path={"nvidia-smi": "/usr/bin/nvidia-smi"}, outputs={"-L": SMI_L})
    choice = choose(machine, {}, tmp_path)
    assert not choice.enabled
    assert "no CUDA toolkit" in choice.reason


def test_toolkit_under_cuda_home_and_driver_from_proc(tmp_path: Path) -> None:
    (tmp_path / "nvidia" / "gpus" / "0000:01:00.0").mkdir(parents=True)
    machine = FakeMachine(files={"/opt/cuda-12/bin/nvcc"}, outputs={"--version": NVCC_VERSION})
    choice = choose(machine, {"CUDA_HOME": "/opt/cuda-12"}, tmp_path)
    assert choice.enabled
    # nvcc is not on PATH, so CMake is told where it is; no nvidia-smi: ask the GPU
    assert choice.cmake_args() == [
        "-DGGML_CUDA=ON",
        "-DCMAKE_CUDA_ARCHITECTURES=native",
        "-DCMAKE_CUDA_COMPILER=/opt/cuda-12/bin/nvcc",
    ]
    assert str(tmp_path / "nvidia") in choice.reason


def test_empty_proc_driver_dir_is_no_gpu(tmp_path: Path) -> None:
    (tmp_path / "nvidia" / "gpus").mkdir(parents=True)
    machine = FakeMachine(path={"nvcc": "/usr/bin/nvcc"}, outputs={"--version": NVCC_VERSION})
    assert not choose(machine, {}, tmp_path).enabled


def test_env_forces_off_even_with_gpu(tmp_path: Path) -> None:
    choice = choose(cuda_machine(), {"EDGED_LLAMA_CUDA": "0"}, tmp_path)
    assert not choice.enabled and "EDGED_LLAMA_CUDA=0" in choice.reason
    assert "-DGGML_CUDA=ON" not in llama_build.cmake_args(CPUINFO_AMX, "x86_64", choice)


def test_env_forces_on_without_gpu(tmp_path: Path) -> None:
    machine = FakeMachine(path={"nvcc": "/usr/bin/nvcc"}, outputs={"--version": NVCC_VERSION})
    choice = choose(machine, {"EDGED_LLAMA_CUDA": "1"}, tmp_path)
    # no GPU to ask: no architecture given, ggml builds its default list
    assert choice.cmake_args() == ["-DGGML_CUDA=ON"]
    assert "forced by EDGED_LLAMA_CUDA=1" in choice.reason and "no GPU visible" in choice.reason


def test_env_forced_on_without_nvcc_says_the_build_will_fail(tmp_path: Path) -> None:
    choice = choose(FakeMachine(), {"EDGED_LLAMA_CUDA": "1"}, tmp_path)
    assert choice.enabled and "nvcc NOT found" in choice.reason


def test_bad_env_value_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="EDGED_LLAMA_CUDA must be 0 or 1, got 'yes'"):
        choose(cuda_machine(), {"EDGED_LLAMA_CUDA": "yes"}, tmp_path)


def test_hung_or_failing_probes_mean_no_cuda(tmp_path: Path) -> None:
    machine = FakeMachine(path={"nvcc": "/usr/bin/nvcc", "nvidia-smi": "/usr/bin/nvidia-smi"})
    probe = llama_build.probe_cuda(
        {}, machine.which, machine.is_file, machine.run, proc_driver=tmp_path / "none"
    )
    # nvidia-smi answered nothing (a timeout or a driver mismatch): no driver seen
    assert probe.driver is None and probe.nvcc_version is None
    assert not llama_build.decide_cuda({}, probe, machine.which).enabled


def test_probe_output_parsers() -> None:
    assert llama_build.nvcc_release(NVCC_VERSION) == "12.4"
    assert llama_build.nvcc_release("garbage") is None
    assert llama_build.compute_caps("8.9\n[N/A]\n\n12.0\n") == ("8.9", "12.0")


def test_cache_key_depends_on_flags_cuda_architecture_and_toolkit(tmp_path: Path) -> None:
    cpu = llama_build.CPU_ONLY
    cuda = choose(cuda_machine(), {}, tmp_path)
    native = choose(cuda_machine(caps=None), {}, tmp_path)

    def key(cpuinfo: str, choice: llama_build.CudaChoice, toolkit: str | None = None) -> str:
        args = llama_build.cmake_args(cpuinfo, "x86_64", choice)
        return str(llama_build.build_key(args, toolkit))

    keys = {
        key(CPUINFO_AMX, cpu),
        key(CPUINFO_OLD, cpu),
        key(CPUINFO_AMX, cuda, cuda.toolkit),
        key(CPUINFO_AMX, native, native.toolkit),
        key(CPUINFO_AMX, cuda, "13.0"),
    }
    assert len(keys) == 5
    # a CPU-only key is stable: wheels cached before CUDA support stay valid
    assert key(CPUINFO_AMX, cpu) == llama_build.build_key(
        llama_build.cmake_args(CPUINFO_AMX, "x86_64")
    )


def test_this_machine_auto_choice_is_explained() -> None:
    """The real probes on this machine: whatever they find, a reason is given
    and the flags agree with it (CI has nvcc here but no GPU: CPU only)."""
    choice = llama_build.decide_cuda({}, llama_build.probe_cuda({}))
    assert choice.reason.startswith("CUDA:" if choice.enabled else "CPU only:")
    assert ("-DGGML_CUDA=ON" in choice.cmake_args()) == choice.enabled


def test_rpc_backend_is_built_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGED_LLAMA_RPC", "0")
    plain = llama_build.cmake_args(CPUINFO_AMX, "x86_64")
    assert "-DGGML_RPC=ON" not in plain
    monkeypatch.delenv("EDGED_LLAMA_RPC", raising=False)
    assert llama_build.cmake_args(CPUINFO_AMX, "x86_64") == [*plain, "-DGGML_RPC=ON"]
    monkeypatch.setenv("EDGED_LLAMA_RPC", "1")
    with_rpc = llama_build.cmake_args(CPUINFO_AMX, "x86_64")
    assert with_rpc == [*plain, "-DGGML_RPC=ON"]
    assert llama_build.build_key(with_rpc) != llama_build.build_key(plain)
    monkeypatch.setenv("EDGED_LLAMA_RPC", "yes")
    with pytest.raises(SystemExit, match="EDGED_LLAMA_RPC must be 0 or 1"):
        llama_build.cmake_args(CPUINFO_AMX, "x86_64")


def test_source_patches_apply_exactly_once_or_stop_the_build(tmp_path: Path) -> None:
    patch = llama_build.SourcePatch("p", "src/a.cpp", "nek1 >= 512;", "nek1 >= 512 && false;")
    (tmp_path / "src").mkdir()
    target = tmp_path / "src" / "a.cpp"
    target.write_text("x; nek1 >= 512; y;\n")
    llama_build.apply_patches(tmp_path, (patch,))
    assert target.read_text() == "x; nek1 >= 512 && false; y;\n"
    # applied again it matches nothing: a moved or already changed source stops
    with pytest.raises(SystemExit, match=r"'p' does not apply to src/a\.cpp \(found 0"):
        llama_build.apply_patches(tmp_path, (patch,))
    target.write_text("nek1 >= 512; nek1 >= 512;\n")
    with pytest.raises(SystemExit, match="found 2 matches"):
        llama_build.apply_patches(tmp_path, (patch,))


def test_the_patches_are_in_the_cache_key_and_marked_in_the_package() -> None:
    args = llama_build.cmake_args(CPUINFO_AMX, "x86_64")
    key = llama_build.build_key(args)
    names = [p.name for p in llama_build.SOURCE_PATCHES]
    assert "fa-no-split-kv" in names
    marker = next(p for p in llama_build.SOURCE_PATCHES if p.path == "llama_cpp/__init__.py")
    # the marker edged reads at run time names the attention patches
    assert '"fa-no-split-kv", "fa-no-tiles"' in marker.new
    saved = llama_build.SOURCE_PATCHES
    try:
        llama_build.SOURCE_PATCHES = ()
        assert llama_build.build_key(args) != key
    finally:
        llama_build.SOURCE_PATCHES = saved
