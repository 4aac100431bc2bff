"""Model lifecycle in the scheduler, with fake workers and a fake memory probe.

The fake probe reports what a machine of ``CAP`` bytes has free: CAP minus the
estimates of the fake workers still running, so unloading one really frees
its memory as far as the scheduler can tell.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

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
from edged.backends.memory import MemoryEstimate
from edged.common.errors import InvalidArgument, ResourceExhausted
from edged.daemon.config import EngineConfig
from edged.daemon.scheduler import (
    LoadOptions,
    ResolvedModel,
    Scheduler,
    gpu_layers_for,
    host_memory,
    memory_pool,
)
from edged.daemon.services.generation import check_device, load_options
from edged.models_registry.settings import ModelSettings

MB = 1_000_000
T = TypeVar("T")


def model(name: str, **kw: Any) -> ResolvedModel:
    digest = "sha256:" + (name.encode().hex() * 64)[:64]
    return ResolvedModel(f"{name}:latest", digest, f"/m/{name}", "gguf", backend="llama.cpp", **kw)


A, B, C = model("a"), model("b"), model("c")


class FakeWorker:
    """A worker whose requests finish at once unless ``hold`` is set."""

    live: list[FakeWorker] = []
    started: list[FakeWorker] = []

    def __init__(self, backend: str, spec: LoadSpec, label: str) -> None:
        self.backend, self.spec, self.label = backend, spec, label
        self.description: ModelDescription | None = None
        self.loaded_at = time.time()
        self.last_used = time.monotonic()
        self.alive = True
        self.active = 0
        self.hold = asyncio.Event()
        self.hold.set()
        self.stopped = False
        self.pid = 100 + len(FakeWorker.started)

    async def start(self) -> ModelDescription:
        FakeWorker.started.append(self)
        FakeWorker.live.append(self)
        caps = Capabilities(self.backend, self.spec.device, ("gguf",), 128, 1, False, False)
        self.description = ModelDescription(caps, "")
        return self.description

    async def run(self, job: Job) -> AsyncIterator[Chunk | Done]:
        self.active += 1
        self.last_used = time.monotonic()
        try:
            await self.hold.wait()
            yield Chunk(job.request_id, "x", 1)
            yield Done(job.request_id, Stats())
        finally:
            self.active -= 1
            self.last_used = time.monotonic()

    def drop_session(self, session_id: str) -> None:
        pass

    async def call(self, method: str, *args: object) -> Any:
        return {}

    async def stop(self) -> None:
        self.stopped = True
        self.alive = False
        if self in FakeWorker.live:
            FakeWorker.live.remove(self)


SIZES = {"a": 400 * MB, "b": 400 * MB, "c": 400 * MB, "big": 5000 * MB}


def fake_estimate(m: ResolvedModel, backend: str, spec: LoadSpec) -> MemoryEstimate:
    """Weights by name; KV grows with the context like the real one."""
    name = m.name.split(":")[0]
    return MemoryEstimate(SIZES[name], spec.context_length * 1000, 0)


def make(
    cap: int = 10_000 * MB,
    *,
    max_loaded: int = 3,
    keep_alive: float = 300.0,
    limit: int = 0,
    context: int = 2048,
) -> Scheduler:
    FakeWorker.started.clear()
    FakeWorker.live.clear()

    def probe(device: str) -> int:
        used = sum(
            fake_estimate(
                ResolvedModel(w.label, "", "", "gguf", w.backend), w.backend, w.spec
            ).total_bytes
            for w in FakeWorker.live
        )
        return cap - used

    cfg = EngineConfig(
        threads=1,
        context_length=context,
        keep_alive_s=keep_alive,
        max_loaded=max_loaded,
        memory_limit=limit,
        cache_dir=Path("/cache"),
    )
    return Scheduler(cfg, FakeWorker, estimate=fake_estimate, memory_probe=probe)


_job_ids = iter(range(1, 1_000_000))


async def ask(s: Scheduler, m: ResolvedModel, options: LoadOptions | None = None) -> None:
    events = [e async for e in s.generate(m, Job(next(_job_ids), Sampling()), options)]
    assert isinstance(events[-1], Done)


def names(s: Scheduler) -> list[str]:
    return sorted(i.model.name.split(":")[0] for i in s.loaded())


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def worker_named(name: str) -> FakeWorker:
    return next(w for w in FakeWorker.live if w.label == f"{name}:latest")


# ---------------------------------------------------------------- eviction


def test_max_loaded_unloads_the_least_recently_used_idle_model() -> None:
    async def main() -> None:
        s = make(max_loaded=2)
        await ask(s, A)
        await ask(s, B)
        await ask(s, A)  # b is now the least recently used
        await ask(s, C)
        assert names(s) == ["a", "c"]
        assert [w.label for w in FakeWorker.started if w.stopped] == ["b:latest"]

    run(main())


def test_memory_pressure_unloads_lru_idle_models_until_it_fits() -> None:
    async def main() -> None:
        # 2 GB machine; each small model takes 400 MB + 2048 * 1000 B of KV.
        s = make(cap=2000 * MB)
        await ask(s, A)
        await ask(s, B)
        await ask(s, C)
        assert names(s) == ["a", "b", "c"]  # 1.2 GB: everything fits
        SIZES["d"] = 1000 * MB
        try:
            await ask(s, model("d"))  # needs 1 GB, 0.8 GB free: one model must go
            assert names(s) == ["b", "c", "d"]  # a was the least recently used
        finally:
            del SIZES["d"]

    run(main())


def test_never_unloads_a_streaming_model_and_refuses_with_what_is_loaded() -> None:
    async def main() -> None:
        s = make(cap=1000 * MB)
        await ask(s, A)
        worker_named("a").hold.clear()
        streaming = asyncio.create_task(ask(s, A))
        await asyncio.sleep(0.01)
        with pytest.raises(ResourceExhausted) as info:
            await ask(s, B)  # 400 MB needed, ~600 MB free ... minus a's KV: must evict a
        text = str(info.value)
        assert "not enough memory to load b:latest on cpu" in text
        assert "it needs about 402 MB (weights 400 MB, KV cache 2.0 MB" in text
        assert "Loaded: a:latest (599 MB, 1 request running or queued)." in text
        assert "edged stop MODEL" in text
        assert names(s) == ["a"] and not worker_named("a").stopped
        worker_named("a").hold.set()
        await streaming

    SIZES["a"] = 597 * MB  # a + b do not fit in 1 GB
    try:
        run(main())
    finally:
        SIZES["a"] = 400 * MB


def test_queued_requests_also_protect_a_model() -> None:
    async def main() -> None:
        s = make(max_loaded=1)
        await ask(s, A)
        # a request for a that is still waiting (inflight, not yet on the worker)
        s._inflight[A.digest] = 1
        with pytest.raises(ResourceExhausted, match=r"EDGED_MAX_LOADED=1.*a:latest"):
            await ask(s, B)
        s._inflight[A.digest] = 0
        await ask(s, B)
        assert names(s) == ["b"]

    run(main())


def test_pinned_model_is_never_unloaded_for_room_or_idleness() -> None:
    async def main() -> None:
        s = make(max_loaded=1, keep_alive=0.05)
        s.start_reaper()
        info = await s.load(A, LoadOptions(pin=True))
        assert info.pinned and info.expires_at is None
        await asyncio.sleep(0.2)
        assert names(s) == ["a"]  # survived its keep-alive
        with pytest.raises(ResourceExhausted, match=r"a:latest \(.*pinned\)"):
            await ask(s, B)
        await s.load(A, LoadOptions(pin=False))  # unpin: now it can go
        await ask(s, B)
        assert names(s) == ["b"]
        await s.close()

    run(main())


def test_pinned_setting_applies_to_the_loaded_worker() -> None:
    async def main() -> None:
        s = make(max_loaded=1)
        await ask(s, A)
        s.apply_settings(A.digest, pinned=True, keep_alive_s=-1)
        assert s.loaded()[0].keep_alive_s == -1
        with pytest.raises(ResourceExhausted, match="pinned"):
            await ask(s, B)
        await ask(s, A, LoadOptions(pinned=False))  # each request carries the setting
        await ask(s, B)
        assert names(s) == ["b"]

    run(main())


def test_memory_limit_caps_all_models_and_says_so() -> None:
    async def main() -> None:
        s = make(limit=1000 * MB)
        await ask(s, A)
        await ask(s, B)  # 804 MB in all: ok
        worker_named("a").hold.clear()
        worker_named("b").hold.clear()
        t1 = asyncio.create_task(ask(s, A))
        t2 = asyncio.create_task(ask(s, B))
        await asyncio.sleep(0.01)
        with pytest.raises(ResourceExhausted) as info:
            await ask(s, C)
        assert "EDGED_MEMORY_LIMIT_MB allows 1.0 GB for all models and 804 MB is in use" in str(
            info.value
        )
        worker_named("a").hold.set()
        worker_named("b").hold.set()
        await asyncio.gather(t1, t2)
        await ask(s, C)  # now a (LRU) can go
        assert names(s) == ["b", "c"]

    run(main())


def test_a_model_bigger_than_the_machine_is_refused_and_nothing_is_unloaded() -> None:
    async def main() -> None:
        s = make(cap=2000 * MB)
        await ask(s, A)
        with pytest.raises(ResourceExhausted, match=r"needs about 5.0 GB.*Loaded: a:latest"):
            await ask(s, model("big"))
        assert names(s) == ["a"] and not FakeWorker.started[0].stopped

    run(main())


def test_no_estimate_skips_the_memory_check() -> None:
    async def main() -> None:
        s = make(cap=0)
        s._estimate = None
        await ask(s, A)
        assert names(s) == ["a"] and s.loaded()[0].memory is None

    run(main())


# ---------------------------------------------------------------- keep-alive


def test_keep_alive_zero_unloads_as_soon_as_idle() -> None:
    async def main() -> None:
        s = make()
        await ask(s, A, LoadOptions(keep_alive_s=0))
        assert names(s) == []  # gone from ps before the stream ended
        await asyncio.sleep(0.01)
        assert FakeWorker.started[0].stopped

    run(main())


def test_keep_alive_zero_waits_for_other_requests_on_the_model() -> None:
    async def main() -> None:
        s = make()
        s.start_reaper()
        await ask(s, A)
        s._inflight[A.digest] = 1  # another request for a is queued
        await ask(s, A, LoadOptions(keep_alive_s=0))
        await asyncio.sleep(0.1)
        assert names(s) == ["a"]  # not idle: kept
        s._inflight[A.digest] = 0
        s._poke.set()  # (a finishing request pokes the reaper)
        await asyncio.sleep(0.1)
        assert names(s) == [] and FakeWorker.started[0].stopped
        await s.close()

    run(main())


def test_keep_alive_expiry_negative_and_per_request() -> None:
    async def main() -> None:
        s = make(keep_alive=0.1)
        s.start_reaper()
        await ask(s, A)  # default keep-alive: 0.1 s
        await ask(s, B, LoadOptions(keep_alive_s=-1))  # forever
        await ask(s, C, LoadOptions(keep_alive_s=30))
        infos = {i.model.name: i for i in s.loaded()}
        assert infos["b:latest"].expires_at is None and infos["b:latest"].keep_alive_s < 0
        exp = infos["c:latest"].expires_at
        assert exp is not None and 29 < exp - time.time() <= 30
        await asyncio.sleep(0.4)
        assert names(s) == ["b", "c"]
        await s.close()

    run(main())


def test_busy_model_has_no_expiry() -> None:
    async def main() -> None:
        s = make()
        await ask(s, A)
        worker_named("a").hold.clear()
        t = asyncio.create_task(ask(s, A))
        await asyncio.sleep(0.01)
        assert s.loaded()[0].expires_at is None
        worker_named("a").hold.set()
        await t
        assert s.loaded()[0].expires_at is not None

    run(main())


# ---------------------------------------------------------------- context and backend


def test_smaller_context_reuses_larger_reloads() -> None:
    async def main() -> None:
        s = make(context=2048)
        await ask(s, A)
        first = FakeWorker.started[0]
        await ask(s, A, LoadOptions(context_length=1024))
        assert len(FakeWorker.started) == 1  # enough context: reused
        await ask(s, A, LoadOptions(context_length=4096))
        assert len(FakeWorker.started) == 2 and first.stopped
        assert FakeWorker.started[1].spec.context_length == 4096
        await ask(s, A)  # the default (2048) fits in the 4096 worker
        assert len(FakeWorker.started) == 2
        assert names(s) == ["a"]

    run(main())


def test_reload_for_context_waits_for_running_streams() -> None:
    async def main() -> None:
        s = make()
        await ask(s, A)
        old = worker_named("a")
        old.hold.clear()
        running = asyncio.create_task(ask(s, A))
        await asyncio.sleep(0.01)
        bigger = asyncio.create_task(ask(s, A, LoadOptions(context_length=8192)))
        await asyncio.sleep(0.1)
        assert not old.stopped and len(FakeWorker.started) == 1
        old.hold.set()
        await asyncio.gather(running, bigger)
        assert old.stopped and FakeWorker.started[-1].spec.context_length == 8192

    run(main())


def test_explicit_backend_or_device_replaces_a_worker_on_another() -> None:
    async def main() -> None:
        s = make()
        await ask(s, A)
        await ask(s, replace(A, device="gpu"))  # not asked for explicitly: reused
        assert len(FakeWorker.started) == 1
        await ask(s, replace(A, backend="openvino"), LoadOptions(exact=True))
        assert len(FakeWorker.started) == 2
        assert FakeWorker.started[1].backend == "openvino"
        assert FakeWorker.started[0].stopped

    run(main())


def test_load_spec_plumbing() -> None:
    async def main() -> None:
        s = make()
        await s.load(replace(A, device="cuda:1", gpu_layers=20), LoadOptions())
        spec = FakeWorker.started[0].spec
        assert spec.device == "cuda:1" and spec.gpu_layers == 20
        assert spec.cache_dir == "/cache/llama.cpp"
        await s.load(replace(B, backend="openvino", device="gpu"), LoadOptions())
        spec = FakeWorker.started[1].spec
        assert spec.cache_dir == "/cache/openvino" and spec.gpu_layers == -1

    run(main())


def test_gpu_layers_and_memory_pools() -> None:
    assert gpu_layers_for("cpu", 30) == 0
    assert gpu_layers_for("cuda:0", 0) == -1
    assert gpu_layers_for("cuda:0", -1) == -1
    assert gpu_layers_for("cuda:0", 12) == 12
    assert memory_pool("cuda:1") == "cuda:1"
    assert memory_pool("cpu") == memory_pool("gpu.0") == memory_pool("npu") == "host"
    assert host_memory("cuda:0") is None
    free = host_memory("cpu")
    assert free is not None and free > 0


def test_unload_and_loaded_fields() -> None:
    async def main() -> None:
        s = make()
        info = await s.load(A, LoadOptions(keep_alive_s=60, context_length=1024))
        assert info.memory == MemoryEstimate(400 * MB, 1024 * 1000, 0)
        assert info.keep_alive_s == 60 and not info.pinned
        assert info.expires_at is not None and 59 < info.expires_at - time.time() <= 60
        assert await s.unload(A.digest) is True
        assert await s.unload(A.digest) is False
        assert names(s) == []

    run(main())


# ---------------------------------------------------------------- request -> options


def test_load_options_request_beats_settings_beats_defaults() -> None:
    stored = ModelSettings(keep_alive_s=600, pinned=True, context_length=8192)
    o = load_options(stored)
    assert (o.keep_alive_s, o.pinned, o.context_length, o.exact) == (600, True, 8192, False)
    o = load_options(stored, keep_alive_s=0, context_length=1024, device="cpu", pin=True)
    assert (o.keep_alive_s, o.context_length, o.exact, o.pin) == (0, 1024, True, True)
    assert load_options(ModelSettings()) == LoadOptions()  # nothing said: the defaults
    assert load_options(ModelSettings(backend="openvino")).exact
    with pytest.raises(InvalidArgument, match="between 256"):
        load_options(stored, context_length=10)
    with pytest.raises(InvalidArgument, match="finite"):
        load_options(stored, keep_alive_s=float("inf"))
    with pytest.raises(InvalidArgument, match="not a device"):
        check_device("cuda:0 --evil")
