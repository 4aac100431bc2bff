"""llama.cpp's RPC backend through ctypes: serve this machine's CPU to other
daemons (``edged rpc-worker``) and use such servers as devices for a model.

Everything here is ggml's own code (``libggml-rpc`` from the llama-cpp-python
build with ``-DGGML_RPC=ON``); edged only finds the library, checks endpoints
and passes the devices to llama.cpp. The RPC protocol has no authentication
and no encryption: see the README's "RPC workers" section.

Imports llama_cpp (to find its libraries): call it in a worker process or the
``rpc-worker`` command, never in the daemon.
"""

from __future__ import annotations

import ctypes
import socket
from pathlib import Path
from typing import Any

from edged.common.endpoints import MAX_SERVERS, endpoints, is_loopback, parse_endpoint
from edged.common.errors import FailedPrecondition, Unavailable

__all__ = ["MAX_SERVERS", "endpoints", "is_loopback", "parse_endpoint"]

GGML_BACKEND_DEVICE_TYPE_CPU = 0
CONNECT_TIMEOUT_S = 3.0
REBUILD_HINT = (
    "this llama-cpp-python was built without llama.cpp's RPC backend; rebuild it with "
    "./install.sh without EDGED_LLAMA_RPC=0 (it builds and caches a wheel with -DGGML_RPC=ON)"
)

_LIB: Any = None


def library() -> Any:
    """ggml's RPC library as the loaded llama_cpp uses it (FailedPrecondition if absent)."""
    global _LIB
    if _LIB is not None:
        return _LIB
    import llama_cpp  # the package whose libggml this must match

    libdir = Path(llama_cpp.__file__).parent / "lib"
    found = sorted(libdir.glob("libggml-rpc.so*")) + sorted(libdir.glob("ggml-rpc.dll"))
    found += sorted(libdir.glob("libggml-rpc.dylib"))
    if not found:
        raise FailedPrecondition(REBUILD_HINT)
    lib = ctypes.CDLL(str(found[0]), mode=ctypes.RTLD_GLOBAL)
    lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    lib.ggml_backend_rpc_start_server.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    lib.ggml_backend_rpc_start_server.restype = None
    base = ctypes.CDLL(str(_sibling(libdir, "libggml-base")), mode=ctypes.RTLD_GLOBAL)
    base.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    base.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    base.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    base.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_name.restype = ctypes.c_char_p
    base.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    base.ggml_backend_dev_memory.restype = None
    ggml = ctypes.CDLL(str(_sibling(libdir, "libggml")), mode=ctypes.RTLD_GLOBAL)
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    _LIB = (lib, base, ggml)
    return _LIB


def _sibling(libdir: Path, stem: str) -> Path:
    for pattern in (
        f"{stem}.so",
        f"{stem}.so.*",
        f"{stem}.dylib",
        f"{stem.removeprefix('lib')}.dll",
    ):
        hits = sorted(libdir.glob(pattern))
        if hits:
            return hits[0]
    raise FailedPrecondition(f"llama_cpp's {stem} library is missing from {libdir}")


def check_reachable(endpoint: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Unavailable naming the endpoint when nothing accepts a connection there."""
    host, port = parse_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise Unavailable(
            f"the RPC worker {endpoint} is not reachable ({exc.strerror or exc}); start it "
            f"there with `edged rpc-worker --listen {endpoint}` or remove it from EDGED_RPC "
            "(or the model's rpc setting)"
        ) from None


def devices(servers: tuple[str, ...]) -> list[tuple[str, int]]:
    """Add each server to ggml's RPC backend and return its devices as (name,
    handle) pairs, in order; each server is checked to be reachable first."""
    lib, base, _ = library()
    out: list[tuple[str, int]] = []
    for endpoint in servers:
        check_reachable(endpoint)
        reg = lib.ggml_backend_rpc_add_server(endpoint.encode())
        if not reg:
            raise Unavailable(f"llama.cpp could not add the RPC worker {endpoint}")
        for i in range(base.ggml_backend_reg_dev_count(reg)):
            dev = base.ggml_backend_reg_dev_get(reg, i)
            name = base.ggml_backend_dev_name(dev) or b"rpc"
            out.append((name.decode(errors="replace"), int(dev)))
    return out


def device_array(handles: list[int]) -> Any:
    """A NULL-terminated ``ggml_backend_dev_t[]`` for llama_model_params.devices
    (keep the returned array alive while the model loads)."""
    arr = (ctypes.c_void_p * (len(handles) + 1))(*handles, None)
    return arr


def serve(endpoint: str, *, threads: int, cache_dir: str | None) -> None:
    """Run ggml's RPC server on ``endpoint`` with this machine's CPU (blocks)."""
    lib, _, ggml = library()
    cpu = ggml.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    if not cpu:
        raise FailedPrecondition("llama.cpp found no CPU device to serve")
    devs = (ctypes.c_void_p * 1)(cpu)
    lib.ggml_backend_rpc_start_server(
        endpoint.encode(), cache_dir.encode() if cache_dir else None, threads, 1, devs
    )
