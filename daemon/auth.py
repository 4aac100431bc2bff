"""Token checks for the loopback TCP listener (the unix socket needs none:
its 0600 mode inside a 0700 directory already limits it to this user).

A call is let through with either the legacy token of EDGED_TOKEN_FILE (full
access) or a scoped token of EDGED_TOKENS_FILE (``edged token create``) whose
scopes allow the method (:func:`edged.daemon.tokens.scopes_for`). Either is sent
as ``authorization: Bearer <token>`` (or ``x-api-key: <token>``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from edged.daemon.tokens import TokenStore, scopes_for

_MESSAGE = "missing or wrong bearer token: send 'authorization: Bearer <token from the token file>'"
_SCOPED_MESSAGE = (
    "missing or wrong bearer token: send 'authorization: Bearer <token>' with the token from "
    "the token file or one made by `edged token create`"
)


@dataclass(frozen=True)
class Denial:
    code: grpc.StatusCode
    message: str


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")


def presented_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token a call carries: ``authorization: Bearer <t>``, else ``x-api-key: <t>``."""
    api_key = None
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, rest = _text(value).strip().partition(" ")
            if scheme.lower() == "bearer" and rest.strip():
                return rest.strip()
            return None  # an authorization header that is not a bearer token
        if key == "x-api-key" and api_key is None:
            api_key = _text(value).strip() or None
    return api_key


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Lets a call through with the legacy token, or with a scoped token from
    ``tokens`` whose scopes allow the method; refuses it otherwise."""

    def __init__(self, token: str, tokens: TokenStore | None = None) -> None:
        self._expected = token.encode()
        self._tokens = tokens

    def decide(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> Denial | None:
        """None to let the call through, else why it is refused."""
        unauthenticated = Denial(
            grpc.StatusCode.UNAUTHENTICATED,
            _MESSAGE if self._tokens is None else _SCOPED_MESSAGE,
        )
        got = presented_token(metadata)
        if got is None:
            return unauthenticated
        if self._expected and hmac.compare_digest(got.encode(), self._expected):
            return None
        info = self._tokens.check(got) if self._tokens is not None else None
        if info is None:
            return unauthenticated
        needed = scopes_for(method)
        if info.allows(needed):
            return None
        return Denial(
            grpc.StatusCode.PERMISSION_DENIED,
            f"token {info.name!r} (scopes: {', '.join(sorted(info.scopes))}) may not call "
            f"{method}: it needs the {needed!r} scope (edged token create NAME --scope {needed})",
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        denial = self.decide(details.method, details.invocation_metadata)
        if denial is None:
            return handler

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(denial.code, denial.message)

        async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(denial.code, denial.message)
            yield  # pragma: no cover - makes this an async generator

        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(deny_stream, **kw)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(deny, **kw)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(deny_stream, **kw)
        return grpc.unary_unary_rpc_method_handler(deny, **kw)
