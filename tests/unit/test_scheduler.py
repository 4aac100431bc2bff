"""Scheduler logic with fake workers (the real-worker paths are in integration/)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from edged.backends.base import (
    Capabilities,
    Chunk,
    Done,
    Job,
    LoadSpec,
    ModelDescription,
    Sampling,
    Stats,
)
from edged.common.errors import Internal, QueueFull
from edged.daemon.config import EngineConfig
from edged.daemon.scheduler import ResolvedModel, Scheduler

MODEL = ResolvedModel("m:latest", "sha256:" + "a" * 64, "/x", "gguf", "llama.cpp")


class FakeWorker:
    started: list[FakeWorker] = []

    def __init__(self, backend: str, spec: LoadSpec, label: str) -> None:
        self.backend, self.spec, self.label = backend, spec, label
        self.description: ModelDescription | None = None
        self.loaded_at = self.last_used = 0.0
        self.alive = True
        self.active = 0
        self.gate = asyncio.Event()
        self.stopped = False
        self.pid = 1

    async def start(self) -> ModelDescription:
        FakeWorker.started.append(self)
        self.description = ModelDescription(
            Capabilities("fake", "cpu", ("gguf",), 128, 1, False, False), ""
        )
        return self.description

    async def run(self, job: Job) -> AsyncIterator[Chunk | Done]:
        self.active += 1
        try:
            await self.gate.wait()
            yield Chunk(job.request_id, "x", 1)
            yield Done(job.request_id, Stats())
        finally:
            self.active -= 1

    def drop_session(self, session_id: str) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True
        self.alive = False


def make(queue: int = 1, seqs: int = 1) -> Scheduler:
    FakeWorker.started.clear()
    cfg = EngineConfig(threads=1, queue_size=queue, max_sequences=seqs, keep_alive_s=300)
    return Scheduler(cfg, FakeWorker, estimate=None)


def job(i: int) -> Job:
    return Job(i, Sampling())


async def drain(s: Scheduler, j: Job) -> list[object]:
    return await drain_model(s, MODEL, j)


async def drain_model(s: Scheduler, m: ResolvedModel, j: Job) -> list[object]:
    return [e async for e in s.generate(m, j)]


def test_one_worker_per_model_and_queue_bound() -> None:
    async def main() -> None:
        s = make(queue=1, seqs=1)
        t1 = asyncio.create_task(drain(s, job(1)))
        t2 = asyncio.create_task(drain(s, job(2)))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="retry"):
            await drain(s, job(3))
        FakeWorker.started[0].gate.set()
        assert len(await t1) == 2 and len(await t2) == 2
        assert len(FakeWorker.started) == 1
        assert len(await drain(s, job(4))) == 2  # room again

    asyncio.run(main())


def test_dead_worker_is_replaced() -> None:
    async def main() -> None:
        s = make()
        w = FakeWorker.started
        first = asyncio.create_task(drain(s, job(1)))
        await asyncio.sleep(0.01)
        w[0].gate.set()
        await first
        w[0].alive = False
        nxt = asyncio.create_task(drain(s, job(2)))
        await asyncio.sleep(0.01)
        assert len(w) == 2
        w[1].gate.set()
        await nxt

    asyncio.run(main())


def test_unload_and_a_model_that_was_not_resolved() -> None:
    async def main() -> None:
        s = make()
        t = asyncio.create_task(drain(s, job(1)))
        await asyncio.sleep(0.01)
        FakeWorker.started[0].gate.set()
        await t
        assert await s.unload(MODEL.digest) and FakeWorker.started[0].stopped
        assert s.loaded() == []
        # selection (daemon/selection.py) picks the backend; the scheduler never guesses
        unresolved = replace(MODEL, backend="")
        with pytest.raises(Internal, match="without a backend"):
            await drain_model(s, unresolved, job(2))

    asyncio.run(main())
