"""Hardware detection and backend selection (``edged hw``).

- :mod:`.profile`: the :class:`HardwareProfile` value (JSON-able).
- :mod:`.probes`: reading the machine; optional probes run in child processes
  (:mod:`.probe_child`) under a timeout; :class:`HardwareMonitor` caches them.
- :mod:`.select`: the pure ranking function :func:`rank_backends`.
- :mod:`.report`: the protobuf views System.Hardware and Models.Show serve.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from .probes import HardwareMonitor, basic_profile, probe
from .profile import AcceleratorDevice, HardwareProfile, IsaFeature, NvidiaGpu
from .select import BackendSpec, Choice, Overrides, VariantInfo, pick_overrides, rank_backends

__all__ = [
    "AcceleratorDevice",
    "BackendSpec",
    "Choice",
    "HardwareMonitor",
    "HardwareProfile",
    "IsaFeature",
    "NvidiaGpu",
    "Overrides",
    "VariantInfo",
    "basic_profile",
    "llama_cuda_built",
    "pick_overrides",
    "probe",
    "rank_backends",
    "registry_backends",
    "select_backends",
]


def registry_backends(installed: Iterable[str] | None = None) -> tuple[BackendSpec, ...]:
    """The registry's backends as :class:`BackendSpec` (``installed``: names
    known to be installed; None probes with find_spec)."""
    from importlib.metadata import PackageNotFoundError, version

    from edged.backends.registry import BACKENDS, is_installed

    have = set(installed) if installed is not None else None
    out = []
    for b in BACKENDS:
        ok = b.name in have if have is not None else is_installed(b)
        try:
            ver = version(_DISTRIBUTIONS.get(b.name, b.module)) if ok else ""
        except PackageNotFoundError:
            ver = ""
        out.append(BackendSpec(b.name, tuple(b.formats), ok, b.install_hint, ver))
    return tuple(out)


_DISTRIBUTIONS = {
    "llama.cpp": "llama-cpp-python",
    "onnxruntime": "onnxruntime-genai",
    "openvino": "openvino-genai",
}


def llama_cuda_built() -> bool:
    """Whether the installed llama.cpp library was built with CUDA (file check only)."""
    import importlib.util
    from pathlib import Path

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
    """Older entry point (the scheduler's fallback): rank by formats only."""
    variants = [VariantInfo(f, f, 0) for f in dict.fromkeys(formats)]
    hw = replace(hw, llama_gpu_offload=hw.llama_gpu_offload or llama_cuda)
    return rank_backends(
        hw, variants, registry_backends(installed), context_length=4096, sequences=1
    )
