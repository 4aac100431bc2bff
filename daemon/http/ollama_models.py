"""Ollama's model endpoints: ``/api/version``, ``/api/tags``, ``/api/show``,
``/api/ps``, ``/api/pull``, ``/api/delete`` and ``/api/copy`` (the generation
endpoints are in :mod:`.ollama`).

What an Ollama client reads is what Ollama writes: names as ``name:tag``,
digests as bare hex, times in RFC 3339, ``details`` with the family and the
quantization, and ``/api/show``'s ``template``, in which Continue looks for
``.Suffix`` to decide whether a model can fill in the middle: a model with FIM
tokens shows a Go-template-style ``{{ .Suffix }}`` template, any other its own
chat template (which never names ``.Suffix``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from edged.common.errors import EdgedError
from edged.daemon.http import door
from edged.daemon.http import errors as http_errors
from edged.daemon.http import fields as f
from edged.daemon.http.errors import HttpError
from edged.v1 import edged_pb2 as pb

log = logging.getLogger("edged.http")
API = "ollama"
# edged's capabilities -> Ollama's ("chat" is part of Ollama's "completion")
_CAPABILITIES = {
    "completion": "completion",
    "tools": "tools",
    "infill": "insert",
    "embedding": "embedding",
}
# edged.v1.SamplingParams field -> Ollama's PARAMETER name
_PARAMETERS = {
    "max_tokens": "num_predict",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "seed": "seed",
}
_INTEGER_PARAMETERS = frozenset({"num_predict", "top_k", "seed", "num_ctx"})
# Go-template-style: what Ollama's code models show, and what Continue looks for
INFILL_TEMPLATE = (
    "{{- /* edged lays prefix and suffix out with this model's FIM tokens */ -}}\n"
    "{{- if .Suffix }}{{ .Prompt }}{{ .Suffix }}{{- else }}{{ .Prompt }}{{- end }}"
)
PLAIN_TEMPLATE = "{{ .Prompt }}"  # Ollama's template for a model without one
FOREVER = "9999-12-31T23:59:59Z"  # expires_at of a model kept until unloaded


# ------------------------------------------------------------------ shapes


def timestamp(unix_s: float | None = None) -> str:
    """RFC 3339 in UTC, as Ollama writes ``created_at`` and ``modified_at``."""
    moment = datetime.fromtimestamp(time.time() if unix_s is None else unix_s, tz=timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def ndjson_line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def model_name(body: dict[str, Any]) -> str:
    """``model``, or the legacy ``name`` older clients send."""
    name = f.string(body, "model") or f.string(body, "name")
    if not name:
        raise HttpError(400, "model is required (GET /api/tags lists them)")
    return name


def full_name(m: pb.ModelInfo) -> str:
    return f"{m.name}:{m.tag}"


def bare_digest(digest: str) -> str:
    """``sha256:<hex>`` -> ``<hex>`` (Ollama lists digests without the prefix)."""
    return digest.partition(":")[2] or digest


def parameter_size(count: int) -> str:
    """A parameter count as Ollama prints it: ``134.52M``, ``8.0B``, ``7B``."""
    for unit, scale, digits in (("B", 1e9, 1), ("M", 1e6, 2)):
        if count >= scale:
            number = count / scale
            return f"{number:.0f}{unit}" if number.is_integer() else f"{number:.{digits}f}{unit}"
    return f"{count / 1e3:.0f}K" if count >= 1000 else str(count)


def details(m: pb.ModelInfo | None) -> dict[str, Any]:
    if m is None:
        return {"parent_model": "", "format": "", "family": "", "families": None}
    return {
        "parent_model": "",
        "format": m.format,
        "family": m.architecture,
        "families": [m.architecture] if m.architecture else None,
        "parameter_size": parameter_size(m.parameters) if m.parameters else "",
        "quantization_level": m.quantization,
    }


# ------------------------------------------------------------------ version, tags


@door.route(API, "")
async def running(request: Request) -> Response:
    """``GET /``: what clients probe to see that an Ollama server is there."""
    return PlainTextResponse("Ollama is running")


@door.route(API, "read")
async def version(request: Request) -> Response:
    reply = await door.services_of(request).system.version(pb.VersionRequest())
    return door.json_response({"version": reply.version})


@door.route(API, "read")
async def tags(request: Request) -> Response:
    listed = await door.services_of(request).models.list_models(pb.ListModelsRequest())
    return door.json_response({"models": [_tag(m) for m in listed.models]})


def _tag(m: pb.ModelInfo) -> dict[str, Any]:
    return {
        "name": full_name(m),
        "model": full_name(m),
        "modified_at": timestamp(m.modified_unix_ms / 1000),
        "size": m.size_bytes,
        "digest": bare_digest(m.digest),
        "details": details(m),
    }


# ------------------------------------------------------------------ show


@door.route(API, "read")
async def show(request: Request) -> Response:
    body = await door.body(request)
    services = door.services_of(request)
    shown = await services.models.show(pb.ModelRef(model=model_name(body)))
    m = shown.model
    num_ctx = shown.settings.context_length or services.app.config.engine.context_length
    if m.context_length:
        num_ctx = min(num_ctx, m.context_length)
    params = parameters(shown, num_ctx)
    template = show_template(shown)
    out: dict[str, Any] = {
        "modelfile": _modelfile(shown, template, params),
        "parameters": "\n".join(f"{k:<30} {v}" for k, v in params),
        "template": template,
        "details": details(m),
        "model_info": model_info(shown),
        "capabilities": capabilities(shown),
        "modified_at": timestamp(m.modified_unix_ms / 1000),
    }
    if shown.system_prompt:
        out["system"] = shown.system_prompt
    return door.json_response(out)


def capabilities(shown: pb.ShowModelResponse) -> list[str]:
    return [_CAPABILITIES[c] for c in shown.capabilities if c in _CAPABILITIES]


def show_template(shown: pb.ShowModelResponse) -> str:
    """What ``/api/show`` says the template is: the FIM layout (``{{ .Suffix }}``)
    for a model that can infill, else the model's own chat template."""
    if "infill" in shown.capabilities:
        return INFILL_TEMPLATE
    return shown.chat_template or PLAIN_TEMPLATE


def parameters(shown: pb.ShowModelResponse, num_ctx: int) -> list[tuple[str, str]]:
    """The model's defaults as Ollama's PARAMETER lines (``num_ctx`` first: Continue
    sizes its prompts by it). Each is ``key value`` with one token of value, as
    Continue's parser needs."""
    out = [("num_ctx", str(num_ctx))]
    for key, value in sorted(shown.sampling_defaults.items()):
        name = _PARAMETERS.get(key)
        if name is not None:
            out.append((name, str(int(value)) if name in _INTEGER_PARAMETERS else f"{value:g}"))
    out.extend(("stop", json.dumps(stop)) for stop in shown.stop_defaults)
    return out


def model_info(shown: pb.ShowModelResponse) -> dict[str, Any]:
    """The GGUF header's scalar keys, typed as Ollama gives them (the chat
    template is ``template``'s business, not repeated here)."""
    info: dict[str, Any] = {
        key: _typed(value)
        for key, value in sorted(shown.metadata.items())
        if key != "tokenizer.chat_template"
    }
    m = shown.model
    if m.architecture:
        info.setdefault("general.architecture", m.architecture)
    if m.parameters:
        info.setdefault("general.parameter_count", m.parameters)
    if m.architecture and m.context_length:
        info.setdefault(f"{m.architecture}.context_length", m.context_length)
    return info


def _typed(value: str) -> Any:
    if value in ("true", "false"):
        return value == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def _modelfile(shown: pb.ShowModelResponse, template: str, params: list[tuple[str, str]]) -> str:
    name = full_name(shown.model)
    lines = [
        "# Modelfile generated by edged (a description: edged does not build models from one)",
        f"FROM {name}",
        f'TEMPLATE """{template}"""',
    ]
    if shown.system_prompt:
        lines.append(f'SYSTEM """{shown.system_prompt}"""')
    lines += [f"PARAMETER {k} {v}" for k, v in params]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ ps


@door.route(API, "read")
async def ps(request: Request) -> Response:
    services = door.services_of(request)
    loaded = await services.models.list_loaded(pb.ListLoadedRequest())
    listed = await services.models.list_models(pb.ListModelsRequest())
    by_name = {full_name(m): m for m in listed.models}
    by_digest = {m.digest: m for m in listed.models}
    return door.json_response(
        {
            "models": [
                _running(lm, by_name.get(lm.model) or by_digest.get(lm.digest))
                for lm in loaded.models
            ]
        }
    )


def _running(lm: pb.LoadedModel, info: pb.ModelInfo | None) -> dict[str, Any]:
    size = lm.memory.total_bytes or lm.rss_bytes
    on_device = bool(lm.device) and lm.device != "cpu"
    return {
        "name": lm.model,
        "model": lm.model,
        "size": size,
        "digest": bare_digest(info.digest if info is not None else lm.digest),
        "details": details(info),
        "expires_at": _expires(lm),
        "size_vram": size if on_device and lm.gpu_layers else 0,
        "context_length": lm.context_length,
    }


def _expires(lm: pb.LoadedModel) -> str:
    if lm.pinned or lm.keep_alive_s < 0:
        return FOREVER
    if lm.expires_unix_ms:
        return timestamp(lm.expires_unix_ms / 1000)
    return timestamp(time.time() + lm.keep_alive_s)  # busy: the countdown starts when idle


# ------------------------------------------------------------------ pull, delete, copy


@door.route(API, "models")
async def pull(request: Request) -> Response:
    """``{"model": source}``: a catalog name, an http(s) URL, or an absolute path
    of a file on the daemon's machine. Streams ``{"status", "total",
    "completed"}`` records, then ``{"status": "success"}``; ``stream: false``
    answers with the last one only."""
    body = await door.body(request)
    services = door.services_of(request)
    req = pb.PullRequest(source=model_name(body))
    door.check_limits(request, door.PULL, req)
    stream = services.models.pull(req, deadline=door.deadline_from(request))
    first, rest = await door.first(door.guarded(request, door.PULL, stream))
    if not f.boolean(body, "stream", True):
        async for _ in rest:
            pass
        return door.json_response({"status": "success"})
    return door.ndjson(_pull_records(request, first, rest))


async def _pull_records(
    request: Request, first: pb.PullProgress | None, rest: AsyncIterator[pb.PullProgress]
) -> AsyncIterator[str]:
    try:
        async for p in door.resumed(first, rest):
            if p.HasField("model"):
                yield ndjson_line({"status": "success"})
                continue
            record: dict[str, Any] = {"status": p.status}
            if p.total_bytes:
                record.update(total=p.total_bytes, completed=p.completed_bytes)
            yield ndjson_line(record)
    except (EdgedError, HttpError) as exc:
        log.info("%s: pull ended by %s: %s", request.url.path, type(exc).__name__, exc)
        yield ndjson_line(http_errors.body_of(API, exc))


@door.route(API, "models")
async def delete(request: Request) -> Response:
    body = await door.body(request)
    await door.services_of(request).models.delete(pb.ModelRef(model=model_name(body)))
    return door.json_response({})


@door.route(API, "models")
async def copy(request: Request) -> Response:
    """Ollama's copy: the destination names the source's model too; a different
    model stored under that name is replaced, as Ollama does."""
    body = await door.body(request)
    source, destination = f.string(body, "source"), f.string(body, "destination")
    if not source or not destination:
        raise HttpError(400, "source and destination are required")
    await door.services_of(request).models.copy(
        pb.CopyModelRequest(source=source, destination=destination, replace=True)
    )
    return door.json_response({})


# what /api/create can carry that edged does not do: refused, never ignored
_CREATE_REFUSED = {
    "files": "creating from uploaded blobs is not supported: pull the GGUF file, then "
    "create from it",
    "adapters": "LoRA adapters are not supported",
    "quantize": "quantizing is not supported here (see `edged convert`)",
    "messages": "seeding messages is not supported: start a session with them",
}


@door.route(API, "models")
async def create(request: Request) -> Response:
    """Ollama's create from a stored model: ``{"model", "from", "system",
    "parameters"}``; a different model stored under that name is replaced, as
    Ollama does. ``template`` and ``license`` are ignored (edged uses the GGUF's
    own chat template), said in a status line."""
    body = await door.body(request)
    name, source = model_name(body), f.string(body, "from")
    if not source:
        raise HttpError(400, "from is required: the stored model to create from")
    for key, why in _CREATE_REFUSED.items():
        f.refuse_unless(not body.get(key), f"{key}: {why}")
    req = pb.CreateModelRequest(name=name, source=source, replace=True)
    if "system" in body:
        req.system_prompt = f.string(body, "system")
    for key, value in f.obj(body, "parameters").items():
        for item in value if key == "stop" and isinstance(value, list) else [value]:
            req.parameters.append(pb.ModelParameter(key=key, value=json.dumps(item)))
    reply = await door.services_of(request).models.create(req)
    notes = [*reply.notes]
    notes.extend(
        f"{key} ignored: edged uses the model file's own chat template and license"
        for key in ("template", "license")
        if body.get(key)
    )
    records = [{"status": note} for note in notes] + [{"status": "success"}]
    if not f.boolean(body, "stream", True):
        return door.json_response(records[-1])
    return door.ndjson(_lines(records))


async def _lines(records: list[dict[str, Any]]) -> AsyncIterator[str]:
    for record in records:
        yield ndjson_line(record)
