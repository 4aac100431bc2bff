"""Talking to an OpenAI-compatible upstream: the token, errors, and the probe.

The token is read from a file that only its owner may read (mode 0600) and is
sent only in the ``Authorization`` header; no message built here contains it
(errors name the upstream's host and what it answered, with the token cut out
of any text the upstream echoed). TLS certificates are verified unless the
remote was added with ``--insecure``.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Mapping
from typing import Any

import httpx

from edged.common import errors
from edged.models_registry.remote import Probed, RemoteSpec

MAX_TOKEN_BYTES = 4096
MAX_ERROR_TEXT = 300
CONNECT_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 30.0


def read_token(path: str) -> str:
    """The bearer token in ``path``; FailedPrecondition (naming the path, never
    the content) when it is missing, not a regular file, readable by others or
    not one line of printable text."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise errors.FailedPrecondition(
            f"cannot read the token file {path}: {exc.strerror}"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise errors.FailedPrecondition(f"the token file {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if os.name == "posix" and mode & 0o077:
        raise errors.FailedPrecondition(
            f"the token file {path} may be read by others (mode {mode:04o}); "
            f"it must be 0600: run `chmod 600 {path}`"
        )
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise errors.FailedPrecondition(
            f"cannot read the token file {path}: {exc.strerror}"
        ) from None
    if len(raw) > MAX_TOKEN_BYTES:
        raise errors.FailedPrecondition(f"the token file {path} is larger than a token")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise errors.FailedPrecondition(f"the token file {path} is not ASCII text") from None
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise errors.FailedPrecondition(
            f"the token file {path} must hold one token on one line (nothing else)"
        )
    return token


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(spec: RemoteSpec, *, timeout_s: float | None = None) -> httpx.AsyncClient:
    """An async client for the upstream (TLS verified unless ``spec.insecure``).

    ``timeout_s`` bounds connect and each read; None leaves reads unbounded
    (a long generation may pause between tokens; deadlines bound it instead).
    """
    timeout = httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
    return httpx.AsyncClient(
        base_url=spec.url,
        verify=not spec.insecure,
        timeout=timeout,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        trust_env=False,
    )


def scrub(text: str, token: str) -> str:
    """``text`` cut short, with the token (should the upstream echo it) removed."""
    if token:
        text = text.replace(token, "[token]")
    return text[:MAX_ERROR_TEXT]


def upstream_message(body: bytes) -> str:
    """The ``error.message`` (or ``detail``) of an upstream error body, else its text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()
    if isinstance(data, Mapping):
        err = data.get("error")
        if isinstance(err, Mapping) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        for key in ("detail", "message"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return body.decode("utf-8", "replace").strip()


def status_error(spec: RemoteSpec, status: int, body: bytes, token: str) -> errors.EdgedError:
    """edged's error for an upstream's HTTP error status."""
    said = scrub(upstream_message(body), token)
    where = f"the upstream {spec.host} (model {spec.model})"
    tail = f": {said}" if said else ""
    if status == 401:
        return errors.Unauthenticated(
            f"{where} refused the token (HTTP 401){tail}; check the token file "
            f"({spec.token_file or 'none given: add one with --token-file'})"
        )
    if status == 403:
        return errors.PermissionDenied(f"{where} denied the request (HTTP 403){tail}")
    if status == 404:
        return errors.NotFound(f"{where} answered 404 (no such model or path){tail}")
    if status == 429:
        return errors.ResourceExhausted(f"{where} is rate limiting (HTTP 429){tail}; retry later")
    if status in (400, 413, 422):
        return errors.InvalidArgument(f"{where} refused the request (HTTP {status}){tail}")
    if status == 408:
        return errors.DeadlineExceeded(f"{where} timed out the request (HTTP 408){tail}")
    if status >= 500:
        return errors.Unavailable(f"{where} failed (HTTP {status}){tail}; retry later")
    return errors.FailedPrecondition(f"{where} answered HTTP {status}{tail}")


def transport_error(spec: RemoteSpec, exc: httpx.HTTPError, token: str) -> errors.EdgedError:
    """edged's error for a failure to reach (or keep talking to) the upstream."""
    kind = type(exc).__name__
    detail = scrub(str(exc), token)
    if isinstance(exc, httpx.TimeoutException):
        return errors.DeadlineExceeded(f"the upstream {spec.host} timed out ({kind})")
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE" in detail.upper():
        return errors.Unavailable(
            f"the upstream {spec.host} failed TLS verification ({detail}); fix its certificate "
            "or add the remote again with --insecure if you trust the network"
        )
    return errors.Unavailable(f"cannot reach the upstream {spec.host} ({kind}: {detail})")


async def probe(spec: RemoteSpec, token: str) -> Probed:
    """Ask the upstream what it serves: ``GET /v1/models`` must list the model;
    the context length, tools and JSON output come from what the entry (or
    llama-server's ``/props``) declares; embeddings from a one-word
    ``/v1/embeddings`` call answered with a vector."""
    async with client(spec, timeout_s=PROBE_TIMEOUT_S) as http:
        entry = await _model_entry(http, spec, token)
        evidence = [f"/v1/models lists {spec.model}"]
        server = str(entry.get("owned_by", ""))
        declared = _declared(entry)
        ctx = declared.get("context_length", 0)
        if ctx:
            evidence.append(f"context length {ctx} declared by /v1/models")
        else:
            ctx = await _props_context(http, spec, token)
            if ctx:
                evidence.append(f"context length {ctx} from /props (llama-server)")
                server = server or "llama-server"
        caps = _capabilities(entry)
        if caps:
            tools, json_output = caps["tools"], caps["json_output"]
            evidence.append("tools/JSON output as declared by /v1/models")
        else:
            tools = await _accepts(http, spec, token, _TOOL_PROBE)
            json_output = await _accepts(http, spec, token, _JSON_PROBE)
            evidence.append(
                f"tools: a one-token request with a tool was {_verdict(tools)}; "
                f"JSON output: one with response_format json_object was {_verdict(json_output)}"
            )
        dimensions = await _embeds(http, spec, token)
        evidence.append(
            f"embeddings: /v1/embeddings answered a {dimensions}-dimension vector"
            if dimensions
            else "embeddings: /v1/embeddings did not answer a vector"
        )
    return Probed(
        context_length=ctx,
        tools=tools,
        json_output=json_output,
        embeddings=dimensions > 0,
        embedding_dimensions=dimensions,
        owned_by=str(entry.get("owned_by", "")),
        server=server,
        evidence=tuple(evidence),
        probed_unix_ms=time.time_ns() // 1_000_000,
    )


async def _model_entry(http: httpx.AsyncClient, spec: RemoteSpec, token: str) -> dict[str, Any]:
    try:
        resp = await http.get("models", headers=headers(token))
    except httpx.HTTPError as exc:
        raise transport_error(spec, exc, token) from None
    if resp.status_code != 200:
        raise status_error(spec, resp.status_code, resp.content, token)
    try:
        data = resp.json().get("data", [])
    except (ValueError, AttributeError):
        raise errors.FailedPrecondition(
            f"{spec.host}/v1/models did not answer an OpenAI model list"
        ) from None
    ids = [m.get("id") for m in data if isinstance(m, dict)]
    for m in data:
        if isinstance(m, dict) and m.get("id") == spec.model:
            return m
    listed = ", ".join(str(i) for i in ids[:10]) or "none"
    raise errors.NotFound(
        f"the upstream {spec.host} does not serve {spec.model!r} (it lists: {listed}); "
        "pass --model with one of those"
    )


def _declared(entry: Mapping[str, Any]) -> dict[str, int]:
    """The context length an entry states: vLLM's ``max_model_len``, edged's
    ``context_length``, llama-server's ``meta.n_ctx_train`` (the trained one)."""
    for key in ("context_length", "max_model_len", "context_window", "max_context_length"):
        value = entry.get(key)
        if isinstance(value, int) and value > 0:
            return {"context_length": value}
    meta = entry.get("meta")
    if isinstance(meta, Mapping):
        value = meta.get("n_ctx_train")
        if isinstance(value, int) and value > 0:
            return {"context_length": value}
    return {}


def _capabilities(entry: Mapping[str, Any]) -> dict[str, bool]:
    """Tools / JSON output from an entry's ``capabilities`` (edged's and
    Ollama's list of names, or a mapping of flags)."""
    raw = entry.get("capabilities")
    if isinstance(raw, list):
        names = {str(x) for x in raw}
    elif isinstance(raw, Mapping):
        names = {str(k) for k, v in raw.items() if v}
    else:
        return {}
    return {
        "tools": bool(names & {"tools", "function_calling", "tool_calls"}),
        "json_output": bool(names & {"json", "json_schema", "json_output", "response_format"}),
    }


async def _props_context(http: httpx.AsyncClient, spec: RemoteSpec, token: str) -> int:
    root = spec.url.removesuffix("/v1")
    try:
        resp = await http.get(root + "/props", headers=headers(token))
        settings = resp.json().get("default_generation_settings", {}) if resp.is_success else {}
    except (httpx.HTTPError, ValueError, AttributeError):
        return 0
    value = settings.get("n_ctx") if isinstance(settings, Mapping) else None
    return value if isinstance(value, int) and value > 0 else 0


_TOOL_PROBE: dict[str, Any] = {
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "probe",
                "description": "edged's capability probe",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ],
    "tool_choice": "auto",
}
_JSON_PROBE: dict[str, Any] = {"response_format": {"type": "json_object"}}


def _verdict(ok: bool) -> str:
    return "accepted" if ok else "refused"


async def _accepts(
    http: httpx.AsyncClient, spec: RemoteSpec, token: str, extra: dict[str, Any]
) -> bool:
    """Whether the upstream answers a one-token chat request carrying ``extra``."""
    body = {
        "model": spec.model,
        "messages": [{"role": "user", "content": "Say OK."}],
        "max_tokens": 1,
        "temperature": 0,
        **extra,
    }
    try:
        resp = await http.post("chat/completions", json=body, headers=headers(token))
    except httpx.HTTPError:
        return False
    return resp.status_code == 200


async def _embeds(http: httpx.AsyncClient, spec: RemoteSpec, token: str) -> int:
    """The length of the vector the upstream embeds a word as (0: none)."""
    try:
        resp = await http.post(
            "embeddings", json={"model": spec.model, "input": "probe"}, headers=headers(token)
        )
        data = resp.json().get("data", []) if resp.is_success else []
    except (httpx.HTTPError, ValueError, AttributeError):
        return 0
    if not data or not isinstance(data[0], Mapping):
        return 0
    vector = data[0].get("embedding")
    return len(vector) if isinstance(vector, list) else 0
