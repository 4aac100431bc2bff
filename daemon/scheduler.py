"""Which worker runs a request: model resolution, worker lifecycle, back-pressure.

The scheduler takes its worker factory and hardware profile as arguments so
that tests can hand it fakes. It keeps at most one worker per model digest,
bounds the requests waiting on each, unloads idle workers after the keep-alive
and replaces a worker that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edged.backends.base import Chunk, Done, Job, LoadSpec, ModelDescription
from edged.backends.registry import BACKENDS, is_installed
from edged.daemon.config import EngineConfig
from edged.daemon.errors import FailedPrecondition, QueueFull
from edged.daemon.hardware import HardwareProfile, select_backends

log = logging.getLogger(__name__)


class Worker(Protocol):
    backend: str
    spec: LoadSpec
    label: str
    description: ModelDescription | None
    loaded_at: float
    last_used: float

    @property
    def pid(self) -> int | None: ...
    @property
    def alive(self) -> bool: ...
    @property
    def active(self) -> int: ...
    async def start(self) -> ModelDescription: ...
    def run(self, job: Job) -> AsyncIterator[Chunk | Done]: ...
    def drop_session(self, session_id: str) -> None: ...
    async def call(self, method: str, *args: object) -> Any: ...
    async def stop(self) -> None: ...


WorkerFactory = Callable[[str, LoadSpec, str], Worker]


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # "name:tag"
    digest: str
    path: str
    format: str
    system_prompt: str = ""
    sampling_defaults: tuple[tuple[str, float], ...] = ()
    backend: str = ""  # chosen by the caller; "" lets the scheduler choose
    device: str = "cpu"


@dataclass
class _Loaded:
    worker: Worker
    model: ResolvedModel


class Scheduler:
    def __init__(
        self,
        engine: EngineConfig,
        hardware: HardwareProfile,
        worker_factory: WorkerFactory,
        *,
        installed_backends: tuple[str, ...] | None = None,
        llama_cuda: bool = False,
    ) -> None:
        self._cfg = engine
        self._hw = hardware
        self._factory = worker_factory
        self._installed = (
            installed_backends
            if installed_backends is not None
            else tuple(b.name for b in BACKENDS if is_installed(b))
        )
        self._llama_cuda = llama_cuda
        self._loaded: dict[str, _Loaded] = {}
        self._inflight: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ workers

    def start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, max(0.5, self._cfg.keep_alive_s / 4)))
            now = time.monotonic()
            for digest, entry in list(self._loaded.items()):
                w = entry.worker
                idle = w.active == 0 and self._inflight.get(digest, 0) == 0
                if not w.alive or (idle and now - w.last_used > self._cfg.keep_alive_s):
                    log.info("unloading %s (idle)", entry.model.name)
                    self._loaded.pop(digest, None)
                    await w.stop()

    async def _worker_for(self, model: ResolvedModel) -> _Loaded:
        lock = self._locks.setdefault(model.digest, asyncio.Lock())
        async with lock:
            entry = self._loaded.get(model.digest)
            if entry is not None and entry.worker.alive:
                return entry
            if entry is not None:
                self._loaded.pop(model.digest, None)
            backend, device = self._choose(model)
            spec = LoadSpec(
                model_path=model.path,
                model_digest=model.digest,
                context_length=self._cfg.context_length,
                threads=self._cfg.threads,
                max_sequences=self._cfg.max_sequences,
                device=device,
                kv_dir=str(self._cfg.kv_dir) if self._cfg.kv_dir else None,
                kv_ram_budget=self._cfg.kv_ram_budget,
                kv_disk_budget=self._cfg.kv_disk_budget,
            )
            worker = self._factory(backend, spec, model.name)
            log.info("loading %s on %s/%s", model.name, backend, device)
            await worker.start()
            entry = _Loaded(worker=worker, model=model)
            self._loaded[model.digest] = entry
            return entry

    def _choose(self, model: ResolvedModel) -> tuple[str, str]:
        if model.backend:
            return model.backend, model.device
        choices = select_backends(
            self._hw, [model.format], self._installed, llama_cuda=self._llama_cuda
        )
        for c in choices:
            if c.available:
                return c.backend, c.device
        why = "; ".join(r for c in choices for r in c.reasons)
        raise FailedPrecondition(f"no installed backend can run {model.name}: {why}")

    # ------------------------------------------------------------ requests

    async def generate(self, model: ResolvedModel, job: Job) -> AsyncIterator[Chunk | Done]:
        limit = self._cfg.queue_size + self._cfg.max_sequences
        inflight = self._inflight.get(model.digest, 0)
        if inflight >= limit:
            raise QueueFull(
                f"{model.name} already has {inflight} requests running or queued "
                f"(limit {limit}, EDGED_QUEUE_SIZE); retry later"
            )
        self._inflight[model.digest] = inflight + 1
        try:
            entry = await self._worker_for(model)
            async for event in entry.worker.run(job):
                yield event
        finally:
            self._inflight[model.digest] -= 1

    def describe(self, model: ResolvedModel) -> ModelDescription | None:
        entry = self._loaded.get(model.digest)
        return entry.worker.description if entry else None

    def worker_of(self, digest: str) -> Worker | None:
        entry = self._loaded.get(digest)
        return entry.worker if entry and entry.worker.alive else None

    def loaded(self) -> list[tuple[ResolvedModel, Worker]]:
        return [(e.model, e.worker) for e in self._loaded.values() if e.worker.alive]

    def drop_session(self, digest: str, session_id: str) -> None:
        worker = self.worker_of(digest)
        if worker is not None:
            worker.drop_session(session_id)

    async def unload(self, digest: str) -> bool:
        entry = self._loaded.pop(digest, None)
        if entry is None:
            return False
        await entry.worker.stop()
        return True

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for digest in list(self._loaded):
            await self.unload(digest)
