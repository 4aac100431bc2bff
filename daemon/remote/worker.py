"""A remote model's worker: the scheduler's Worker, served by an OpenAI-compatible upstream.

It lives in the daemon's event loop (no process: there is no library to
crash) and streams each job from the upstream with httpx. Sessions keep their
history in edged and every turn sends the whole conversation, so the
upstream's prefix cache does the KV reuse; its ``cached_tokens`` come back in
the stats. A consumer that goes away (a client disconnect, a deadline) closes
the upstream response, which ends the upstream's generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from edged.backends.base import (
    Capabilities,
    Chunk,
    Done,
    Embeddings,
    EmbedInput,
    Job,
    LoadSpec,
    Message,
    ModelDescription,
    Stats,
    ToolCallDelta,
)
from edged.common import errors
from edged.daemon.remote import upstream
from edged.models_registry.remote import REMOTE_BACKEND, RemoteSpec

log = logging.getLogger(__name__)

BACKEND = REMOTE_BACKEND
_FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "stop",
}


def load_spec_file(path: str) -> RemoteSpec:
    try:
        with open(path, "rb") as fh:
            return RemoteSpec.from_json(fh.read())
    except OSError as exc:
        raise errors.FailedPrecondition(
            f"the remote model's settings are missing ({exc.strerror}); add it again"
        ) from None


def capabilities(remote: RemoteSpec) -> Capabilities:
    """What the upstream declared (or a probe showed) when the remote was added."""
    p = remote.probed
    return Capabilities(
        backend=BACKEND,
        device=remote.host,
        formats=("remote",),
        context_length=p.context_length,
        max_sequences=0,
        batching=True,
        session_kv=False,  # the upstream's prefix cache reuses the history
        sampling=("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed"),
        kv_tiers=False,
        fork=False,
        response_formats=("json_object", "json_schema") if p.json_output else (),
        tools=p.tools,
        embeddings=p.embeddings,
        embedding_dimensions=p.embedding_dimensions,
    )


class RemoteWorker:
    """One remote model as the scheduler sees a worker."""

    def __init__(self, backend: str, spec: LoadSpec, label: str) -> None:
        self.backend = backend
        self.spec = spec
        self.label = label
        self.description: ModelDescription | None = None
        self.loaded_at = time.time()
        self.last_used = time.monotonic()
        self.remote = load_spec_file(spec.model_path)
        self._token = ""
        self._http: httpx.AsyncClient | None = None
        self._active = 0
        self._stopped = False
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        return None

    @property
    def alive(self) -> bool:
        return not self._stopped

    @property
    def active(self) -> int:
        return self._active

    async def start(self) -> ModelDescription:
        """Read the token (a 0600 file) and open the client; the upstream is not
        called here (the first request says whether it is reachable)."""
        self._token = upstream.read_token(self.remote.token_file) if self.remote.token_file else ""
        self._http = upstream.client(self.remote)
        caps = capabilities(self.remote)
        self.description = ModelDescription(
            capabilities=caps,
            chat_template="",
            metadata={"remote.url": self.remote.url, "remote.model": self.remote.model},
        )
        return self.description

    def _client(self) -> httpx.AsyncClient:
        if self._http is None or self._stopped:
            raise errors.Unavailable(f"{self.label} was unloaded; retry to load it again")
        return self._http

    async def run(self, job: Job) -> AsyncGenerator[Chunk | Done, None]:
        """The job's chunks and Done, streamed from the upstream.

        The upstream response is read by a task of its own: when the consumer
        goes away, that task is cancelled once and httpx closes the connection,
        which ends the upstream's generation. (Read in the consumer's task, a
        door's cancel scope cancels every await of httpx's close as well, and
        the connection stays open while the upstream keeps generating.)
        """
        http = self._client()
        path, body = request_body(self.remote.model, job)
        timeout = None
        if job.deadline is not None:
            timeout = job.deadline - time.time()
            if timeout <= 0:
                raise errors.DeadlineExceeded("the request's deadline passed before it started")
        connect = min(timeout or upstream.CONNECT_TIMEOUT_S, upstream.CONNECT_TIMEOUT_S)
        req = http.build_request(
            "POST",
            path,
            json=body,
            headers=upstream.headers(self._token),
            timeout=httpx.Timeout(timeout, connect=connect),
        )
        queue: asyncio.Queue[Chunk | Done | errors.EdgedError] = asyncio.Queue()
        self._active += 1
        self.last_used = time.monotonic()
        pump = asyncio.get_running_loop().create_task(self._pump(http, req, job, queue))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, errors.EdgedError):
                    raise item
                yield item
                if isinstance(item, Done):
                    return
        finally:
            pump.cancel()  # no-op when it has finished
            self._active -= 1
            self.last_used = time.monotonic()

    async def _pump(
        self,
        http: httpx.AsyncClient,
        req: httpx.Request,
        job: Job,
        queue: asyncio.Queue[Chunk | Done | errors.EdgedError],
    ) -> None:
        started = time.perf_counter()
        try:
            try:
                resp = await http.send(req, stream=True)
            except httpx.HTTPError as exc:
                raise upstream.transport_error(self.remote, exc, self._token) from None
            try:
                if resp.status_code != 200:
                    raise upstream.status_error(
                        self.remote, resp.status_code, await resp.aread(), self._token
                    )
                async for event in self._events(resp, job, started):
                    queue.put_nowait(event)
            finally:
                await resp.aclose()
        except errors.EdgedError as exc:
            queue.put_nowait(exc)
        except asyncio.CancelledError:
            if self._stopped:  # unloaded mid-stream (else the consumer has gone)
                queue.put_nowait(errors.Unavailable(f"{self.label} was unloaded; retry"))
            raise
        except Exception as exc:  # a bug here must end the stream, not hang it
            log.exception("reading %s from %s failed", self.label, self.remote.host)
            queue.put_nowait(errors.Internal(f"reading from {self.remote.host} failed: {exc}"))

    async def _events(
        self, resp: httpx.Response, job: Job, started: float
    ) -> AsyncGenerator[Chunk | Done, None]:
        reader = _StreamState(job.request_id)
        try:
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    raise errors.Unavailable(
                        f"the upstream {self.remote.host} sent a malformed stream event"
                    ) from None
                if isinstance(event, dict) and "error" in event:
                    raise upstream.status_error(
                        self.remote, 500, json.dumps(event).encode(), self._token
                    )
                chunk = reader.feed(event)
                if chunk is not None:
                    if reader.first is None:
                        reader.first = time.perf_counter()
                    yield chunk
        except httpx.HTTPError as exc:
            raise upstream.transport_error(self.remote, exc, self._token) from None
        yield Done(job.request_id, reader.stats(started))

    def drop_session(self, session_id: str) -> None:
        """Nothing to drop: edged keeps the history, the upstream its own cache."""

    async def fork_session(self, source_id: str, new_id: str) -> str:
        return "none"

    async def kv_locations(self) -> dict[str, str]:
        return {}

    async def kv_bytes(self) -> dict[str, int]:
        return {}

    async def tokenize(
        self,
        *,
        text: str | None = None,
        job: Job | None = None,
        add_special: bool = False,
        parse_special: bool = False,
    ) -> tuple[list[int], list[bytes]]:
        raise errors.FailedPrecondition(
            f"{self.label} is served by {self.remote.host}, whose OpenAI API has no "
            "tokenizer call; tokenize with the upstream itself"
        )

    async def detokenize(self, tokens: list[int], *, special: bool) -> list[bytes]:
        raise errors.FailedPrecondition(
            f"{self.label} is served by {self.remote.host}, whose OpenAI API has no "
            "detokenizer call"
        )

    async def embed(
        self, inputs: list[EmbedInput], *, truncate: bool, normalize: bool, timeout_s: float
    ) -> Embeddings:
        """Vectors from the upstream's /v1/embeddings (it truncates and
        normalizes as it does; edged normalizes again when asked)."""
        http = self._client()
        body: dict[str, Any] = {
            "model": self.remote.model,
            "input": [x if isinstance(x, str) else list(x) for x in inputs],
            "encoding_format": "float",
        }
        self._active += 1
        try:
            resp = await http.post(
                "embeddings",
                json=body,
                headers=upstream.headers(self._token),
                timeout=httpx.Timeout(timeout_s, connect=upstream.CONNECT_TIMEOUT_S),
            )
        except httpx.HTTPError as exc:
            raise upstream.transport_error(self.remote, exc, self._token) from None
        finally:
            self._active -= 1
            self.last_used = time.monotonic()
        if resp.status_code != 200:
            raise upstream.status_error(self.remote, resp.status_code, resp.content, self._token)
        return _embeddings(resp.json(), len(inputs), normalize=normalize, host=self.remote.host)

    async def stop(self) -> None:
        self._stopped = True
        for pump in list(self._pumps):
            pump.cancel()
        if self._http is not None:
            await self._http.aclose()


def _message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.name and m.role == "tool":
        out["name"] = m.name
    return out


def request_body(model: str, job: Job) -> tuple[str, dict[str, Any]]:
    """The upstream path and JSON body for a job (chat or raw prompt)."""
    s = job.sampling
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
    }
    if s.top_k:
        body["top_k"] = s.top_k
    if s.min_p:
        body["min_p"] = s.min_p
    if s.repeat_penalty != 1.0:
        body["repeat_penalty"] = s.repeat_penalty
    if s.seed is not None:
        body["seed"] = s.seed
    if s.stop:
        body["stop"] = list(s.stop)
    if job.infill is not None:
        raise errors.FailedPrecondition("fill-in-the-middle is not forwarded to remote models")
    if job.prompt is not None:
        body["prompt"] = job.prompt
        return "completions", body
    body["messages"] = [_message(m) for m in job.messages]
    c = job.constraint
    if c is not None and c.kind == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif c is not None and c.kind == "json_schema":
        schema = json.loads(c.text) if c.text else {}
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema, "strict": True},
        }
    elif c is not None:
        raise errors.InvalidArgument(f"{c.kind} output is not forwarded to remote models")
    if job.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": json.loads(t.parameters)
                    if t.parameters
                    else {"type": "object", "properties": {}},
                },
            }
            for t in job.tools
        ]
        mode = job.tool_choice.mode
        body["tool_choice"] = (
            {"type": "function", "function": {"name": job.tool_choice.function}}
            if mode == "function"
            else mode
        )
        body["parallel_tool_calls"] = job.parallel_tool_calls
    return "chat/completions", body


class _StreamState:
    """What the stream said so far: text pieces, tool calls, usage, finish reason."""

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id
        self.first: float | None = None
        self.pieces = 0
        self.finish = "stop"
        self.usage: dict[str, Any] = {}

    def feed(self, event: Any) -> Chunk | None:
        if not isinstance(event, dict):
            return None
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        choices = event.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish = _FINISH.get(str(choice["finish_reason"]), "stop")
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content") or ""
            calls = tuple(_call_delta(d) for d in delta.get("tool_calls") or ())
        else:  # /v1/completions
            text, calls = choice.get("text") or "", ()
        if not text and not calls:
            return None
        self.pieces += 1
        return Chunk(self.request_id, text, 1, tool_calls=calls)

    def stats(self, started: float) -> Stats:
        now = time.perf_counter()
        u = self.usage
        completion = int(u.get("completion_tokens") or self.pieces)
        details = u.get("prompt_tokens_details")
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
        ttft = ((self.first or now) - started) * 1000.0
        decode_s = now - (self.first or now)
        return Stats(
            prompt_tokens=int(u.get("prompt_tokens") or 0),
            cached_prompt_tokens=cached,
            completion_tokens=completion,
            time_to_first_token_ms=ttft,
            decode_tokens_per_second=(completion - 1) / decode_s if decode_s > 0 else 0.0,
            total_ms=(now - started) * 1000.0,
            finish_reason=self.finish,
            kv_source="prefix" if cached else "none",
        )


def _call_delta(d: Any) -> ToolCallDelta:
    if not isinstance(d, dict):
        return ToolCallDelta(0)
    raw = d.get("function")
    fn: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return ToolCallDelta(
        index=int(d.get("index") or 0),
        id=str(d.get("id") or ""),
        name=str(fn.get("name") or ""),
        arguments=str(fn.get("arguments") or ""),
    )


def _embeddings(data: Any, count: int, *, normalize: bool, host: str) -> Embeddings:
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list) or len(rows) != count:
        raise errors.Unavailable(f"the upstream {host} answered embeddings for another input count")
    rows = sorted(rows, key=lambda r: int(r.get("index", 0)))
    vectors = [[float(x) for x in r["embedding"]] for r in rows]
    dims = len(vectors[0]) if vectors else 0
    if any(len(v) != dims for v in vectors):
        raise errors.Unavailable(f"the upstream {host} answered vectors of different lengths")
    if normalize:
        vectors = [_unit(v) for v in vectors]
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    packed = b"".join(struct.pack(f"<{dims}f", *v) for v in vectors)
    return Embeddings(packed, dims, int(usage.get("prompt_tokens") or 0))


def _unit(v: list[float]) -> list[float]:
    norm = sum(x * x for x in v) ** 0.5
    return [x / norm for x in v] if norm > 0 else v
