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

RPC: the build adds ``-DGGML_RPC=ON`` (llama.cpp's RPC backend,
``libggml-rpc``, for ``edged rpc-worker`` and ``EDGED_RPC``) unless
``EDGED_LLAMA_RPC=0``; it is part of the wheel-cache key like every CMake
argument. The library only adds a client and a server entry point; nothing
listens unless ``edged rpc-worker`` is run.

CUDA: when the CUDA toolkit (nvcc on PATH, or under CUDA_HOME, CUDA_PATH or
/usr/local/cuda) and an NVIDIA driver with a GPU (nvidia-smi, or
/proc/driver/nvidia/gpus) are both present, the build adds ``GGML_CUDA=ON`` and
``CMAKE_CUDA_ARCHITECTURES`` from the GPUs' compute capability (``native`` when
nvidia-smi cannot say). ``EDGED_LLAMA_CUDA=0``/``1`` forces it off/on. The
choice and its reason are printed; the wheel-cache key includes the CUDA flags
and the toolkit version.

Converter: ``edged convert MODEL --to gguf`` runs llama.cpp's own
``convert_hf_to_gguf.py`` with its ``conversion/`` package and ``gguf-py``, taken
from the same pinned sources (the sdist's ``vendor/llama.cpp/``). They are
extracted into ``converter_cache_dir()`` (``~/.cache/edged/llama.cpp-convert/
VERSION/``, XDG_CACHE_HOME respected; edged looks there), from the sdist the wheel
is built from, or from one ``pip download`` of the sdist when the wheel is cached
and the converter is not.

Source patches: the sdist is unpacked and :data:`SOURCE_PATCHES` applied before
the build (each one a literal replacement that must match exactly once, so a
new pinned version that moved the code fails loudly instead of building
unpatched). Their names are part of the wheel-cache key and are recorded in the
installed package as ``llama_cpp.EDGED_PATCHES``, where edged checks for them.

This module is stdlib-only: it runs before edged itself is installed.
Usage: ``python installer/llama_build.py [--print-args] [--print-version] [--rebuild]
[--converter-only]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"


@dataclass(frozen=True)
class SourcePatch:
    """One literal replacement in the unpacked sdist."""

    name: str
    path: str  # relative to the sdist's top folder
    old: str
    new: str


# Batch-invariant attention. ggml's CPU flash attention has three paths: a lone
# sequence's one-row decode splits the KV cache across threads (once the cache
# holds 512 or more cells) and joins the parts; 64 or more rows of a sequence in
# one step go through a tiled kernel; everything else computes row by row over
# the whole cache. Their sums differ (measured on SmolLM2: logits up to 0.8
# apart), so a temperature-0 reply would depend on what shared its batch, on
# whether speculative drafts were verified with it, and on how its prompt was
# cut into steps beside other streams. The patches put a switch on the first
# two paths, read once per process from EDGED_BATCH_INVARIANT:
#   0  stock llama.cpp;
#   1  (unset) no split: up to 63 rows of a sequence in a step give the logits
#      one-token decodes give at any position (speculation is exact
#      everywhere), at the cost of the split's parallelism for a lone stream;
#   2  no tiles either: every shape gives the same logits (a prompt's last
#      token goes with the rest, a reply does not depend on how its prompt was
#      cut), at the cost of the tiles' prefill speed in long prompts.
# tests/integration/test_native_logits.py checks them; bench/README.md
# ("batch_invariant") measures the costs.
_OPS = "vendor/llama.cpp/ggml/src/ggml-cpu/ops.cpp"
_INVARIANT_SWITCH = """#include <cstdlib>

// edged: batch-invariant attention, EDGED_BATCH_INVARIANT=0|1|2 (unset: 1)
static int edged_batch_invariant() {
    static const int level = [] {
        const char * v = std::getenv("EDGED_BATCH_INVARIANT");
        return v == nullptr || v[0] == 0 ? 1 : std::atoi(v);
    }();
    return level;
}

static void ggml_compute_forward_flash_attn_ext_f16("""
SOURCE_PATCHES: tuple[SourcePatch, ...] = (
    SourcePatch(
        "fa-no-split-kv",
        _OPS,
        "q->type == GGML_TYPE_F32 && nek1 >= 512;",
        "q->type == GGML_TYPE_F32 && nek1 >= 512 && edged_batch_invariant() < 1;",
    ),
    SourcePatch(
        "fa-no-tiles",
        _OPS,
        "neq1 >= Q_TILE_SZ);",
        "neq1 >= Q_TILE_SZ) && edged_batch_invariant() < 2;",
    ),
    SourcePatch(
        "fa-no-split-kv-switch",
        _OPS,
        "static void ggml_compute_forward_flash_attn_ext_f16(",
        _INVARIANT_SWITCH,
    ),
    SourcePatch(
        "marker",
        "llama_cpp/__init__.py",
        '__version__ = "',
        'EDGED_PATCHES = ("fa-no-split-kv", "fa-no-tiles")\n__version__ = "',
    ),
)


def apply_patches(top: Path, patches: tuple[SourcePatch, ...] = SOURCE_PATCHES) -> None:
    """Apply ``patches`` under the unpacked sdist ``top``; SystemExit when one does
    not match exactly once."""
    for patch in patches:
        path = top / patch.path
        text = path.read_text(encoding="utf-8")
        if text.count(patch.old) != 1:
            raise SystemExit(
                f"edged: source patch {patch.name!r} does not apply to {patch.path} "
                f"(found {text.count(patch.old)} matches, expected 1)"
            )
        path.write_text(text.replace(patch.old, patch.new), encoding="utf-8")
        print(f"edged: applied source patch {patch.name} to {patch.path}", flush=True)


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


# Where a CUDA toolkit lives when nvcc is not on PATH (checked in this order).
_CUDA_HOME_VARS = ("CUDA_HOME", "CUDA_PATH")
_CUDA_DEFAULT_HOME = "/usr/local/cuda"


@dataclass(frozen=True)
class CudaProbe:
    """What this machine has for a CUDA build (each field from one probe)."""

    nvcc: str | None = None  # path of the CUDA compiler
    nvcc_version: str | None = None  # "12.4" from ``nvcc --version``
    driver: str | None = None  # how the driver was seen: "nvidia-smi", "/proc/driver/nvidia"
    gpus: tuple[str, ...] = ()  # GPU names from ``nvidia-smi -L``
    compute_caps: tuple[str, ...] = ()  # "9.0" per GPU, from nvidia-smi


@dataclass(frozen=True)
class CudaChoice:
    """Whether the build uses CUDA, for which GPU architectures, and why."""

    enabled: bool
    reason: str
    architectures: str | None = None  # CMAKE_CUDA_ARCHITECTURES; None: ggml's default list
    compiler: str | None = None  # CMAKE_CUDA_COMPILER when nvcc is not on PATH
    toolkit: str | None = None  # nvcc version: part of the wheel-cache key

    def cmake_args(self) -> list[str]:
        if not self.enabled:
            return []
        args = ["-DGGML_CUDA=ON"]
        if self.architectures:
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={self.architectures}")
        if self.compiler:
            args.append(f"-DCMAKE_CUDA_COMPILER={self.compiler}")
        return args


CPU_ONLY = CudaChoice(enabled=False, reason="CPU only")

Runner = Callable[[list[str]], str | None]


def _run_quiet(cmd: list[str]) -> str | None:
    """stdout of ``cmd``, or None when it is missing, fails or hangs."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def find_nvcc(
    env: Mapping[str, str],
    which: Callable[[str], str | None] = shutil.which,
    is_file: Callable[[str], bool] = os.path.isfile,
) -> tuple[str | None, bool]:
    """(path of nvcc, whether it is on PATH): PATH first, then CUDA_HOME/CUDA_PATH."""
    on_path = which("nvcc")
    if on_path:
        return on_path, True
    exe = "nvcc.exe" if os.name == "nt" else "nvcc"
    homes = [env.get(var, "") for var in _CUDA_HOME_VARS] + [_CUDA_DEFAULT_HOME]
    for home in homes:
        if home:
            candidate = os.path.join(home, "bin", exe)
            if is_file(candidate):
                return candidate, False
    return None, False


def nvcc_release(version_text: str) -> str | None:
    """ "12.4" from ``nvcc --version`` ("Cuda compilation tools, release 12.4, V12.4.131")."""
    for line in version_text.splitlines():
        _, found, rest = line.partition("release ")
        if found:
            return rest.split(",")[0].strip() or None
    return None


def compute_caps(csv: str) -> tuple[str, ...]:
    """Compute capabilities from ``nvidia-smi --query-gpu=compute_cap --format=csv,noheader``."""
    caps: list[str] = []
    for line in csv.splitlines():
        value = line.strip()
        major, dot, minor = value.partition(".")
        if dot and major.isdigit() and minor.isdigit():
            caps.append(value)
    return tuple(caps)


def probe_cuda(
    env: Mapping[str, str],
    which: Callable[[str], str | None] = shutil.which,
    is_file: Callable[[str], bool] = os.path.isfile,
    run: Runner = _run_quiet,
    proc_driver: Path = Path("/proc/driver/nvidia"),
) -> CudaProbe:
    """Look for the CUDA toolkit, the NVIDIA driver and the GPUs (each probe optional)."""
    nvcc, _ = find_nvcc(env, which, is_file)
    version = None
    if nvcc is not None:
        text = run([nvcc, "--version"])
        version = nvcc_release(text) if text else None
    driver = None
    gpus: tuple[str, ...] = ()
    caps: tuple[str, ...] = ()
    smi = which("nvidia-smi")
    if smi is not None:
        listing = run([smi, "-L"])
        if listing is not None:
            driver = "nvidia-smi"
            gpus = tuple(
                line.split(":", 1)[1].split("(UUID")[0].strip()
                for line in listing.splitlines()
                if line.startswith("GPU ") and ":" in line
            )
            query = run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"])
            caps = compute_caps(query) if query else ()
    if driver is None and (proc_driver / "gpus").is_dir() and any((proc_driver / "gpus").iterdir()):
        driver = str(proc_driver)
    return CudaProbe(nvcc=nvcc, nvcc_version=version, driver=driver, gpus=gpus, compute_caps=caps)


def _architectures(probe: CudaProbe) -> str | None:
    if probe.compute_caps:
        return ";".join(sorted({cap.replace(".", "") for cap in probe.compute_caps}, key=int))
    # A GPU this machine can see but whose capability nvidia-smi did not say
    # (old driver): CMake asks the GPU itself. No GPU visible: ggml's own list.
    return "native" if probe.driver else None


def decide_cuda(
    env: Mapping[str, str],
    probe: CudaProbe,
    which: Callable[[str], str | None] = shutil.which,
) -> CudaChoice:
    """Whether to build with CUDA (pure given the probe; table-tested).

    ``EDGED_LLAMA_CUDA=0`` forces a CPU build, ``=1`` a CUDA build; unset, CUDA
    is used when both the toolkit (nvcc) and the driver with a GPU are present.
    """
    forced = env.get("EDGED_LLAMA_CUDA", "").strip()
    if forced not in ("", "0", "1"):
        raise SystemExit(f"edged: EDGED_LLAMA_CUDA must be 0 or 1, got {forced!r}")
    if forced == "0":
        return CudaChoice(enabled=False, reason="CPU only: EDGED_LLAMA_CUDA=0")
    compiler = probe.nvcc if probe.nvcc and which("nvcc") is None else None
    toolkit = f"nvcc {probe.nvcc_version or 'unknown version'} at {probe.nvcc}"
    gpu = ", ".join(probe.gpus) or "an NVIDIA GPU"
    if probe.compute_caps:
        gpu += f" (compute capability {', '.join(probe.compute_caps)})"
    if forced == "1":
        found = toolkit if probe.nvcc else "nvcc NOT found: the build will fail"
        seen = gpu if probe.driver else "no GPU visible: ggml's default architecture list"
        return CudaChoice(
            enabled=True,
            reason=f"CUDA: forced by EDGED_LLAMA_CUDA=1; {found}; {seen}",
            architectures=_architectures(probe),
            compiler=compiler,
            toolkit=probe.nvcc_version or "unknown",
        )
    if probe.nvcc is None:
        missing = "no CUDA toolkit (nvcc not on PATH, nor under CUDA_HOME, CUDA_PATH, "
        return CudaChoice(enabled=False, reason=f"CPU only: {missing}{_CUDA_DEFAULT_HOME})")
    if probe.driver is None:
        return CudaChoice(
            enabled=False,
            reason=f"CPU only: {toolkit} but no NVIDIA driver/GPU "
            "(no nvidia-smi, no /proc/driver/nvidia/gpus); EDGED_LLAMA_CUDA=1 forces CUDA",
        )
    return CudaChoice(
        enabled=True,
        reason=f"CUDA: {toolkit}; {gpu} via {probe.driver}",
        architectures=_architectures(probe),
        compiler=compiler,
        toolkit=probe.nvcc_version or "unknown",
    )


def cmake_args(cpuinfo: str | None, machine: str, cuda: CudaChoice = CPU_ONLY) -> list[str]:
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
    args += cuda.cmake_args()
    args += rpc_args(os.environ)
    extra = os.environ.get("EDGED_LLAMA_CMAKE_ARGS", "").split()
    return args + extra


def rpc_args(env: Mapping[str, str]) -> list[str]:
    """llama.cpp's RPC backend (libggml-rpc: `edged rpc-worker` and EDGED_RPC
    need it) is built unless ``EDGED_LLAMA_RPC=0``: a default build can split a
    model over RPC workers, and the tests of that run everywhere."""
    value = env.get("EDGED_LLAMA_RPC", "").strip()
    if value not in ("", "0", "1"):
        raise SystemExit(f"edged: EDGED_LLAMA_RPC must be 0 or 1, got {value!r}")
    return [] if value == "0" else ["-DGGML_RPC=ON"]


def build_key(args: list[str], toolkit: str | None = None) -> str:
    """The wheel-cache key: the version, Python, machine, CMake arguments, the
    source patches and, for a CUDA build, the toolkit (nvcc version)."""
    cuda = [f"cuda-toolkit={toolkit}"] if toolkit else []
    material = "\n".join(
        [
            LLAMA_CPP_PYTHON_VERSION,
            sys.implementation.cache_tag or "",
            platform.machine(),
            *sorted(args),
            *cuda,
            *(f"patch={p.name}:{p.path}:{p.old!r}:{p.new!r}" for p in SOURCE_PATCHES),
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def wheel_cache_dir() -> Path:
    base = os.environ.get("EDGED_WHEEL_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "edged" / "wheels"


# What edged's GGUF conversion needs from the sdist's vendor/llama.cpp/.
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py")
CONVERTER_MARK = ".complete"


def converter_cache_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Where the converter lives (edged.models_registry.convert_gguf looks here)."""
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "edged" / "llama.cpp-convert" / version


def converter_ready(target: Path) -> bool:
    return (target / CONVERTER_MARK).is_file() and all(
        (target / part).exists() for part in CONVERTER_PARTS
    )


def download_sdist(dest: Path) -> Path:
    """One ``pip download`` of the pinned llama-cpp-python sdist into ``dest``."""
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
            "-d",
            str(dest),
        ]
    )
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise SystemExit("edged: pip download left no llama-cpp-python sdist")
    return found[0]


def extract_converter(sdist: Path, target: Path) -> None:
    """Put the sdist's converter parts into ``target`` (whole or not at all)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp, tarfile.open(sdist) as tar:
        staging = Path(tmp) / "out"
        staging.mkdir()
        members = []
        for m in tar.getmembers():
            parts = Path(m.name).parts
            # <top>/vendor/llama.cpp/<part>/...
            if (
                len(parts) >= 4
                and parts[1:3] == ("vendor", "llama.cpp")
                and parts[3] in CONVERTER_PARTS
                and ".." not in parts
                and (m.isfile() or m.isdir())
            ):
                m.name = "/".join(parts[3:])
                members.append(m)
        names = {m.name.split("/")[0] for m in members}
        if names != set(CONVERTER_PARTS):
            raise SystemExit(f"edged: {sdist.name} lacks {set(CONVERTER_PARTS) - names}")
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: no links, no odd modes
            tar.extractall(staging, members=members, filter="data")
        else:  # only plain files and folders under checked names were kept
            tar.extractall(staging, members=members)
        (staging / CONVERTER_MARK).write_text(LLAMA_CPP_PYTHON_VERSION + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    print(f"edged: llama.cpp's GGUF converter is in {target}")


def unpack_sdist(sdist: Path, dest: Path) -> Path:
    """Unpack ``sdist`` into ``dest``; returns its one top folder."""
    dest.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: no links out, no odd modes
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)  # pip would unpack the same sdist
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise SystemExit(f"edged: {sdist.name} does not unpack into one folder")
    return tops[0]


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def ensure_wheel(
    args: list[str], rebuild: bool, toolkit: str | None = None, sdist: Path | None = None
) -> Path:
    key = build_key(args, toolkit)
    target = wheel_cache_dir() / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}-{key}"
    wheels = sorted(target.glob("llama_cpp_python-*.whl")) if target.is_dir() else []
    if wheels and not rebuild:
        print(f"edged: reusing llama-cpp-python wheel built for this machine: {wheels[0].name}")
        return wheels[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # scikit-build-core splits CMAKE_ARGS with shlex: quote (a CUDA_PATH has spaces)
    env["CMAKE_ARGS"] = " ".join(shlex.quote(arg) for arg in args)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    print(f"edged: building llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (takes minutes)")
    print(f"edged: CMAKE_ARGS={env['CMAKE_ARGS']}", flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if sdist is None:
            sdist = download_sdist(Path(tmp))
        source = unpack_sdist(sdist, Path(tmp) / "src")
        apply_patches(source)
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-cache-dir",
                "-w",
                tmp,
                str(source),
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


def ensure_converter(tmp: Path | None) -> Path | None:
    """Extract the converter unless cached; return the sdist downloaded for it (kept
    in ``tmp`` for the wheel build), or None."""
    target = converter_cache_dir()
    if converter_ready(target):
        print(f"edged: reusing llama.cpp's GGUF converter in {target}")
        return None
    if tmp is None:
        with tempfile.TemporaryDirectory() as own:
            extract_converter(download_sdist(Path(own)), target)
        return None
    sdist = download_sdist(tmp)
    extract_converter(sdist, target)
    return sdist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-args", action="store_true", help="print CMake args and exit")
    parser.add_argument(
        "--print-version", action="store_true", help="print the pinned llama-cpp-python version"
    )
    parser.add_argument("--rebuild", action="store_true", help="ignore the wheel cache")
    parser.add_argument("--wheel-only", action="store_true", help="build, do not install")
    parser.add_argument(
        "--converter-only",
        action="store_true",
        help="only put llama.cpp's GGUF converter into its cache",
    )
    ns = parser.parse_args(argv)
    if ns.print_version:
        print(LLAMA_CPP_PYTHON_VERSION)
        return 0
    if ns.converter_only:
        ensure_converter(None)
        return 0
    cpuinfo_path = Path("/proc/cpuinfo")
    cpuinfo = cpuinfo_path.read_text() if cpuinfo_path.exists() else None
    cuda = decide_cuda(os.environ, probe_cuda(os.environ))
    args = cmake_args(cpuinfo, platform.machine(), cuda)
    # the choice and why, on stderr with --print-args so stdout stays the args alone
    where = sys.stderr if ns.print_args else sys.stdout
    print(f"edged: llama.cpp build: {cuda.reason}", file=where, flush=True)
    if ns.print_args:
        print(" ".join(shlex.quote(arg) for arg in args))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        # One sdist download serves both the converter and, when needed, the build.
        sdist = ensure_converter(Path(tmp))
        wheel = ensure_wheel(args, ns.rebuild, cuda.toolkit, sdist)
    if not ns.wheel_only:
        _run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
