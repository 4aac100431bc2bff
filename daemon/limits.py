"""Per-request and per-daemon limits enforced at the gRPC edge.

Every local process of this user may talk to the daemon, and a misbehaving
client (a runaway IDE plugin, a fuzzer) must not be able to exhaust it. The
:class:`LimitsInterceptor` checks each request before any service code runs:

* generation prompts (and embedding inputs, all of them together; a token id
  counts 4 bytes) are bounded in bytes and ``max_tokens`` is capped;
* at most ``max_streams`` streaming calls (generation, pulls, conversions) run
  at once across all clients;
* at most ``max_sessions`` sessions are stored.

Beyond a limit the call ends with RESOURCE_EXHAUSTED and a message naming the
limit and the variable that raises it. Message size and HTTP/2 stream limits
are gRPC channel options (:func:`server_options`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from edged.daemon.config import Limits
from edged.v1 import edged_pb2 as pb


def server_options(limits: Limits) -> list[tuple[str, int]]:
    """gRPC server options: message sizes, HTTP/2 streams, keepalive of dead peers."""
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        # Per connection, and far above EDGED_MAX_STREAMS: the limiter answers
        # (RESOURCE_EXHAUSTED naming the variable), never HTTP/2's own refusal
        # (UNAVAILABLE "Stream removed"), whichever connection the calls share.
        ("grpc.max_concurrent_streams", max(1024, limits.max_streams * 8)),
        # ping idle connections every 2 minutes; a peer that does not answer in
        # 20 s is dropped and its streams are cancelled (its work freed)
        ("grpc.keepalive_time_ms", 120_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # clients may ping, but not more often than every 10 s without data
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 3),
    ]


def _prompt_bytes(request: Any) -> int:
    """What a request asks the model to read: its text, messages, infill and tools."""
    if isinstance(request, pb.GenerateRequest):
        which = request.WhichOneof("input")
        if which == "prompt":
            size = len(request.prompt.encode())
        elif which == "chat":
            size = sum(_message_bytes(m) for m in request.chat.messages)
        elif which == "infill":
            fill = request.infill
            texts = [fill.prefix, fill.suffix, fill.prompt]
            texts += [t for e in fill.extra for t in (e.filename, e.text)]
            size = sum(len(t.encode()) for t in texts)
        else:
            size = 0
        return size + _tools_bytes(request.tools)
    if isinstance(request, pb.SendRequest):
        size = len(request.content.encode()) + _tools_bytes(request.tools)
        return size + sum(_message_bytes(m) for m in request.tool_results)
    if isinstance(request, pb.EmbedRequest):
        text_bytes = sum(len(t.encode()) for t in request.inputs)
        return text_bytes + 4 * sum(len(ids.ids) for ids in request.token_inputs)
    if isinstance(request, pb.CreateSessionRequest):
        history = sum(_message_bytes(m) for m in request.history)
        return len(request.system_prompt.encode()) + history
    return 0


def _message_bytes(m: pb.ChatMessage) -> int:
    calls = sum(len(c.name) + len(c.arguments.encode()) for c in m.tool_calls)
    return len(m.content.encode()) + len(m.role) + calls


def _tools_bytes(tools: Any) -> int:
    return sum(
        len(t.name) + len(t.description.encode()) + len(t.parameters.encode()) for t in tools
    )


def _max_tokens(request: Any) -> int:
    sampling = getattr(request, "sampling", None)
    if isinstance(sampling, pb.SamplingParams) and sampling.HasField("max_tokens"):
        return int(sampling.max_tokens)
    return 0


# Calls that hold a slot while they stream (each may run for minutes).
_STREAMING = frozenset(
    {
        "/edged.v1.Inference/Generate",
        "/edged.v1.Sessions/Send",
        "/edged.v1.Models/Pull",
        "/edged.v1.Models/Convert",
    }
)
_NEW_SESSION = frozenset({"/edged.v1.Sessions/Create", "/edged.v1.Sessions/Fork"})


class Limiter:
    """The limits every door applies (gRPC listeners and the HTTP door share one):
    the same request gets the same answer whichever door it came through."""

    def __init__(self, limits: Limits, session_count: Callable[[], int]) -> None:
        self._limits = limits
        self._session_count = session_count
        self._streams = 0

    @property
    def active_streams(self) -> int:
        return self._streams

    @contextlib.contextmanager
    def streaming(self, method: str) -> Iterator[None]:
        """Count a running call against EDGED_MAX_STREAMS while it streams."""
        counted = method in _STREAMING
        self._streams += counted
        try:
            yield
        finally:
            self._streams -= counted

    def refusal(self, method: str, request: Any) -> tuple[str, str] | None:
        """(which limit, the reason) when this request is refused, else None; the
        limit is "size", "tokens", "sessions" or "streams" (HTTP answers 413 for
        size, 400 for tokens, 429 for the others; gRPC RESOURCE_EXHAUSTED)."""
        reason = self.check(method, request)
        if reason is None:
            return None
        for variable, kind in (
            ("EDGED_MAX_PROMPT_BYTES", "size"),
            ("EDGED_MAX_TOKENS", "tokens"),
            ("EDGED_MAX_SESSIONS", "sessions"),
        ):
            if variable in reason:
                return kind, reason
        return "streams", reason

    def check(self, method: str, request: Any) -> str | None:
        """The reason this request is refused, or None."""
        lim = self._limits
        size = _prompt_bytes(request)
        if size > lim.max_prompt_bytes:
            return (
                f"the prompt is {size} bytes; the limit is {lim.max_prompt_bytes} "
                "(EDGED_MAX_PROMPT_BYTES)"
            )
        tokens = _max_tokens(request)
        # Above what any request may ask (1 << 20) is a bad value: INVALID_ARGUMENT
        # from the sampling validation. Below it, this daemon's limit applies.
        if lim.max_tokens < tokens <= 1 << 20:
            return (
                f"max_tokens {tokens} is above this daemon's limit of {lim.max_tokens} "
                "(EDGED_MAX_TOKENS)"
            )
        if method in _NEW_SESSION and self._session_count() >= lim.max_sessions:
            return (
                f"{lim.max_sessions} sessions are stored, the limit (EDGED_MAX_SESSIONS); "
                "delete some first (edged sessions / Sessions.Delete)"
            )
        if method in _STREAMING and self._streams >= lim.max_streams:
            return (
                f"{self._streams} streams are already running, the limit "
                "(EDGED_MAX_STREAMS); retry later"
            )
        return None


class LimitsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The :class:`Limiter` at a gRPC listener: RESOURCE_EXHAUSTED beyond a limit."""

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def guarded_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                reason = self._limiter.check(method, request)
                if reason is not None:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
                with self._limiter.streaming(method):
                    async for item in inner_stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(guarded_stream, **kw)
        if handler.unary_unary:
            inner_unary = handler.unary_unary

            async def guarded_unary(request: Any, context: Any) -> Any:
                reason = self._limiter.check(method, request)
                if reason is not None:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
                return await inner_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(guarded_unary, **kw)
        return handler  # streaming requests (reflection): grpc's own limits apply
