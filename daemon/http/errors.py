"""edged errors as HTTP statuses, and each dialect's error body.

One table maps edged's error classes to HTTP statuses for every dialect (as
``grpc_codes.py`` does for gRPC); each dialect then writes the body its
clients parse: OpenAI ``{"error": {"message", "type", "code"}}``, Ollama
``{"error": "..."}``, Anthropic ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from edged.common import errors

# (class, HTTP status, OpenAI error type, Anthropic error type); first match wins
_TABLE: tuple[tuple[type[errors.EdgedError], int, str, str], ...] = (
    (errors.InvalidArgument, 400, "invalid_request_error", "invalid_request_error"),
    (errors.NotFound, 404, "not_found_error", "not_found_error"),
    (errors.AlreadyExists, 409, "invalid_request_error", "invalid_request_error"),
    (errors.ContextOverflow, 400, "invalid_request_error", "invalid_request_error"),
    (errors.QueueFull, 429, "rate_limit_error", "rate_limit_error"),
    (errors.ResourceExhausted, 429, "rate_limit_error", "rate_limit_error"),
    (errors.FailedPrecondition, 400, "invalid_request_error", "invalid_request_error"),
    (errors.Unauthenticated, 401, "authentication_error", "authentication_error"),
    (errors.PermissionDenied, 403, "permission_error", "permission_error"),
    (errors.DeadlineExceeded, 504, "timeout_error", "api_error"),
    (errors.Unavailable, 503, "server_error", "overloaded_error"),
    (errors.Cancelled, 499, "server_error", "api_error"),
)
RETRY_AFTER_S = 1


def status_of(exc: errors.EdgedError) -> tuple[int, str, str]:
    for cls, status, openai_type, anthropic_type in _TABLE:
        if isinstance(exc, cls):
            return status, openai_type, anthropic_type
    return 500, "server_error", "api_error"


class HttpError(Exception):
    """An error the door itself raises (before any service runs): a status and a
    message, rendered in the dialect's shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


def _headers(status: int) -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else {}


def render(dialect: str, status: int, message: str, kind: str) -> JSONResponse:
    body: Any
    if dialect == "ollama":
        body = {"error": message}
    elif dialect == "anthropic":
        body = {"type": "error", "error": {"type": kind, "message": message}}
    else:  # openai and llama-server
        body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status_code=status, headers=_headers(status))


def body_of(dialect: str, exc: Exception) -> Any:
    """The error body a dialect sends for ``exc`` (for errors inside a stream)."""
    return json.loads(bytes(from_exception(dialect, exc).body))


def from_exception(dialect: str, exc: Exception) -> JSONResponse:
    """An edged error or an HttpError as the dialect's error response."""
    if isinstance(exc, HttpError):
        return render(dialect, exc.status, exc.message, exc.kind)
    assert isinstance(exc, errors.EdgedError)
    status, openai_type, anthropic_type = status_of(exc)
    kind = anthropic_type if dialect == "anthropic" else openai_type
    return render(dialect, status, str(exc), kind)
