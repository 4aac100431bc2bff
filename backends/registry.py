"""Which backends exist, how to probe them cheaply, and how to build an engine.

Probing uses ``importlib.util.find_spec`` only: nothing heavy is imported until
a worker process actually loads a model.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from edged.backends.base import Engine, LoadSpec
from edged.daemon.errors import FailedPrecondition


@dataclass(frozen=True)
class BackendInfo:
    name: str
    formats: tuple[str, ...]
    module: str  # the Python distribution's import name
    engine: str  # "package.module:Class"
    install_hint: str


BACKENDS: tuple[BackendInfo, ...] = (
    BackendInfo(
        name="llama.cpp",
        formats=("gguf",),
        module="llama_cpp",
        engine="edged.backends.llamacpp.engine:LlamaEngine",
        install_hint="run ./install.sh (it builds llama-cpp-python for this CPU)",
    ),
    BackendInfo(
        name="onnxruntime",
        formats=("onnx",),
        module="onnxruntime_genai",
        engine="edged.backends.onnx.engine:OnnxEngine",
        install_hint="pip install 'edged[onnx]' (onnxruntime-genai)",
    ),
    BackendInfo(
        # Runs a GGUF directly (llama/qwen2/qwen3 architectures). Its engine also
        # loads an OpenVINO IR folder, but the store has no IR variant yet.
        name="openvino",
        formats=("gguf",),
        module="openvino_genai",
        engine="edged.backends.openvino.engine:OpenVinoEngine",
        install_hint="run ./install.sh --openvino (pip install 'edged[openvino]')",
    ),
)


def backend_info(name: str) -> BackendInfo:
    for info in BACKENDS:
        if info.name == name:
            return info
    known = ", ".join(b.name for b in BACKENDS)
    raise FailedPrecondition(f"unknown backend {name!r} (known: {known})")


def is_installed(info: BackendInfo) -> bool:
    return importlib.util.find_spec(info.module) is not None


def create_engine(name: str, spec: LoadSpec) -> Engine:
    info = backend_info(name)
    if not is_installed(info):
        raise FailedPrecondition(f"the {name} backend is not installed: {info.install_hint}")
    module_name, _, cls_name = info.engine.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    engine: Engine = cls(spec)
    return engine
