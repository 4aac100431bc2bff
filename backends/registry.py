"""The backends edged has: the one list, and what callers ask of it.

Probing uses ``importlib.util.find_spec`` and package metadata only: nothing
heavy is imported until a worker process loads a model. Everything else in
edged asks this module (or a backend's :class:`~edged.backends.info.BackendInfo`)
instead of naming a backend.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from edged.backends.base import Engine, LoadSpec
from edged.backends.info import BackendInfo, load_hook
from edged.backends.llamacpp.info import INFO as LLAMA_CPP
from edged.backends.onnx.info import INFO as ONNX_RUNTIME
from edged.backends.openvino.info import INFO as OPENVINO
from edged.common.errors import FailedPrecondition, InvalidArgument

BACKENDS: tuple[BackendInfo, ...] = (LLAMA_CPP, ONNX_RUNTIME, OPENVINO)


def backend_info(name: str) -> BackendInfo:
    """The backend called ``name`` (its name or an alias); FailedPrecondition if none."""
    for info in BACKENDS:
        if name == info.name or name in info.aliases:
            return info
    raise FailedPrecondition(f"unknown backend {name!r} (known: {', '.join(names())})")


def check_name(name: str) -> str:
    """A backend name from a request or a setting: "" (choose) or a known
    backend's name (an alias is resolved); InvalidArgument otherwise."""
    if not name:
        return ""
    try:
        return backend_info(name).name
    except FailedPrecondition as exc:
        raise InvalidArgument(str(exc)) from None


def names(*, aliases: bool = False) -> list[str]:
    """Every backend's name (and the aliases users may type, when asked)."""
    out = [b.name for b in BACKENDS]
    if aliases:
        out += [a for b in BACKENDS for a in b.aliases]
    return out


def for_format(fmt: str) -> list[BackendInfo]:
    """The backends that load a variant of this format."""
    return [b for b in BACKENDS if fmt in b.formats]


def is_installed(info: BackendInfo) -> bool:
    return importlib.util.find_spec(info.module) is not None


def installed_names() -> tuple[str, ...]:
    return tuple(b.name for b in BACKENDS if is_installed(b))


@dataclass(frozen=True)
class Survey:
    """One backend on this machine: installed or not, and its library version."""

    info: BackendInfo
    installed: bool
    version: str = ""

    @property
    def name(self) -> str:
        return self.info.name


def survey(installed: Iterable[str] | None = None) -> tuple[Survey, ...]:
    """Every backend with whether it is installed (``installed``: the names known
    to be; None probes with find_spec) and its distribution's version."""
    have = set(installed) if installed is not None else None
    out = []
    for b in BACKENDS:
        ok = b.name in have if have is not None else is_installed(b)
        try:
            ver = version(b.distribution) if ok else ""
        except PackageNotFoundError:
            ver = ""
        out.append(Survey(b, ok, ver))
    return tuple(out)


def create_engine(name: str, spec: LoadSpec) -> Engine:
    """Build the engine (in the worker process: this imports the library)."""
    info = backend_info(name)
    if not is_installed(info):
        raise FailedPrecondition(f"the {info.name} backend is not installed: {info.install_hint}")
    engine: Engine = load_hook(info.engine)(spec)
    return engine
