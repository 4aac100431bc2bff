"""Error translation at the gRPC boundary: one place, used by every service."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from edged.daemon.errors import EdgedError
from edged.daemon.status import status_code_for

log = logging.getLogger("edged.rpc")

T = TypeVar("T")


async def _abort(context: Any, exc: BaseException) -> None:
    if isinstance(exc, EdgedError):
        log.info("rpc error %s: %s", type(exc).__name__, exc)
        await context.abort(status_code_for(exc), str(exc))
    log.exception("internal error", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error in edged; see the daemon log")


def unary(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> T:
        try:
            return await fn(self, request, context)
        except (EdgedError, ValueError, OSError, RuntimeError, KeyError, TypeError) as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc

    return wrapper


def stream(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[T]:
        try:
            async for item in fn(self, request, context):
                yield item
        except (EdgedError, ValueError, OSError, RuntimeError, KeyError, TypeError) as exc:
            await _abort(context, exc)

    return wrapper
