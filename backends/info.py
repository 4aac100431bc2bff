"""What a backend says about itself, without importing its library.

Each backend package (``backends/<name>/info.py``) defines one
:class:`BackendInfo`; :mod:`edged.backends.registry` lists them. Everything
the daemon needs to know about a backend (formats, devices, the CPU order,
memory tables, where its placement and probe code live, the names users
type) comes from here, so no other layer names a backend.

Hooks (``engine``, ``placement``, ``probe``, ``apply_probe``) are
``"module:attribute"`` strings, imported only when used: the engine in the
worker process, the probe in the probe child, the placement code when the
daemon ranks backends (light modules only).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import Any

MiB = 1 << 20


@dataclass(frozen=True)
class BackendInfo:
    name: str  # what users and the API call it: "llama.cpp"
    formats: tuple[str, ...]  # model formats it loads: ("gguf",)
    module: str  # the import name probed with find_spec (never imported to probe)
    distribution: str  # the PyPI distribution; its version keys calibrations
    engine: str  # "module:Class" built in the worker process
    install_hint: str  # what to run to install it
    devices: tuple[str, ...]  # device kinds edged's engine runs on: ("cpu", "cuda")
    # Without calibration the CPU backends rank by this (lower first).
    cpu_rank: int
    # Bytes per KV-cache element by device kind; the memory estimate uses it.
    kv_element_bytes: tuple[tuple[str, float], ...]
    # Resident memory of a worker process before the model (interpreter, edged,
    # the library), measured on this project's workers.
    runtime_bytes: int
    aliases: tuple[str, ...] = ()  # other names users type for it ("onnx")
    # A format edged can make from a model's GGUF for this backend (`edged
    # convert MODEL --to FORMAT`); `edged run --backend NAME` converts first.
    converts_to: str = ""
    # "module:function" returning this backend's choices on accelerators
    # (placement context -> list of Choice); "" when it runs on the CPU only.
    placement: str = ""
    # "module:function" run in the probe child process (imports the library;
    # returns a JSON-able dict), and "module:function" folding that answer
    # into the hardware profile (profile, answer -> profile).
    probe: str = ""
    apply_probe: str = ""
    # KV cache element types it can be asked for (edged.backends.base.KV_TYPES);
    # "f16" stands for the backend's own default KV (what kv_element_bytes sizes)
    kv_types: tuple[str, ...] = ("f16",)
    # How its answers are compared with a reference (edged.backends.fidelity),
    # imported in the fidelity child process only: "module:callable" opening a
    # TeacherForced source (path, *, window, batch, threads) when it can return
    # logits, and one opening a GreedySource (path, *, threads) for greedy
    # continuations; "" when it has none.
    teacher_forced: str = ""
    greedy: str = ""
    # "module:function" (path, text) -> token ids: a reference reads the text with it
    tokenizer: str = ""
    # "module:function" (source, dest, max_bytes) -> bytes: writes an exact-arithmetic
    # copy of a variant (its own weights, unquantized) that this backend can use as
    # the fidelity reference; run in the fidelity child process; "" when it has none
    exact_reference: str = ""
    # it can place layers on llama.cpp RPC workers (EDGED_RPC)
    rpc: bool = False

    def kv_bytes(self, device_kind: str, default: float = 2.0) -> float:
        return dict(self.kv_element_bytes).get(device_kind, default)


@cache
def load_hook(path: str) -> Any:
    """The attribute a ``"module:attribute"`` hook names (imported once)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
