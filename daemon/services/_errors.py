"""Error translation at the gRPC boundary: one place, used by every service."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from edged.common.errors import EdgedError
from edged.daemon.grpc_codes import status_code_for

log = logging.getLogger("edged.rpc")

T = TypeVar("T")

# Absolute POSIX paths (and Windows drive paths) inside a message.
_PATH = re.compile(r"(?<![\w.:/-])(?:/|[A-Za-z]:\\)[^\s'\",;:()\[\]{}<>]*")
_allowed: tuple[str, ...] = ()


def allow_paths_under(*roots: Path) -> None:
    """Paths under these roots (the store, the cache) may appear in errors."""
    global _allowed
    _allowed = tuple(str(r).rstrip("/") + "/" for r in roots)


def redact_paths(message: str, request_text: str = "") -> str:
    """Replace file-system paths outside the store with ``<path>``.

    A path the client sent itself (it appears in ``request_text``) is kept:
    repeating it tells the client nothing new.
    """

    def keep_or_hide(m: re.Match[str]) -> str:
        path = m.group(0)
        if len(path) <= 1 or path.startswith(_allowed) or (path in request_text):
            return path
        return "<path>"

    return _PATH.sub(keep_or_hide, message)


def _request_text(request: Any) -> str:
    try:
        return str(request)
    except Exception:  # a message whose repr fails must not break error handling
        return ""


async def _abort(context: Any, exc: BaseException, request: Any = None) -> None:
    if isinstance(exc, EdgedError):
        log.info("rpc error %s: %s", type(exc).__name__, exc)
        message = redact_paths(str(exc), _request_text(request))
        await context.abort(status_code_for(exc), message)
    # Anything else is a bug: the client gets no text from it (no paths, no
    # stack), the log gets everything.
    log.exception("internal error", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error in edged; see the daemon log")


def unary(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> T:
        try:
            return await fn(self, request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _is_abort(exc):
                raise
            await _abort(context, exc, request)
            raise AssertionError("unreachable") from exc

    return wrapper


def stream(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[T]:
        try:
            async for item in fn(self, request, context):
                yield item
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _is_abort(exc):
                raise
            await _abort(context, exc, request)

    return wrapper


def _is_abort(exc: BaseException) -> bool:
    """``context.abort`` raises this to end the call; it must pass through."""
    return isinstance(exc, grpc.aio.AbortError) or type(exc).__name__ == "AbortError"


def unary_of(method: str) -> Callable[..., Awaitable[Any]]:
    """The gRPC binding of a plain service method ``method(request)``: errors
    become status codes (one line per RPC in a servicer class)."""

    async def rpc(self: Any, request: Any, context: Any) -> Any:
        return await getattr(self, method)(request)

    rpc.__name__ = rpc.__qualname__ = method
    return unary(rpc)


def stream_of(method: str) -> Callable[..., AsyncIterator[Any]]:
    """The gRPC binding of a plain streaming method ``method(request, deadline=...)``."""

    async def rpc(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.time() + float(remaining)
        async for item in getattr(self, method)(request, deadline=deadline):
            yield item

    rpc.__name__ = rpc.__qualname__ = method
    return stream(rpc)
