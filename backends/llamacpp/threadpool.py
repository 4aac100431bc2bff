"""A persistent ggml CPU thread pool for one llama.cpp context.

Without one, ggml makes a pool for every ``llama_decode``; llama.cpp's own
tools (llama-bench, llama-server) create one up front and attach it. Measured
here (SmolLM2, 2 threads, in-process, 4 runs of 128 greedy tokens each):
94-100 tokens/s without, 99-102 with. llama-cpp-python binds neither
``ggml_threadpool_new`` nor its parameter struct, so this module declares them
from ggml.h / ggml-cpu.h of the pinned version. When the library layout is not
the expected one, :func:`attach` returns None and ggml's default stays in use.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

import llama_cpp as lc

log = logging.getLogger(__name__)

GGML_MAX_N_THREADS = 512  # ggml.h
POLL = 50  # ggml's default: spin briefly between graphs, then sleep


class _Params(ctypes.Structure):
    """struct ggml_threadpool_params (ggml.h)."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


def _libs() -> tuple[Any, Any] | None:
    lib_dir = Path(lc.__file__).parent / "lib"
    cpu_lib = lib_dir / "libggml-cpu.so"
    llama_lib = lib_dir / "libllama.so"
    if not (cpu_lib.exists() and llama_lib.exists()):
        return None
    try:
        cpu = ctypes.CDLL(str(cpu_lib))
        llama = ctypes.CDLL(str(llama_lib))
        cpu.ggml_threadpool_params_default.restype = _Params
        cpu.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
        cpu.ggml_threadpool_new.restype = ctypes.c_void_p
        cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_Params)]
        cpu.ggml_threadpool_free.restype = None
        cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
        llama.llama_attach_threadpool.restype = None
        llama.llama_attach_threadpool.argtypes = [ctypes.c_void_p] * 3
        llama.llama_detach_threadpool.restype = None
        llama.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError) as exc:
        log.info("no persistent ggml thread pool (%s); using ggml's default", exc)
        return None
    return cpu, llama


class ThreadPool:
    def __init__(self, cpu: Any, llama: Any, pool: int, ctx: int) -> None:
        self._cpu, self._llama, self._pool, self._ctx = cpu, llama, pool, ctx

    def free(self) -> None:
        """Detach from the context (still alive) and free the pool."""
        if self._pool:
            self._llama.llama_detach_threadpool(self._ctx)
            self._cpu.ggml_threadpool_free(self._pool)
            self._pool = 0


def attach(ctx: Any, threads: int) -> ThreadPool | None:
    """Create a pool of ``threads`` and attach it to the llama context ``ctx``."""
    libs = _libs()
    if libs is None:
        return None
    cpu, llama = libs
    params = cpu.ggml_threadpool_params_default(threads)
    params.poll = POLL
    pool = cpu.ggml_threadpool_new(ctypes.byref(params))
    if not pool:
        return None
    ctx_ptr = ctypes.cast(ctx, ctypes.c_void_p).value or 0
    llama.llama_attach_threadpool(ctx_ptr, pool, pool)
    return ThreadPool(cpu, llama, pool, ctx_ptr)
