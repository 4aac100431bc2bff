"""Worker processes as seen from the daemon's event loop.

One :class:`WorkerHandle` per loaded model. Requests are multiplexed over the
worker's pipe by request id; events are routed to per-request asyncio queues.
When the worker dies for any reason, every request still running on it gets
:class:`~edged.common.errors.WorkerCrashed`, and the handle reports itself dead
so the scheduler starts a fresh worker for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from edged.backends.base import (
    Chunk,
    Done,
    Embeddings,
    EmbedInput,
    Event,
    Failed,
    Job,
    LoadSpec,
    ModelDescription,
)
from edged.backends.worker import worker_main
from edged.backends.worker_protocol import (
    Call,
    CallFailed,
    Cancel,
    Detokenize,
    DropSession,
    Embed,
    Embedded,
    Events,
    Forked,
    ForkSession,
    FromWorker,
    KvLocations,
    ListKv,
    LoadFailed,
    Ready,
    Reply,
    StepFailed,
    Stop,
    Submit,
    Tokenize,
    Tokens,
    ToWorker,
)
from edged.common import errors
from edged.common.endpoints import unreachable
from edged.daemon.request_ids import next_request_id

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    queue: asyncio.Queue[Event | errors.EdgedError]


class WorkerHandle:
    def __init__(self, backend: str, spec: LoadSpec, label: str) -> None:
        self.backend = backend
        self.spec = spec
        self.label = label
        self.description: ModelDescription | None = None
        self.loaded_at = time.time()
        self.last_used = time.monotonic()
        self._requests: dict[int, _Pending] = {}
        self._proc: Any = None
        self._conn: Connection | None = None
        self._dead = False
        self._stopping = False  # stop() asked it to exit: its end is no crash
        self._ready: asyncio.Future[ModelDescription] | None = None
        self._calls: dict[int, asyncio.Future[Reply]] = {}

    @property
    def pid(self) -> int | None:
        return int(self._proc.pid) if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return not self._dead

    @property
    def active(self) -> int:
        return len(self._requests)

    async def start(self, timeout_s: float = 300.0) -> ModelDescription:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=worker_main,
            args=(child, self.backend, self.spec),
            name=f"edged-worker {self.label}",
            daemon=True,
        )
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        await loop.run_in_executor(None, self._proc.start)
        child.close()
        self._conn = parent
        loop.add_reader(parent.fileno(), self._on_readable)
        try:
            desc = await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except asyncio.TimeoutError:
            await self.stop()
            raise errors.Unavailable(f"loading {self.label} timed out") from None
        except BaseException:
            await self.stop()
            raise
        self.description = desc
        return desc

    def _on_readable(self) -> None:
        assert self._conn is not None
        try:
            msg: FromWorker = self._conn.recv()
        except (EOFError, OSError):
            self._on_dead()
            return
        match msg:
            case Events(events=events):
                for ev in events:
                    self._route(ev)
            case StepFailed(error=error, message=message):
                for each in self._requests.values():
                    each.queue.put_nowait(errors.from_name(error, message))
            case Forked() | KvLocations() | Tokens() | Embedded() | CallFailed():
                fut = self._calls.pop(msg.call_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            case Ready(description=desc):
                if self._ready and not self._ready.done():
                    self._ready.set_result(desc)
            case LoadFailed(error=error, message=message):
                if self._ready and not self._ready.done():
                    self._ready.set_exception(errors.from_name(error, message))
            case _:
                log.error("ignoring an unknown message from %s's worker", self.label)

    def _route(self, ev: Event) -> None:
        target = self._requests.get(ev.request_id)
        if target is not None:
            target.queue.put_nowait(ev)

    def _on_dead(self) -> None:
        if self._dead:
            return
        self._dead = True
        if self._conn is not None:
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._conn.fileno())
        code = self._proc.exitcode if self._proc is not None else None
        if self._proc is not None:
            self._proc.join(timeout=0.5)
            code = self._proc.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if self._stopping:
            log.info("worker for %s (pid %s) stopped", self.label, self.pid)
        else:
            log.error("worker for %s (pid %s) ended: %s", self.label, self.pid, how)
        if self._ready and not self._ready.done():
            self._ready.set_exception(
                errors.Unavailable(f"the worker loading {self.label} crashed ({how})")
            )
        crash: errors.EdgedError = errors.WorkerCrashed(
            f"the inference worker for {self.label} crashed ({how}){self._rpc_cause()}; "
            "the request was stopped. Retry: the next request starts a new worker"
        )
        if self._stopping:
            crash = errors.Unavailable(f"{self.label} was unloaded; retry to load it again")
        for pending in self._requests.values():
            pending.queue.put_nowait(crash)
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(crash)
        self._calls.clear()

    def _rpc_cause(self) -> str:
        """Which of the model's llama.cpp RPC workers went away ("" when none did):
        llama.cpp ends the process when an RPC server stops answering."""
        gone = unreachable(self.spec.rpc_servers) if self.spec.rpc_servers else []
        if not gone:
            return ""
        return (
            f": the RPC worker{'s' if len(gone) > 1 else ''} {', '.join(gone)} stopped "
            "answering (restart it with `edged rpc-worker`, or remove it from EDGED_RPC)"
        )

    def _send(self, msg: ToWorker) -> None:
        if self._dead or self._conn is None:
            raise errors.WorkerCrashed(f"the inference worker for {self.label} is not running")
        try:
            self._conn.send(msg)
        except (BrokenPipeError, OSError) as exc:
            self._on_dead()
            raise errors.WorkerCrashed(f"the inference worker for {self.label} stopped") from exc

    async def run(self, job: Job) -> AsyncGenerator[Chunk | Done, None]:
        """Submit a job and yield its chunks and final Done; raises on failure."""
        pending = _Pending(asyncio.Queue())
        self._requests[job.request_id] = pending
        self.last_used = time.monotonic()
        finished = False
        try:
            self._send(Submit(job))
            while True:
                item = await pending.queue.get()
                if isinstance(item, errors.EdgedError):
                    finished = True
                    raise item
                if isinstance(item, Failed):
                    finished = True
                    raise errors.from_name(item.error, item.message)
                if isinstance(item, Done):
                    finished = True
                    yield item
                    return
                yield item
        finally:
            self._requests.pop(job.request_id, None)
            self.last_used = time.monotonic()
            if not finished and not self._dead:
                # the consumer went away (client cancelled): stop the generation
                with contextlib.suppress(errors.WorkerCrashed):
                    self._send(Cancel(job.request_id))

    async def fork_session(self, source_id: str, new_id: str, timeout_s: float = 60.0) -> str:
        """Copy a session's KV in the worker; where the copy lives ("none": not copied)."""
        reply = await self._call(ForkSession(next_request_id(), source_id, new_id), timeout_s)
        if not isinstance(reply, Forked):
            raise errors.Internal(f"the worker answered a fork with {type(reply).__name__}")
        return reply.location

    async def kv_locations(self, timeout_s: float = 60.0) -> dict[str, str]:
        """Where each session's KV is in the worker: "resident", "ram" or "disk"."""
        return dict((await self._list_kv(timeout_s)).locations)

    async def kv_bytes(self, timeout_s: float = 60.0) -> dict[str, int]:
        """Bytes of session KV the worker keeps in each tier."""
        return dict((await self._list_kv(timeout_s)).tier_bytes)

    async def _list_kv(self, timeout_s: float) -> KvLocations:
        reply = await self._call(ListKv(next_request_id()), timeout_s)
        if not isinstance(reply, KvLocations):
            raise errors.Internal(f"the worker answered ListKv with {type(reply).__name__}")
        return reply

    async def tokenize(
        self,
        *,
        text: str | None = None,
        job: Job | None = None,
        add_special: bool = False,
        parse_special: bool = False,
        timeout_s: float = 60.0,
    ) -> tuple[list[int], list[bytes]]:
        """Tokens (and their bytes) of raw text, or of a job's prompt."""
        call = Tokenize(next_request_id(), text, job, add_special, parse_special)
        return self._tokens(await self._call(call, timeout_s))

    async def detokenize(
        self, tokens: list[int], *, special: bool, timeout_s: float = 60.0
    ) -> list[bytes]:
        """Each token's bytes."""
        reply = await self._call(Detokenize(next_request_id(), tokens, special), timeout_s)
        return self._tokens(reply)[1]

    async def embed(
        self,
        inputs: list[EmbedInput],
        *,
        truncate: bool = True,
        normalize: bool = True,
        timeout_s: float = 600.0,
    ) -> Embeddings:
        """Pooled vectors of ``inputs`` (one worker call; the scheduler splits big batches)."""
        self.last_used = time.monotonic()
        try:
            reply = await self._call(
                Embed(next_request_id(), inputs, truncate, normalize), timeout_s
            )
        finally:
            self.last_used = time.monotonic()
        if not isinstance(reply, Embedded):
            raise errors.Internal(f"the worker answered Embed with {type(reply).__name__}")
        return reply.result

    @staticmethod
    def _tokens(reply: Reply) -> tuple[list[int], list[bytes]]:
        if not isinstance(reply, Tokens):
            raise errors.Internal(f"the worker answered with {type(reply).__name__}")
        return list(reply.tokens), list(reply.pieces)

    async def _call(self, call: Call, timeout_s: float) -> Reply:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._calls[call.call_id] = fut
        try:
            self._send(call)
            reply = await asyncio.wait_for(fut, timeout_s)
        finally:
            self._calls.pop(call.call_id, None)
        if isinstance(reply, CallFailed):
            raise errors.from_name(reply.error, reply.message)
        return reply

    def drop_session(self, session_id: str) -> None:
        if not self._dead:
            with contextlib.suppress(errors.WorkerCrashed):
                self._send(DropSession(session_id))

    async def stop(self, timeout_s: float = 30.0) -> None:
        if self._proc is None:
            return
        self._stopping = True
        if not self._dead and self._conn is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(Stop())
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._proc.join, timeout_s)
        if self._proc.is_alive():
            self._proc.kill()
            await loop.run_in_executor(None, self._proc.join, 2.0)
        self._on_dead_quietly()

    def _on_dead_quietly(self) -> None:
        if self._conn is not None and not self._dead:
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._conn.fileno())
        self._dead = True
        for pending in self._requests.values():
            pending.queue.put_nowait(errors.Unavailable(f"{self.label} was unloaded"))
        if self._conn is not None:
            self._conn.close()
            self._conn = None
