"""The HTTP listener: uvicorn serving the Starlette app inside the daemon's own
asyncio loop, beside the gRPC servers.

uvicorn and Starlette: the most used ASGI server and a small, well-kept ASGI
toolkit (no request-model layer we would not use: every dialect validates by
translating into the services' own protobuf requests). uvicorn's h11
protocol keeps it pure Python; the daemon, not uvicorn, owns SIGTERM and
SIGINT (its graceful shutdown stops this listener with the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger("edged.http")
MAX_CONNECTIONS = 1024


class _Embedded(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon handles signals and calls stop()


class HttpListener:
    def __init__(self, app: ASGIApp, host: str, port: int, *, grace_s: float) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            http="h11",
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            # connections at once; beyond it uvicorn answers 503 (a local flood
            # must not exhaust the daemon's file descriptors)
            limit_concurrency=MAX_CONNECTIONS,
            timeout_graceful_shutdown=max(1, int(grace_s)),
        )
        self._server = _Embedded(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        """Bind and serve; returns the address bound (a port of 0 picks a free one)."""
        self._task = asyncio.get_running_loop().create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # the bind failed: raise its error
                raise OSError("the HTTP listener stopped before it started")
            await asyncio.sleep(0.01)
        sock = self._server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return str(host), int(port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
