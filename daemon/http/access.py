"""Who may call the HTTP listener, checked before any endpoint runs.

A web page in a browser can send requests to localhost, and a DNS-rebinding
page can make its own name resolve to 127.0.0.1 (Ollama's CVE-2024-28224).
So, for every request:

1. **Host.** The ``Host`` header must name this listener: ``localhost``,
   ``127.0.0.1``, ``[::1]`` or the configured host (any port). A rebinding
   page's requests carry its own name: 403.
2. **Origin.** A request with an ``Origin`` header comes from a browser page; it
   is refused (403) unless the origin is in EDGED_ORIGINS. CORS preflights are
   answered only for those origins, and only their responses carry CORS headers.
3. **Identity.** A token (``Authorization: Bearer edt_...``, or ``x-api-key``
   as Anthropic's clients send it) gives its scopes; an unknown or revoked
   ``edt_`` token is 401. Any other bearer value (the placeholder keys SDKs
   insist on: "ollama", "sk-no-key-required") is no token at all. Without a
   token, a request gets EDGED_HTTP_ANON's scopes only when it comes over
   loopback from a process of the daemon's own user (:mod:`edged.daemon.peer`);
   another account's process gets none, and must bring a token.

The endpoint then asks for the scope it needs (``door.require``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edged.daemon.http import errors as http_errors
from edged.daemon.peer import peer_uid
from edged.daemon.tokens import PREFIX, TokenStore

log = logging.getLogger("edged.http")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_CORS_METHODS = "GET, POST, DELETE, OPTIONS"
_CORS_HEADERS = (
    "Authorization, Content-Type, X-Api-Key, Anthropic-Version, Anthropic-Beta, "
    "OpenAI-Organization, OpenAI-Project, X-Stainless-Arch, X-Stainless-Lang, "
    "X-Stainless-OS, X-Stainless-Package-Version, X-Stainless-Runtime, "
    "X-Stainless-Runtime-Version, X-Stainless-Retry-Count, X-Stainless-Timeout, X-Request-Timeout"
)

PeerLookup = Callable[[tuple[str, int], tuple[str, int]], "int | None"]


def dialect_of(path: str) -> str:
    """Which API a path belongs to (for the shape of its errors)."""
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/api/"):
        return "ollama"
    return "llama-server"


def host_name(header: str) -> str:
    """``"[::1]:11435"`` -> ``"::1"``, ``"Localhost:80"`` -> ``"localhost"``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Access:
    """ASGI middleware: Host, Origin and identity checks (see the module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: TokenStore,
        anonymous_scopes: frozenset[str],
        origins: tuple[str, ...] = (),
        bound_host: str = "127.0.0.1",
        own_uid: int | None = None,
        peer: PeerLookup = peer_uid,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.anonymous = anonymous_scopes
        self.origins = frozenset(o.lower() for o in origins)
        self.hosts = LOOPBACK_NAMES | {host_name(bound_host)} - {"0.0.0.0", "::"}
        self.own_uid = os.getuid() if own_uid is None else own_uid
        self.peer = peer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        dialect = dialect_of(scope["path"])
        host = host_name(headers.get("host", ""))
        if host not in self.hosts:
            log.warning("refused a request for Host %r (not this listener)", host[:80])
            await self._refuse(
                scope,
                receive,
                send,
                dialect,
                403,
                (
                    f"this listener does not serve the host {host[:80]!r}: use localhost "
                    "(a web page that renamed itself to 127.0.0.1 is refused)"
                ),
            )
            return
        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/").lower() not in self.origins:
            await self._refuse(
                scope,
                receive,
                send,
                dialect,
                403,
                (
                    f"requests from the web page origin {origin[:80]!r} are not allowed; "
                    "to allow it, add it to EDGED_ORIGINS"
                ),
                "permission_error",
            )
            return
        if origin is not None and scope["method"] == "OPTIONS":
            await _preflight(origin, send)
            return
        failure = self._identify(scope, headers)
        if failure:
            await self._refuse(scope, receive, send, dialect, 401, failure, "authentication_error")
            return
        await self.app(scope, receive, _with_cors(send, origin) if origin else send)

    def _identify(self, scope: Scope, headers: Headers) -> str:
        """Set the request's scopes and who it is; a message when it must be refused."""
        secret = _token(headers)
        if secret:
            info = self.tokens.check(secret)
            if info is None:
                return "the token is unknown or was revoked (see edged token list)"
            scope["edged.scopes"] = info.scopes
            scope["edged.who"] = f"the token {info.name!r}"
            return ""
        scope["edged.who"] = ""
        scope["edged.scopes"] = frozenset()
        client, server = scope.get("client"), scope.get("server")
        uid = None
        if client and server and is_loopback(str(client[0])):
            uid = self.peer((str(client[0]), int(client[1])), (str(server[0]), int(server[1])))
        if uid is not None and uid == self.own_uid:
            scope["edged.scopes"] = self.anonymous
            scope["edged.why"] = "" if self.anonymous else " (EDGED_HTTP_ANON is none)"
        elif uid is not None:
            scope["edged.why"] = " (the request comes from another user's process)"
        else:
            scope["edged.why"] = " (the caller's user could not be verified)"
        return ""

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        dialect: str,
        status: int,
        message: str,
        kind: str = "permission_error",
    ) -> None:
        response = http_errors.render(dialect, status, message, kind)
        await response(scope, receive, send)


def _token(headers: Headers) -> str:
    """An edged token from Authorization: Bearer or x-api-key ("" when none)."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    candidates = [value.strip()] if scheme.lower() == "bearer" else []
    candidates.append(headers.get("x-api-key", "").strip())
    for value in candidates:
        if value.startswith(PREFIX):
            return value
    return ""


async def _preflight(origin: str, send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 204,
            "headers": [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-methods", _CORS_METHODS.encode()),
                (b"access-control-allow-headers", _CORS_HEADERS.encode()),
                (b"access-control-max-age", b"600"),
                (b"vary", b"Origin"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def _with_cors(send: Send, origin: str) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
            headers.append((b"vary", b"Origin"))
            message = {**message, "headers": headers}
        await send(message)

    return sending
