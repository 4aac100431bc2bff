"""What every HTTP dialect shares: reading requests, access scopes, limits,
running the services, and writing streams (SSE, NDJSON).

A dialect module translates its JSON into the protobuf request the gRPC door
would send, hands it to the same service (:class:`Services`), and translates
the service's replies back. Errors are raised as edged errors (or
:class:`~edged.daemon.http.errors.HttpError` for the door's own checks) and
rendered in the dialect's shape by :func:`handle`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edged.common.errors import EdgedError
from edged.daemon.app import App
from edged.daemon.http import errors as http_errors
from edged.daemon.http.errors import HttpError
from edged.daemon.limits import Limiter
from edged.daemon.metrics import Metrics
from edged.daemon.services import _errors
from edged.daemon.services.inference import InferenceService
from edged.daemon.services.models import ModelsService
from edged.daemon.services.sessions import SessionsService
from edged.daemon.services.system import SystemService
from edged.v1 import edged_pb2 as pb

log = logging.getLogger("edged.http")
T = TypeVar("T")

GENERATE = "/edged.v1.Inference/Generate"
SEND = "/edged.v1.Sessions/Send"
PULL = "/edged.v1.Models/Pull"
# limit -> HTTP status (the limiter's "size", "tokens", "sessions", "streams")
_LIMIT_STATUS = {"size": 413, "tokens": 400, "sessions": 429, "streams": 429}


@dataclass
class Services:
    """The services every door calls (one instance each, shared with gRPC)."""

    app: App
    inference: InferenceService
    sessions: SessionsService
    models: ModelsService
    system: SystemService
    limiter: Limiter
    max_body_bytes: int

    @property
    def metrics(self) -> Metrics:
        return self.app.metrics


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


Handler = Callable[[Request], Awaitable[Response]]


def route(dialect: str, scope: str) -> Callable[[Handler], Handler]:
    """A dialect's endpoint: needs ``scope``; errors in the dialect's own shape."""

    def wrap(fn: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                require(request, scope)
                response = await fn(request)
            except (EdgedError, HttpError) as exc:
                response = _error_response(dialect, exc, request)
            except Exception:  # a bug: no detail to the client, all of it to the log
                log.exception("internal error in %s %s", request.method, request.url.path)
                message = "internal error in edged; see the daemon log"
                response = http_errors.render(dialect, 500, message, "api_error")
            services_of(request).metrics.http_request(
                dialect, endpoint_of(request), response.status_code, time.perf_counter() - started
            )
            return response

        endpoint.__name__ = fn.__name__
        return endpoint

    return wrap


def endpoint_of(request: Request) -> str:
    """The route's path with its parameters named (one metrics label per endpoint)."""
    path = request.url.path
    for name, value in request.path_params.items():
        if isinstance(value, str) and value:
            path = path.replace(value, "{" + name + "}")
    return path


def _error_response(dialect: str, exc: Exception, request: Request) -> Response:
    if isinstance(exc, EdgedError):
        log.info("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        exc = type(exc)(_errors.redact_paths(str(exc)))
    return http_errors.from_exception(dialect, exc)


def require(request: Request, scope: str) -> None:
    """401 without an identity, 403 without the scope (see access.py); "" needs none."""
    who = request.scope.get("edged.who", "")
    scopes: frozenset[str] = request.scope.get("edged.scopes", frozenset())
    if not scope or scope in scopes or "admin" in scopes:
        return
    if not who:
        why = request.scope.get("edged.why", "")
        raise HttpError(
            401,
            f"a token is needed{why}: send 'Authorization: Bearer <token>' "
            "(edged token create NAME --scope ...)",
            "authentication_error",
        )
    raise HttpError(403, f"{who} may not do this: it needs the {scope!r} scope", "permission_error")


async def body(request: Request) -> dict[str, Any]:
    """The request's JSON object (bounded by EDGED_MAX_MESSAGE_MB)."""
    limit = services_of(request).max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"the request is over {limit} bytes (EDGED_MAX_MESSAGE_MB)")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise HttpError(413, f"the request is over {limit} bytes (EDGED_MAX_MESSAGE_MB)")
    if not data:
        return {}
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HttpError(400, "the request body must be a JSON object")
    try:  # JSON may escape lone surrogates ("\ud800"): no UTF-8 text can carry them
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise HttpError(
            400,
            "the request holds text that is not valid Unicode "
            "(an unpaired surrogate escape such as \\ud800)",
        ) from None
    return value


def check_limits(request: Request, method: str, message: Any) -> None:
    """EDGED_MAX_* for an HTTP request, as the gRPC door applies them."""
    refused = services_of(request).limiter.refusal(method, message)
    if refused is not None:
        kind, reason = refused
        kind_name = (
            "rate_limit_error" if kind in ("sessions", "streams") else "invalid_request_error"
        )
        raise HttpError(_LIMIT_STATUS[kind], reason, kind_name)


async def guarded(request: Request, method: str, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A service stream counted against EDGED_MAX_STREAMS while it runs. A client
    that disconnects cancels it at once, as gRPC does, whether the reply streams
    or not, and while the prompt is still being read: the wait for the next item
    races the connection's ``http.disconnect``; the stream then just ends."""
    with services_of(request).limiter.streaming(method):
        items = stream.__aiter__()
        gone = asyncio.ensure_future(_disconnected(request))
        step: asyncio.Future[Any] | None = None
        try:
            while True:
                step = asyncio.ensure_future(items.__anext__())
                await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():  # the client went away first
                    log.info(
                        "%s %s: the client disconnected; generation cancelled",
                        request.method,
                        request.url.path,
                    )
                    return
                try:
                    item = step.result()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            gone.cancel()
            if step is not None and not step.done():  # cancels the generation in the service
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step


async def _disconnected(request: Request) -> None:
    """Returns when the client has closed its connection (the body is read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def resumed(first_item: T | None, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    """A stream :func:`first` started, whole again."""
    if first_item is not None:
        yield first_item
    async for item in rest:
        yield item


def stream_error(request: Request, dialect: str, exc: Exception) -> Any:
    """The error body for an error after a stream began (sent as the dialect's
    error event or record); logged."""
    log.info(
        "%s %s: stream ended by %s: %s", request.method, request.url.path, type(exc).__name__, exc
    )
    return http_errors.body_of(dialect, exc)


async def first(stream: AsyncIterator[Any]) -> tuple[Any, AsyncIterator[Any]]:
    """Start a stream and take its first item, so errors raised before any output
    become a proper error response rather than a broken stream."""
    iterator = stream.__aiter__()
    try:
        item = await iterator.__anext__()
    except StopAsyncIteration:
        item = None
    return item, iterator


def sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=_NO_BUFFERING)


def ndjson(lines: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(lines, media_type="application/x-ndjson", headers=_NO_BUFFERING)


_NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_data(obj: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def json_response(obj: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(obj, status_code=status)


@dataclass
class Reply:
    """A finished generation: its text, tool calls, logprobs and stats."""

    text: str
    tool_calls: list[pb.ToolCall]
    logprobs: list[pb.TokenLogprob]
    stats: pb.GenerationStats


async def collect(chunks: AsyncIterator[pb.GenerateChunk], first_chunk: Any = None) -> Reply:
    text: list[str] = []
    calls: dict[int, pb.ToolCall] = {}
    logprobs: list[pb.TokenLogprob] = []
    stats = pb.GenerationStats()

    def add(chunk: pb.GenerateChunk) -> None:
        nonlocal stats
        text.append(chunk.text)
        logprobs.extend(chunk.logprobs)
        for d in chunk.tool_calls:
            call = calls.setdefault(d.index, pb.ToolCall())
            call.id = call.id or d.id
            call.name = call.name or d.name
            call.arguments += d.arguments
        if chunk.HasField("stats"):
            stats = chunk.stats

    if first_chunk is not None:
        add(first_chunk)
    async for chunk in chunks:
        add(chunk)
    return Reply("".join(text), [calls[i] for i in sorted(calls)], logprobs, stats)


def deadline_from(request: Request) -> float | None:
    """A client's own timeout, when it sends one (X-Request-Timeout, seconds)."""
    raw = request.headers.get("x-request-timeout", "")
    try:
        return time.time() + float(raw) if raw else None
    except ValueError:
        return None


async def sleep_forever() -> None:
    await asyncio.Event().wait()
