"""Ollama's API (``/api/...``), spoken by Ollama's own clients (the ``ollama``
libraries, Continue, Open WebUI and many more): ``/api/generate`` (``suffix`` is
fill-in-the-middle), ``/api/chat`` (tools), ``/api/embed`` and
``/api/embeddings`` here; the model endpoints (tags, show, ps, pull, delete,
copy, version) in :mod:`.ollama_models`.

Replies stream as NDJSON unless ``"stream": false`` (Ollama streams by
default); the last record says ``"done": true`` with ``done_reason`` ("stop",
"length", "load", "unload"), token counts and durations in nanoseconds. Errors
are ``{"error": "..."}``, inside a stream too.

Where edged and Ollama differ, the request is answered honestly rather than
quietly changed:

* ``options.num_ctx`` is the least context the request gets (a model already
  loaded with more serves it with more); a prompt that does not fit is a 400
  that says so, never truncated. ``num_predict`` absent or <= 0 means "up to
  the end of the context", as in Ollama.
* ``images``, ``context`` (the old token-array continuation), ``template``
  and thinking are a 400: edged's models read text, and format prompts with
  their own template (send ``raw: true`` with a prompt formatted yourself).
* Sampling options edged has no sampler for (``presence_penalty``,
  ``frequency_penalty``, ``typical_p``, ``tfs_z``, ``mirostat``) are a 400
  unless neutral; runtime options (threads, GPU layers, batch, mmap) are
  edged's to choose and are ignored.
* ``suffix`` (non-empty) makes ``/api/generate`` an infill with the model's FIM
  tokens, whatever ``raw`` says; ``system`` is ignored for an infill and for
  ``raw`` prompts, as Ollama does for raw ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edged.common.errors import ContextOverflow, EdgedError
from edged.daemon.http import door
from edged.daemon.http import fields as f
from edged.daemon.http import ollama_models as models
from edged.daemon.http import translate as t
from edged.daemon.http.errors import HttpError
from edged.daemon.http.ollama_models import model_name, ndjson_line
from edged.models_registry.settings import MAX_CONTEXT, MAX_KEEP_ALIVE_S, MIN_CONTEXT
from edged.v1 import edged_pb2 as pb

log = logging.getLogger("edged.http")
API = models.API
_ROLES = frozenset({"system", "user", "assistant", "tool"})
_DONE_LENGTH = frozenset(
    {pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_CONTEXT_FULL, pb.FINISH_REASON_TIME_LIMIT}
)
# sampling options edged has no sampler for: refused unless at their neutral value
_NEUTRAL = {
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "typical_p": 1.0,
    "tfs_z": 1.0,
    "mirostat": 0.0,
}
# a Go duration ("5m", "1h30m", "1.5h", "300ms")
_DURATION = re.compile(r"(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

Chunks = tuple[AsyncIterator[pb.GenerateChunk], pb.GenerateChunk | None]


# ------------------------------------------------------------------ request fields


def keep_alive(value: Any) -> float | None:
    """``keep_alive``: a duration (``"5m"``, ``"1h30m"``, ``"0"``) or seconds;
    negative (or longer than edged keeps anything, a year) = until unloaded."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise HttpError(400, 'keep_alive must be a duration such as "5m" or a number of seconds')
    seconds = _duration_s(value.strip()) if isinstance(value, str) else float(value)
    if not math.isfinite(seconds):
        raise HttpError(400, "keep_alive must be finite (negative keeps the model loaded)")
    return -1.0 if seconds < 0 or seconds > MAX_KEEP_ALIVE_S else seconds


def _duration_s(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)  # a bare number: seconds
    except ValueError:
        pass
    if not _DURATION.fullmatch(body):
        raise HttpError(400, f'keep_alive {text[:40]!r} is not a duration such as "5m" or "1h"')
    return sign * sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION_PART.findall(body))


def sampling(options: dict[str, Any]) -> pb.SamplingParams:
    """``options``' sampling fields (Ollama spells them as edged does)."""
    for key, neutral in _NEUTRAL.items():
        value = f.number(options, key, name=f"options.{key}")
        if value is not None and value != neutral:
            raise HttpError(
                400, f"options.{key} is not supported by edged (it has no such sampler)"
            )
    limit = f.integer(options, "num_predict", name="options.num_predict")
    return t.sampling(options, max_tokens=limit if limit is not None and limit > 0 else 0)


def context_length(options: dict[str, Any]) -> int:
    """``options.num_ctx``: the least context the request needs (0 = the model's)."""
    n = f.integer(options, "num_ctx", name="options.num_ctx", lo=0, hi=MAX_CONTEXT)
    return max(n, MIN_CONTEXT) if n else 0


def _controls(req: pb.GenerateRequest, body: dict[str, Any], options: dict[str, Any]) -> None:
    """What generate and chat share: context, keep-alive, format, logprobs."""
    req.context_length = context_length(options)
    seconds = keep_alive(body.get("keep_alive"))
    if seconds is not None:
        req.keep_alive_s = seconds
    req.response_format.CopyFrom(t.json_format(body.get("format")))
    if f.boolean(body, "logprobs"):
        req.logprobs = f.integer(body, "top_logprobs", lo=0, hi=20) or 0


def _refuse_unsupported(body: dict[str, Any], model: str) -> None:
    if f.array(body, "images"):
        raise HttpError(400, "images are not supported: edged's models read text only")
    if f.array(body, "context"):
        raise HttpError(400, "context is not supported: use /api/chat to continue a conversation")
    think = body.get("think")
    if think not in (None, False, "", "false"):
        raise HttpError(400, f"{model!r} does not support thinking")


# ------------------------------------------------------------------ generate


def generate_request(body: dict[str, Any], model: str) -> pb.GenerateRequest:
    if f.string(body, "template"):
        raise HttpError(
            400,
            "template is not supported: edged formats prompts with the model's own "
            "template; send raw: true with a prompt you formatted yourself",
        )
    prompt, suffix = f.string(body, "prompt"), f.string(body, "suffix")
    options = f.obj(body, "options")
    req = pb.GenerateRequest(model=model, sampling=sampling(options))
    _controls(req, body, options)
    if suffix:
        req.infill.CopyFrom(pb.Infill(prefix=prompt, suffix=suffix))
    elif f.boolean(body, "raw"):
        req.prompt = prompt
    else:
        system = f.string(body, "system")
        turns = [pb.ChatMessage(role="system", content=system)] if system else []
        turns.append(pb.ChatMessage(role="user", content=prompt))
        req.chat.CopyFrom(pb.ChatMessages(messages=turns))
    return req


@door.route(API, "generate")
async def generate(request: Request) -> Response:
    """``/api/generate``; an empty prompt (no suffix) loads the model, and with
    ``keep_alive: 0`` unloads it."""
    body = await door.body(request)
    model = model_name(body)
    _refuse_unsupported(body, model)
    if not f.string(body, "prompt") and not f.string(body, "suffix"):
        return await _load(request, body, model, chat=False)
    return await _reply(request, generate_request(body, model), body, chat=False)


# ------------------------------------------------------------------ chat


def chat_messages(raw: list[Any]) -> list[pb.ChatMessage]:
    """Ollama's messages. Its tool calls carry no id and its tool results name
    the tool (``tool_name``), so each call gets an id and each result the id of
    the call it answers (the earliest unanswered call of that tool)."""
    out: list[pb.ChatMessage] = []
    waiting: list[pb.ToolCall] = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        m = f.as_object(item, where)
        role = f.string(m, "role", name=f"{where}.role")
        if role not in _ROLES:
            raise HttpError(
                400, f"{where}.role {role[:40]!r} is not system, user, assistant or tool"
            )
        if f.array(m, "images", name=f"{where}.images"):
            raise HttpError(400, "images are not supported: edged's models read text only")
        msg = pb.ChatMessage(role=role, content=f.string(m, "content", name=f"{where}.content"))
        if role == "assistant":
            calls = t.openai_tool_calls(f.array(m, "tool_calls"), where)
            for n, call in enumerate(calls):
                call.id = call.id or f"call_{i}_{n}"
            msg.tool_calls.extend(calls)
            waiting = list(calls)
        elif role == "tool":
            name = f.string(m, "tool_name") or f.string(m, "name")
            msg.tool_call_id, msg.name = _answered(waiting, f.string(m, "tool_call_id"), name, i)
        out.append(msg)
    return out


def _answered(waiting: list[pb.ToolCall], call_id: str, name: str, at: int) -> tuple[str, str]:
    """(the call id, the tool name) a tool result answers; the call leaves ``waiting``."""
    for call in waiting:
        if (call_id and call.id == call_id) or (not call_id and (not name or call.name == name)):
            waiting.remove(call)
            return call.id, name or call.name
    return call_id or f"call_result_{at}", name  # a result of no call the history shows


def chat_request(body: dict[str, Any], model: str) -> pb.GenerateRequest:
    options = f.obj(body, "options")
    req = pb.GenerateRequest(
        model=model,
        chat=pb.ChatMessages(messages=chat_messages(f.array(body, "messages"))),
        sampling=sampling(options),
        tools=t.openai_tools(body),
    )
    _controls(req, body, options)
    return req


@door.route(API, "generate")
async def chat(request: Request) -> Response:
    """``/api/chat``; no messages loads the model (``keep_alive: 0`` unloads it)."""
    body = await door.body(request)
    model = model_name(body)
    _refuse_unsupported(body, model)
    if not f.array(body, "messages"):
        return await _load(request, body, model, chat=True)
    return await _reply(request, chat_request(body, model), body, chat=True)


# ------------------------------------------------------------------ replies


async def _load(request: Request, body: dict[str, Any], model: str, *, chat: bool) -> Response:
    """Ollama's load request (an empty prompt), or its unload (``keep_alive`` 0)."""
    services = door.services_of(request)
    seconds = keep_alive(body.get("keep_alive"))
    if seconds == 0:
        await services.models.unload(pb.ModelRef(model=model))
        reason = "unload"
    else:
        load = pb.LoadRequest(model=model, context_length=context_length(f.obj(body, "options")))
        if seconds is not None:
            load.keep_alive_s = seconds
        await services.models.load(load)
        reason = "load"
    out = _head(model)
    if chat:
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    out.update(done=True, done_reason=reason)
    return door.json_response(out)


async def _start(request: Request, req: pb.GenerateRequest) -> Chunks:
    """Check the limits, start the generation and wait for its first chunk (errors
    before any output are a plain error response)."""
    services = door.services_of(request)
    door.check_limits(request, door.GENERATE, req)
    stream = services.inference.generate(req, deadline=door.deadline_from(request))
    try:
        first, rest = await door.first(door.guarded(request, door.GENERATE, stream))
    except ContextOverflow as exc:
        raise ContextOverflow(f"{exc}; an Ollama client raises it with options.num_ctx") from exc
    return rest, first


async def _reply(
    request: Request, req: pb.GenerateRequest, body: dict[str, Any], *, chat: bool
) -> Response:
    chunks = await _start(request, req)
    if f.boolean(body, "stream", True):
        return door.ndjson(_records(request, req, chunks, chat=chat))
    reply = await door.collect(*chunks)
    out = _head(req.model)
    if chat:
        out["message"] = _message(reply.text, reply.tool_calls)
    else:
        out["response"] = reply.text
    if req.HasField("logprobs"):
        out["logprobs"] = _logprobs(reply.logprobs)
    out.update(_final(reply.stats))
    return door.json_response(out)


async def _records(
    request: Request, req: pb.GenerateRequest, chunks: Chunks, *, chat: bool
) -> AsyncIterator[str]:
    """The NDJSON stream: a record per chunk of text, the tool calls whole (Ollama
    sends their arguments as an object), then the final record; an error once
    the stream runs ends it with ``{"error": ...}``."""
    rest, first = chunks
    calls: dict[int, pb.ToolCall] = {}

    def record(text: str, **extra: Any) -> dict[str, Any]:
        out = _head(req.model)
        if chat:
            out["message"] = _message(text, list(extra.pop("tool_calls", [])))
        else:
            out["response"] = text
        out.update(extra)
        return out

    try:
        async for chunk in door.resumed(first, rest):
            for d in chunk.tool_calls:
                call = calls.setdefault(d.index, pb.ToolCall())
                call.id, call.name = call.id or d.id, call.name or d.name
                call.arguments += d.arguments
            if chunk.text or chunk.logprobs:
                extra = {"logprobs": _logprobs(chunk.logprobs)} if chunk.logprobs else {}
                yield ndjson_line(record(chunk.text, done=False, **extra))
            if chunk.HasField("stats"):
                if calls:
                    whole = [calls[i] for i in sorted(calls)]
                    yield ndjson_line(record("", tool_calls=whole, done=False))
                yield ndjson_line(record("", **_final(chunk.stats)))
    except (EdgedError, HttpError) as exc:
        yield ndjson_line(door.stream_error(request, API, exc))


def _head(model: str) -> dict[str, Any]:
    return {"model": model, "created_at": models.timestamp()}


def _message(text: str, calls: list[pb.ToolCall]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        out["tool_calls"] = [
            {"function": {"name": c.name, "arguments": _arguments(c)}} for c in calls
        ]
    return out


def _arguments(call: pb.ToolCall) -> dict[str, Any]:
    """A call's arguments as the object Ollama sends (edged's are JSON text)."""
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        log.warning("tool call %r has arguments that are not a JSON object", call.name)
        return {}
    return value


def _logprobs(items: Any) -> list[dict[str, Any]]:
    return [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": list(lp.token_bytes),
            "top_logprobs": [
                {"token": top.token, "logprob": top.logprob, "bytes": list(top.token_bytes)}
                for top in lp.top
            ],
        }
        for lp in items
    ]


def _final(stats: pb.GenerationStats) -> dict[str, Any]:
    """The last record's fields: counts, and durations in nanoseconds. edged
    measures the prefill and decode rates; the time to the first token beyond
    the prefill (waiting, loading) is reported as ``load_duration``."""
    total_ns, first_ns = _ns(stats.total_ms), _ns(stats.time_to_first_token_ms)
    evaluated = max(0, stats.prompt_tokens - stats.cached_prompt_tokens)
    prompt_ns = min(total_ns, _per_rate(evaluated, stats.prefill_tokens_per_second))
    eval_ns = min(total_ns, _per_rate(stats.completion_tokens, stats.decode_tokens_per_second))
    if not eval_ns:
        eval_ns = max(0, total_ns - first_ns)
    return {
        "done": True,
        "done_reason": "length" if stats.finish_reason in _DONE_LENGTH else "stop",
        "total_duration": total_ns,
        "load_duration": max(0, first_ns - prompt_ns),
        "prompt_eval_count": stats.prompt_tokens,
        # never 0 beside a count: clients divide by them for a rate
        "prompt_eval_duration": max(prompt_ns, 1 if stats.prompt_tokens else 0),
        "eval_count": stats.completion_tokens,
        "eval_duration": max(eval_ns, 1 if stats.completion_tokens else 0),
    }


def _ns(ms: float) -> int:
    return max(0, int(ms * 1e6))


def _per_rate(count: int, per_second: float) -> int:
    return int(count / per_second * 1e9) if count and per_second > 0 else 0


# ------------------------------------------------------------------ embeddings


EMBED = "/edged.v1.Inference/Embed"


def embed_request(body: dict[str, Any], model: str, texts: list[str]) -> pb.EmbedRequest:
    """The EmbedRequest for ``texts``: ``truncate`` (default true), ``options.num_ctx``,
    ``keep_alive`` and ``dimensions`` as Ollama reads them."""
    req = pb.EmbedRequest(
        model=model,
        inputs=texts,
        truncate=f.boolean(body, "truncate", True),
        context_length=context_length(f.obj(body, "options")),
    )
    seconds = keep_alive(body.get("keep_alive"))
    if seconds is not None:
        req.keep_alive_s = seconds
    dimensions = f.integer(body, "dimensions", lo=1, hi=1 << 20)
    if dimensions is not None:
        req.dimensions = dimensions
    return req


async def _embed(request: Request, req: pb.EmbedRequest) -> pb.EmbedResponse:
    door.check_limits(request, EMBED, req)
    services = door.services_of(request)
    return await services.inference.embed(req, deadline=door.deadline_from(request))


@door.route(API, "generate")
async def embed(request: Request) -> Response:
    """``/api/embed``: ``input`` is a string or an array of strings; the vectors
    are unit length. No input loads the model (``keep_alive: 0`` unloads it)."""
    body = await door.body(request)
    model = model_name(body)
    texts = f.strings(body, "input")
    if not any(texts):
        await _load(request, body, model, chat=False)
        return door.json_response({"model": model, "embeddings": []})
    reply = await _embed(request, embed_request(body, model, texts))
    # many vectors are a lot of JSON: written off the event loop (see openai.py)
    text = await asyncio.to_thread(_embed_json, reply, model)
    return Response(text, media_type="application/json")


def _embed_json(reply: pb.EmbedResponse, model: str) -> str:
    body = {
        "model": model,
        "embeddings": [list(e.values) for e in reply.embeddings],
        "total_duration": _ns(reply.total_ms),
        "load_duration": _ns(reply.load_ms),
        "prompt_eval_count": reply.prompt_tokens,
    }
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


@door.route(API, "generate")
async def embeddings(request: Request) -> Response:
    """``/api/embeddings`` (Ollama's older endpoint): ``prompt`` -> ``{embedding}``,
    not normalized, as Ollama answers it; no prompt loads the model."""
    body = await door.body(request)
    model = model_name(body)
    prompt = f.string(body, "prompt")
    if not prompt:
        await _load(request, body, model, chat=False)
        return door.json_response({"embedding": []})
    req = embed_request(body, model, [prompt])
    req.normalize = False
    reply = await _embed(request, req)
    return door.json_response({"embedding": list(reply.embeddings[0].values)})


ROUTES = [
    Route("/", models.running, methods=["GET", "HEAD"]),
    Route("/api/version", models.version, methods=["GET"]),
    Route("/api/tags", models.tags, methods=["GET"]),
    Route("/api/show", models.show, methods=["POST"]),
    Route("/api/ps", models.ps, methods=["GET"]),
    Route("/api/pull", models.pull, methods=["POST"]),
    Route("/api/delete", models.delete, methods=["DELETE"]),
    Route("/api/copy", models.copy, methods=["POST"]),
    Route("/api/create", models.create, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
]
