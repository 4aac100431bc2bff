"""Which worker runs a request: worker lifecycle, memory, back-pressure.

The scheduler takes its worker factory, hardware profile, memory estimate and
memory probe as arguments so that tests can hand it fakes. It keeps at most
one worker per model digest and bounds the requests waiting on each.

Lifecycle rules (``edged ps`` shows the state they produce):

- Before loading, the model's memory is estimated (weights + KV for the
  context and sequences + overhead). When it does not fit in what is free
  (the probe, plus what idle models would free, capped by
  EDGED_MEMORY_LIMIT_MB) or EDGED_MAX_LOADED models are loaded, idle models
  are unloaded least recently used first; never one that is streaming or has
  requests queued, never a pinned one. If that is still not enough, the load
  is refused with RESOURCE_EXHAUSTED saying what it needs and what is loaded,
  and nothing is unloaded.
- Keep-alive: each request sets its model's keep-alive (the request's own,
  else the model's setting, else EDGED_KEEP_ALIVE). 0 unloads the model as
  soon as it is idle; negative keeps it until it is stopped. A pinned model
  (Models.Load pin, or the model's setting) is never unloaded for idleness or
  to make room; only Unload stops it.
- Context: a loaded worker serves every request whose context length is at
  most the one it was loaded with; a request needing more replaces it (once
  the requests running on it have finished). A request that names its backend
  or device likewise replaces a worker running on another one.
- A worker that died is replaced by the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import psutil

from edged.backends.base import (
    DEFAULT_KV_TYPE,
    Chunk,
    Done,
    Embeddings,
    EmbedInput,
    Job,
    LoadSpec,
    ModelDescription,
    kv_type_offered,
    refuse_kv_type,
)
from edged.backends.memory import MemoryEstimate, compute_bytes, estimate_memory
from edged.backends.registry import backend_info
from edged.backends.toolkit import EMBED_INSTEAD, check_controls
from edged.common.endpoints import endpoints as rpc_endpoints
from edged.common.errors import (
    DeadlineExceeded,
    EdgedError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    QueueFull,
    ResourceExhausted,
)
from edged.common.model_facts import ModelFacts, model_facts
from edged.daemon.config import EngineConfig
from edged.daemon.units import human_bytes
from edged.models_registry.remote import FORMAT_REMOTE
from edged.models_registry.settings import RPC_LOCAL

log = logging.getLogger(__name__)

# Inputs per worker call: a large batch goes as several calls, so other
# requests for the same model are answered between them and a deadline is
# checked between them (each call still fills the engine's decodes).
EMBED_CALL_INPUTS = 256
EMBED_CALL_TIMEOUT_S = 600.0


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
    def run(self, job: Job) -> AsyncGenerator[Chunk | Done, None]: ...
    def drop_session(self, session_id: str) -> None: ...
    async def fork_session(self, source_id: str, new_id: str) -> str: ...
    async def kv_locations(self) -> dict[str, str]: ...
    async def kv_bytes(self) -> dict[str, int]: ...
    async def tokenize(
        self,
        *,
        text: str | None = None,
        job: Job | None = None,
        add_special: bool = False,
        parse_special: bool = False,
    ) -> tuple[list[int], list[bytes]]: ...
    async def detokenize(self, tokens: list[int], *, special: bool) -> list[bytes]: ...
    async def embed(
        self, inputs: list[EmbedInput], *, truncate: bool, normalize: bool, timeout_s: float
    ) -> Embeddings: ...
    async def stop(self) -> None: ...


WorkerFactory = Callable[[str, LoadSpec, str], Worker]


@dataclass(frozen=True)
class ResolvedModel:
    """A model variant and where it runs, as backend selection resolved it."""

    name: str  # "name:tag"
    digest: str
    path: str
    format: str
    backend: str  # chosen by selection (daemon/selection.py)
    device: str = "cpu"
    system_prompt: str = ""
    sampling_defaults: tuple[tuple[str, float], ...] = ()
    stop_defaults: tuple[str, ...] = ()
    gpu_layers: int = 0  # layers to offload on a GPU device; 0 or -1 there = all

    @property
    def remote(self) -> bool:
        """Served by an upstream (``edged remote add``): no local memory to estimate."""
        return self.format == FORMAT_REMOTE


# (the model, its backend, the spec it would load with) -> the estimate. Reads
# the model's header; runs in a thread.
Estimator = Callable[[ResolvedModel, str, LoadSpec], MemoryEstimate]
# device -> bytes free for a model on it now; None when unknown (not checked).
MemoryProbe = Callable[[str], int | None]


def estimate_model(model: ResolvedModel, backend: str, spec: LoadSpec) -> MemoryEstimate:
    """The real estimate (:mod:`edged.backends.memory`) from the model's header,
    with a draft model (speculative ``draft:MODEL``) loaded beside it: its
    weights, its own f16 KV cache for the same sequences and context, and its
    scratch buffers (the runtime is shared)."""

    def estimate(facts: ModelFacts, kv_type: str) -> MemoryEstimate:
        return estimate_memory(
            facts,
            context_length=spec.context_length,
            sequences=spec.max_sequences,
            backend=backend,
            device=spec.device,
            kv_type=kv_type,
        )

    need = estimate(model_facts(Path(spec.model_path), model.format), spec.kv_type)
    if not spec.draft_model_path:
        return need
    draft_facts = model_facts(Path(spec.draft_model_path), "gguf")
    draft = estimate(draft_facts, DEFAULT_KV_TYPE)
    return MemoryEstimate(
        need.weights_bytes + draft.weights_bytes,
        need.kv_bytes + draft.kv_bytes,
        need.overhead_bytes + compute_bytes(draft_facts, sequences=spec.max_sequences),
        need.kv_type,
    )


def _kv_types(backend: str) -> tuple[str, ...]:
    """The KV cache types a backend offers (its registry entry; f16 if unknown)."""
    try:
        return backend_info(backend).kv_types
    except FailedPrecondition:
        return (DEFAULT_KV_TYPE,)


def _rpc_capable(backend: str) -> bool:
    """Whether a backend places layers on llama.cpp RPC workers (EDGED_RPC)."""
    try:
        return backend_info(backend).rpc
    except FailedPrecondition:
        return False


def host_memory(device: str) -> int | None:
    """Free RAM for host devices (CPU, integrated GPU, NPU); unknown for CUDA."""
    if device.startswith("cuda"):
        return None
    return int(psutil.virtual_memory().available)


def memory_pool(device: str) -> str:
    """Devices that share one memory: every non-CUDA device uses host RAM."""
    return device if device.startswith("cuda") else "host"


@dataclass(frozen=True)
class LoadOptions:
    """What a request (or Models.Load) asks of the model's worker."""

    context_length: int = 0  # 0 = EDGED_CONTEXT
    keep_alive_s: float | None = None  # None = EDGED_KEEP_ALIVE; < 0 forever; 0 unload idle
    pinned: bool = False  # the model's setting
    pin: bool | None = None  # Models.Load's pin for this loaded instance; None leaves it
    exact: bool = False  # backend/device were asked for: a worker on another is replaced
    # the model's KV cache type ("": EDGED_KV_TYPE where the backend offers it);
    # a backend without it refuses
    kv_type: str = ""
    # the model's llama.cpp RPC workers: "" = EDGED_RPC, "local" = none, else HOST:PORT,...
    rpc: str = ""
    draft_path: str = ""  # speculative draft:NAME: the draft model's GGUF
    draft_name: str = ""


@dataclass
class _Loaded:
    worker: Worker
    model: ResolvedModel
    need: MemoryEstimate | None
    keep_alive_s: float
    pinned_by_settings: bool = False
    pinned_by_load: bool = False
    purpose: str = ""  # "" serves requests; else why it runs (a calibration)

    @property
    def pinned(self) -> bool:
        return self.pinned_by_settings or self.pinned_by_load


@dataclass(frozen=True)
class LoadedInfo:
    """One loaded model as ``edged ps`` shows it."""

    model: ResolvedModel
    worker: Worker
    memory: MemoryEstimate | None
    keep_alive_s: float
    pinned: bool
    expires_at: float | None  # unix time it unloads if it stays idle; None = not scheduled


def describe_need(need: MemoryEstimate) -> str:
    return (
        f"about {human_bytes(need.total_bytes)} (weights {human_bytes(need.weights_bytes)}, "
        f"KV cache {human_bytes(need.kv_bytes)}, overhead {human_bytes(need.overhead_bytes)})"
    )


class Scheduler:
    def __init__(
        self,
        engine: EngineConfig,
        worker_factory: WorkerFactory,
        *,
        estimate: Estimator | None = estimate_model,
        memory_probe: MemoryProbe = host_memory,
    ) -> None:
        self._cfg = engine
        self._factory = worker_factory
        self._estimate = estimate
        self._probe = memory_probe
        self._loaded: dict[str, _Loaded] = {}
        self._dedicated: list[_Loaded] = []  # workers no request shares (calibration)
        self._inflight: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._admission = asyncio.Lock()  # one load (and its evictions) at a time
        self._reaper: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()  # something changed: the reaper recomputes
        self._stopping: set[asyncio.Task[None]] = set()
        self.restarts = 0  # workers started again after a crash

    # ------------------------------------------------------------ keep-alive

    def start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())

    def _idle(self, digest: str, entry: _Loaded) -> bool:
        return entry.worker.active == 0 and self._inflight.get(digest, 0) == 0

    def _due(self, digest: str, entry: _Loaded) -> float | None:
        """Monotonic time the model unloads at if it stays idle; None = not scheduled."""
        if entry.pinned or entry.keep_alive_s < 0 or not self._idle(digest, entry):
            return None
        return entry.worker.last_used + entry.keep_alive_s

    async def _reap_idle(self) -> None:
        while True:
            now = time.monotonic()
            wake = now + 60.0
            for digest, entry in list(self._loaded.items()):
                if not entry.worker.alive:
                    self._forget(digest, entry)
                    continue
                due = self._due(digest, entry)
                if due is None:
                    continue
                if due <= now:
                    log.info("unloading %s (idle for %.0f s)", entry.model.name, now - due)
                    self._forget(digest, entry)
                    self._stop_later(entry.worker)
                else:
                    wake = min(wake, due)
            # sleep until the next expiry, or until something changes
            self._poke.clear()
            timer = asyncio.get_running_loop().call_later(
                max(0.05, wake - time.monotonic()), self._poke.set
            )
            try:
                await self._poke.wait()
            finally:
                timer.cancel()

    def _forget(self, digest: str, entry: _Loaded) -> None:
        if self._loaded.get(digest) is entry:
            del self._loaded[digest]

    def _stop_later(self, worker: Worker) -> None:
        """Stop a worker already forgotten, without waiting for its process to exit."""

        async def stop() -> None:
            try:
                await worker.stop()
            except Exception:  # a failed stop must not take the reaper down
                log.exception("stopping the worker for %s failed", worker.label)

        task = asyncio.get_running_loop().create_task(stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    # ------------------------------------------------------------ workers

    def _context(self, options: LoadOptions) -> int:
        return options.context_length or self._cfg.context_length

    def _kv_type(self, model: ResolvedModel, options: LoadOptions) -> str:
        """The KV cache type a load of ``model`` gets: the model's setting (the
        backend must offer it), else EDGED_KV_TYPE where the backend offers it,
        else the backend's own (f16)."""
        offered = _kv_types(model.backend)
        if options.kv_type:
            refuse_kv_type(model.backend, offered, options.kv_type)
            return options.kv_type
        return kv_type_offered(self._cfg.kv_type, offered)

    def _serves(self, entry: _Loaded, model: ResolvedModel, options: LoadOptions) -> str:
        """Why ``entry`` cannot serve this request ("" when it can)."""
        spec = entry.worker.spec
        want = self._context(options)
        if spec.context_length < want:
            return f"it needs {want} tokens of context, the loaded worker has {spec.context_length}"
        try:
            kv = self._kv_type(replace(model, backend=entry.worker.backend), options)
        except FailedPrecondition as exc:
            return str(exc)
        if spec.kv_type != kv:
            return f"it needs a {kv} KV cache, the loaded worker has {spec.kv_type}"
        rpc = self._rpc(replace(model, backend=entry.worker.backend), options)
        if spec.rpc_servers != rpc:
            have = ",".join(spec.rpc_servers) or "none"
            return (
                f"it needs the RPC workers {','.join(rpc) or 'none'}, the loaded worker has {have}"
            )
        if options.draft_path and spec.draft_model_path != options.draft_path:
            return f"it needs the draft model {options.draft_name}"
        if options.exact and model.backend and entry.worker.backend != model.backend:
            return f"{model.backend} was asked for, it runs on {entry.worker.backend}"
        if options.exact and model.backend and spec.device != model.device:
            return f"device {model.device} was asked for, it runs on {spec.device}"
        return ""

    def _touch(self, entry: _Loaded, options: LoadOptions) -> None:
        keep = options.keep_alive_s
        entry.keep_alive_s = self._cfg.keep_alive_s if keep is None else keep
        entry.pinned_by_settings = options.pinned
        if options.pin is not None:
            entry.pinned_by_load = options.pin
        self._poke.set()

    async def _worker_for(self, model: ResolvedModel, options: LoadOptions) -> _Loaded:
        lock = self._locks.setdefault(model.digest, asyncio.Lock())
        async with lock:
            entry = self._loaded.get(model.digest)
            if entry is not None and entry.worker.alive:
                why = self._serves(entry, model, options)
                if not why:
                    self._touch(entry, options)
                    return entry
                log.info("reloading %s: %s", model.name, why)
                while entry.worker.alive and entry.worker.active > 0:
                    await asyncio.sleep(0.05)  # let the streams running on it finish
                self._forget(model.digest, entry)
                await entry.worker.stop()
            elif entry is not None:  # its worker crashed: this request starts another
                self._forget(model.digest, entry)
                self.restarts += 1
            async with self._admission:
                entry = await self._load(model, options)
            self._loaded[model.digest] = entry
            self._touch(entry, options)
            return entry

    def _rpc(self, model: ResolvedModel, options: LoadOptions) -> tuple[str, ...]:
        """The RPC workers a load of ``model`` uses: the model's setting, else
        EDGED_RPC; none for a backend without RPC."""
        if not _rpc_capable(model.backend) or options.rpc == RPC_LOCAL:
            return ()
        return rpc_endpoints(options.rpc) if options.rpc else self._cfg.rpc_servers

    def _spec(
        self,
        model: ResolvedModel,
        context_length: int,
        sequences: int,
        *,
        kv_type: str = "",
        rpc: tuple[str, ...] = (),
    ) -> LoadSpec:
        if not model.backend:
            raise Internal(f"{model.name} reached the scheduler without a backend")
        cfg = self._cfg
        return LoadSpec(
            model_path=model.path,
            model_digest=model.digest,
            context_length=context_length,
            threads=cfg.threads,
            max_sequences=sequences,
            device=model.device,
            kv_dir=str(cfg.kv_dir) if cfg.kv_dir else None,
            kv_ram_budget=cfg.kv_ram_budget,
            kv_disk_budget=cfg.kv_disk_budget,
            cache_dir=str(cfg.cache_dir / model.backend) if cfg.cache_dir else None,
            gpu_layers=gpu_layers_for(model.device, model.gpu_layers),
            kv_type=kv_type or DEFAULT_KV_TYPE,
            rpc_servers=rpc,
            rpc_layers=cfg.rpc_layers,
        )

    async def _load(self, model: ResolvedModel, options: LoadOptions) -> _Loaded:
        spec = self._spec(
            model,
            self._context(options),
            self._cfg.max_sequences,
            kv_type=self._kv_type(model, options),
            rpc=self._rpc(model, options),
        )
        if options.draft_path:
            spec = replace(
                spec, draft_model_path=options.draft_path, draft_model_name=options.draft_name
            )
        need = await self._need(model, model.backend, spec)
        await self._make_room(model, model.device, need)
        worker = self._factory(model.backend, spec, model.name)
        log.info(
            "loading %s on %s/%s (context %d, %s KV%s)",
            model.name,
            model.backend,
            model.device,
            spec.context_length,
            spec.kv_type,
            f", {describe_need(need)}" if need else "",
        )
        await worker.start()
        worker.last_used = time.monotonic()
        return _Loaded(worker=worker, model=model, need=need, keep_alive_s=self._cfg.keep_alive_s)

    async def _need(
        self, model: ResolvedModel, backend: str, spec: LoadSpec
    ) -> MemoryEstimate | None:
        if self._estimate is None or model.remote:
            return None
        try:
            return await asyncio.to_thread(self._estimate, model, backend, spec)
        except (OSError, ValueError) as exc:  # unreadable header: load without the check
            log.warning("cannot estimate the memory of %s: %s", model.name, exc)
            return None

    # ------------------------------------------------------------ room

    def _evictable(self, digest: str, entry: _Loaded) -> bool:
        return entry.worker.alive and not entry.pinned and self._idle(digest, entry)

    async def _make_room(
        self,
        model: ResolvedModel,
        device: str,
        need: MemoryEstimate | None,
        *,
        replaces: bool = True,
    ) -> None:
        """Unload idle models (LRU first) until ``need`` fits; refuse if it cannot.

        ``replaces``: the new worker replaces the model's loaded one (else that
        one stays, and counts, like any other model)."""
        if self._stopping:  # workers unloading now: let their memory come back first
            await asyncio.gather(*self._stopping, return_exceptions=True)
        others = [
            (d, e)
            for d, e in self._loaded.items()
            if (d != model.digest or not replaces) and e.worker.alive
        ]
        others += [(f"{e.model.digest}#{i}", e) for i, e in enumerate(self._dedicated)]
        candidates = sorted(
            ((d, e) for d, e in others if self._loaded.get(d) is e and self._evictable(d, e)),
            key=lambda de: de[1].worker.last_used,
        )
        free = self._probe(device) if need is not None else None
        limit = self._cfg.memory_limit if need is not None else 0
        used = sum(e.need.total_bytes for _, e in others if e.need)
        pool = memory_pool(device)
        evict: list[tuple[str, _Loaded]] = []
        freed_pool = freed_all = 0

        def short() -> tuple[bool, bool, bool]:
            total = need.total_bytes if need else 0
            count = len(others) - len(evict) + 1 > self._cfg.max_loaded
            memory = free is not None and total > free + freed_pool
            capped = bool(limit) and used - freed_all + total > limit
            return count, memory, capped

        for digest, entry in candidates:
            count, memory, capped = short()
            if not (count or memory or capped):
                break
            size = entry.need.total_bytes if entry.need else 0
            same_pool = memory_pool(entry.worker.spec.device) == pool
            if count or (capped and size) or (memory and same_pool and size):
                evict.append((digest, entry))
                freed_all += size
                freed_pool += size if same_pool else 0
        count, memory, capped = short()
        if count or memory or capped:
            raise ResourceExhausted(
                self._refusal(model, device, need, count, free, limit, used, others)
            )
        for digest, entry in evict:
            self._forget(digest, entry)
        for _, entry in evict:
            log.info("unloading %s to make room for %s", entry.model.name, model.name)
            await entry.worker.stop()

    def _refusal(
        self,
        model: ResolvedModel,
        device: str,
        need: MemoryEstimate | None,
        count: bool,
        free: int | None,
        limit: int,
        used: int,
        others: list[tuple[str, _Loaded]],
    ) -> str:
        loaded = ", ".join(self._what(d, e) for d, e in others) or "nothing else"
        if count:
            return (
                f"cannot load {model.name}: {len(others)} "
                f"model{'s are' if len(others) != 1 else ' is'} loaded "
                f"(EDGED_MAX_LOADED={self._cfg.max_loaded}) and none can be unloaded now. "
                f"Loaded: {loaded}. Retry when one is idle, stop one (edged stop MODEL) "
                "or raise EDGED_MAX_LOADED"
            )
        assert need is not None
        room: list[str] = []
        if free is not None:
            room.append(f"{human_bytes(free)} of memory is free for {device}")
        if limit:
            room.append(
                f"EDGED_MEMORY_LIMIT_MB allows {human_bytes(limit)} for all models "
                f"and {human_bytes(used)} is in use"
            )
        return (
            f"not enough memory to load {model.name} on {device}: it needs "
            f"{describe_need(need)}, but {' and '.join(room)}, and no idle model can be "
            f"unloaded to make room. Loaded: {loaded}. Stop a model (edged stop MODEL), "
            "ask for a smaller context (--context N or EDGED_CONTEXT) or free memory"
        )

    def _what(self, digest: str, entry: _Loaded) -> str:
        size = human_bytes(entry.need.total_bytes) if entry.need else "size unknown"
        if entry.purpose:
            state = entry.purpose
        elif entry.pinned:
            state = "pinned"
        elif not self._idle(digest, entry):
            n = max(entry.worker.active, self._inflight.get(digest, 0))
            state = f"{n} request{'s' if n != 1 else ''} running or queued"
        else:
            state = "idle"
        return f"{entry.model.name} ({size}, {state})"

    # ------------------------------------------------------------ requests

    async def generate(
        self, model: ResolvedModel, job: Job, options: LoadOptions | None = None
    ) -> AsyncGenerator[Chunk | Done, None]:
        async with self._serving(model, options) as worker:
            if worker.description is not None:  # refused here, before it queues
                if worker.description.capabilities.embeddings:
                    raise FailedPrecondition(f"{model.name} is an embedding model: {EMBED_INSTEAD}")
                check_controls(job, worker.description.capabilities)
            async with contextlib.aclosing(worker.run(job)) as events:
                async for event in events:
                    yield event

    async def tokenize(
        self,
        model: ResolvedModel,
        options: LoadOptions | None = None,
        *,
        text: str | None = None,
        job: Job | None = None,
        add_special: bool = False,
        parse_special: bool = False,
    ) -> tuple[list[int], list[bytes]]:
        """Tokens of raw text or of a job's prompt, from the model's worker."""
        async with self._serving(model, options) as worker:
            return await worker.tokenize(
                text=text, job=job, add_special=add_special, parse_special=parse_special
            )

    async def detokenize(
        self,
        model: ResolvedModel,
        tokens: list[int],
        *,
        special: bool,
        options: LoadOptions | None = None,
    ) -> list[bytes]:
        async with self._serving(model, options) as worker:
            return await worker.detokenize(tokens, special=special)

    async def embed(
        self,
        model: ResolvedModel,
        inputs: list[EmbedInput],
        *,
        truncate: bool = True,
        normalize: bool = True,
        dimensions: int | None = None,
        options: LoadOptions | None = None,
        deadline: float | None = None,
    ) -> Embeddings:
        """Pooled vectors of ``inputs`` from an embedding model's worker, in
        calls of at most EMBED_CALL_INPUTS inputs; ``deadline`` (time.time())
        is checked before each call and bounds it."""
        async with self._serving(model, options) as worker:
            caps = worker.description.capabilities if worker.description else None
            if caps is None or not caps.embeddings:
                raise FailedPrecondition(
                    f"{model.name} has no pooling for embeddings: it is a generative model "
                    "(use an embedding model, for example all-minilm)"
                )
            if dimensions is not None and dimensions != caps.embedding_dimensions:
                raise InvalidArgument(
                    f"this model returns {caps.embedding_dimensions} dimensions; "
                    f"dimensions={dimensions} cannot be served (edged does not shorten "
                    "embeddings: leave dimensions unset)"
                )
            parts: list[Embeddings] = []
            for start in range(0, len(inputs), EMBED_CALL_INPUTS):
                timeout_s = EMBED_CALL_TIMEOUT_S
                if deadline is not None:
                    timeout_s = deadline - time.time()
                    if timeout_s <= 0:
                        raise DeadlineExceeded("the request's deadline passed while embedding")
                batch = inputs[start : start + EMBED_CALL_INPUTS]
                try:
                    part = await worker.embed(
                        batch, truncate=truncate, normalize=normalize, timeout_s=timeout_s
                    )
                except asyncio.TimeoutError:
                    raise DeadlineExceeded(
                        "the request's deadline passed while embedding"
                    ) from None
                parts.append(
                    Embeddings(
                        part.vectors,
                        part.dimensions,
                        part.prompt_tokens,
                        tuple(start + i for i in part.truncated),
                    )
                )
        return join_embeddings(parts, caps.embedding_dimensions)

    @contextlib.asynccontextmanager
    async def _serving(
        self, model: ResolvedModel, options: LoadOptions | None
    ) -> AsyncIterator[Worker]:
        """The model's worker for one request: counted against the queue bound
        and kept loaded while the request runs."""
        options = options or LoadOptions()
        limit = self._cfg.queue_size + self._cfg.max_sequences
        inflight = self._inflight.get(model.digest, 0)
        if inflight >= limit:
            raise QueueFull(
                f"{model.name} already has {inflight} requests running or queued "
                f"(limit {limit}, EDGED_QUEUE_SIZE); retry later"
            )
        self._inflight[model.digest] = inflight + 1
        entry: _Loaded | None = None
        try:
            entry = await self._worker_for(model, options)
            yield entry.worker
        finally:
            self._inflight[model.digest] -= 1
            if entry is not None:
                self._after_request(model.digest, entry)

    def _after_request(self, digest: str, entry: _Loaded) -> None:
        """Keep-alive 0: an idle model is unloaded now (it leaves ps at once);
        otherwise the reaper recomputes its expiry."""
        due = self._due(digest, entry)
        if due is not None and entry.keep_alive_s == 0 and self._loaded.get(digest) is entry:
            log.info("unloading %s (keep-alive 0)", entry.model.name)
            self._forget(digest, entry)
            self._stop_later(entry.worker)
        self._poke.set()

    async def load(self, model: ResolvedModel, options: LoadOptions) -> LoadedInfo:
        """Load a model now (or update a loaded one's keep-alive and pin)."""
        entry = await self._worker_for(model, options)
        return self._info(model.digest, entry)

    def describe(self, model: ResolvedModel) -> ModelDescription | None:
        entry = self._loaded.get(model.digest)
        return entry.worker.description if entry else None

    def worker_of(self, digest: str) -> Worker | None:
        entry = self._loaded.get(digest)
        return entry.worker if entry and entry.worker.alive else None

    async def fork_session(self, digest: str, source_id: str, new_id: str) -> str:
        """Copy a session's KV in its model's worker; "none" when nothing was copied."""
        worker = self.worker_of(digest)
        return "none" if worker is None else await worker.fork_session(source_id, new_id)

    async def kv_locations(self, digest: str, timeout_s: float = 5.0) -> dict[str, str]:
        """Where each session's KV is in the model's worker ({} when not loaded or busy)."""
        worker = self.worker_of(digest)
        if worker is None:
            return {}
        try:
            return await asyncio.wait_for(worker.kv_locations(), timeout_s)
        except (EdgedError, asyncio.TimeoutError):
            return {}

    async def kv_bytes(self, digest: str, timeout_s: float = 5.0) -> dict[str, int]:
        """Bytes of session KV per tier in the model's worker ({} when not loaded or busy)."""
        worker = self.worker_of(digest)
        if worker is None:
            return {}
        try:
            return await asyncio.wait_for(worker.kv_bytes(), timeout_s)
        except (EdgedError, asyncio.TimeoutError):
            return {}

    def inflight(self, digest: str) -> int:
        """Requests for a model running or waiting (the EDGED_QUEUE_SIZE count)."""
        return self._inflight.get(digest, 0)

    @contextlib.asynccontextmanager
    async def dedicated(
        self,
        model: ResolvedModel,
        *,
        context_length: int,
        purpose: str,
        sequences: int = 1,
        kv_type: str = "",
    ) -> AsyncIterator[Worker]:
        """A worker for ``model`` that no request shares (a calibration run).

        ``kv_type`` (default: EDGED_KV_TYPE where the backend offers it) is the
        KV cache it runs with. The model's loaded worker is used when it already
        runs this backend on this device with that KV type; otherwise a worker of
        ``sequences`` sequences (each of ``context_length`` tokens) is loaded like any model
        (memory admission, EDGED_MAX_LOADED, idle models unloaded LRU first),
        counts as loaded while it runs, and is stopped afterwards.
        """
        kv = self._kv_type(model, LoadOptions(kv_type=kv_type))
        entry = self._loaded.get(model.digest)
        if (
            entry is not None
            and entry.worker.alive
            and entry.worker.backend == model.backend
            and entry.worker.spec.device == model.device
            and entry.worker.spec.kv_type == kv
        ):
            self._inflight[model.digest] = self._inflight.get(model.digest, 0) + 1
            try:
                yield entry.worker
            finally:
                self._inflight[model.digest] -= 1
                self._after_request(model.digest, entry)
            return
        spec = replace(
            self._spec(
                model,
                context_length,
                sequences,
                kv_type=kv,
            ),
            kv_dir=None,
            kv_ram_budget=16 << 20,
            kv_disk_budget=0,
        )
        async with self._admission:
            need = await self._need(model, model.backend, spec)
            await self._make_room(model, model.device, need, replaces=False)
            worker = self._factory(model.backend, spec, f"{model.name} ({purpose})")
            own = _Loaded(worker, model, need, keep_alive_s=0, purpose=purpose)
            self._dedicated.append(own)
            try:
                await worker.start()
            except BaseException:
                self._dedicated.remove(own)
                raise
        try:
            yield worker
        finally:
            self._dedicated.remove(own)
            await worker.stop()

    def _info(self, digest: str, entry: _Loaded) -> LoadedInfo:
        due = self._due(digest, entry)
        return LoadedInfo(
            model=entry.model,
            worker=entry.worker,
            memory=entry.need,
            keep_alive_s=entry.keep_alive_s,
            pinned=entry.pinned,
            expires_at=None if due is None else time.time() + (due - time.monotonic()),
        )

    def loaded(self) -> list[LoadedInfo]:
        return [self._info(d, e) for d, e in self._loaded.items() if e.worker.alive]

    def apply_settings(self, digest: str, *, pinned: bool, keep_alive_s: float | None) -> None:
        """A model's settings changed: its loaded worker takes the pin and keep-alive now
        (None: EDGED_KEEP_ALIVE); context, backend and device apply at the next load."""
        entry = self._loaded.get(digest)
        if entry is not None:
            entry.pinned_by_settings = pinned
            entry.keep_alive_s = self._cfg.keep_alive_s if keep_alive_s is None else keep_alive_s
            self._after_request(digest, entry)  # keep-alive 0 on an idle model: unload now

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
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)


def join_embeddings(parts: list[Embeddings], dimensions: int) -> Embeddings:
    """The answers to consecutive calls as one (their indices already global)."""
    return Embeddings(
        b"".join(p.vectors for p in parts),
        parts[0].dimensions if parts else dimensions,
        sum(p.prompt_tokens for p in parts),
        tuple(i for p in parts for i in p.truncated),
    )


def gpu_layers_for(device: str, wanted: int) -> int:
    """Layers to offload: none on the CPU; ``wanted`` on a GPU, where 0 means all (-1)."""
    if device in ("", "cpu"):
        return 0
    return wanted if wanted > 0 else -1
