"""The HTTP door: every dialect's routes in one Starlette app, behind the access
checks (:mod:`.access`)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from edged.daemon.config import HttpConfig
from edged.daemon.http import anthropic, llama_server, ollama, openai, responses, scrape
from edged.daemon.http import errors as http_errors
from edged.daemon.http.access import Access, dialect_of
from edged.daemon.http.door import Services
from edged.daemon.tokens import TokenStore


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404:
        message = f"no endpoint {path[:100]!r} (see the README's HTTP API table)"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {path[:100]!r}"
    else:
        message = str(exc.detail)
    return http_errors.render(dialect_of(path), exc.status_code, message, "invalid_request_error")


def build(services: Services, cfg: HttpConfig, tokens: TokenStore, *, bound_host: str) -> ASGIApp:
    routes = [
        *openai.ROUTES,
        *responses.ROUTES,
        *anthropic.ROUTES,
        *ollama.ROUTES,
        *llama_server.ROUTES,
        *scrape.ROUTES,
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.services = services
    return Access(
        app,
        tokens=tokens,
        anonymous_scopes=cfg.anonymous_scopes,
        origins=cfg.origins,
        bound_host=bound_host,
    )
