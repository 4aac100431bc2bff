"""OpenAI's API: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``
(``suffix`` is fill-in-the-middle) and ``/v1/embeddings``. The Responses API
(``/v1/responses``) is in :mod:`.responses`.

Extensions llama-server also accepts are honoured: ``top_k``, ``min_p``,
``repeat_penalty``. ``n`` above 1, ``echo`` and ``best_of`` are a 400: one
reply per request.
"""

from __future__ import annotations

import base64
import datetime
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edged.common.errors import EdgedError
from edged.daemon.http import door
from edged.daemon.http import fields as f
from edged.daemon.http import translate as t
from edged.daemon.http.errors import HttpError
from edged.v1 import edged_pb2 as pb

log = logging.getLogger("edged.http")
API = "openai"
# the legacy completions endpoint's documented default
COMPLETIONS_MAX_TOKENS = 16
_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


# ------------------------------------------------------------------ models


@door.route(API, "read")
async def list_models(request: Request) -> Response:
    """OpenAI's model list, or Anthropic's when the client says it is one (the
    Anthropic SDK sends ``anthropic-version``; both APIs use this path)."""
    services = door.services_of(request)
    listed = await services.models.list_models(pb.ListModelsRequest())
    if "anthropic-version" in request.headers:
        data = [_anthropic_model(m) for m in listed.models]
        return door.json_response(
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )
    return door.json_response({"object": "list", "data": [_model(m) for m in listed.models]})


@door.route(API, "read")
async def get_model(request: Request) -> Response:
    services = door.services_of(request)
    shown = await services.models.show(pb.ModelRef(model=request.path_params["model"]))
    if "anthropic-version" in request.headers:
        return door.json_response(_anthropic_model(shown.model))
    return door.json_response(_model(shown.model))


def _anthropic_model(m: pb.ModelInfo) -> dict[str, Any]:
    created = datetime.datetime.fromtimestamp(m.modified_unix_ms / 1000, datetime.timezone.utc)
    return {
        "type": "model",
        "id": f"{m.name}:{m.tag}",
        "display_name": f"{m.name}:{m.tag}",
        "created_at": created.isoformat().replace("+00:00", "Z"),
    }


def _model(m: pb.ModelInfo) -> dict[str, Any]:
    return {
        "id": f"{m.name}:{m.tag}",
        "object": "model",
        "created": m.modified_unix_ms // 1000,
        "owned_by": "edged",
    }


# ------------------------------------------------------------------ chat completions


def content_text(value: Any, where: str) -> str:
    """A message's content: a string, or text parts (images are refused)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise HttpError(400, f"{where}.content must be a string or an array of parts")
    texts: list[str] = []
    for i, raw in enumerate(value):
        part = f.as_object(raw, f"{where}.content[{i}]")
        kind = f.string(part, "type")
        if kind in ("text", "input_text", "output_text"):
            texts.append(f.string(part, "text", name=f"{where}.content[{i}].text"))
        elif kind in ("image_url", "input_image", "input_audio", "file", "input_file"):
            raise HttpError(400, f"{where}.content[{i}] is {kind!r}: edged's models read text only")
        else:
            raise HttpError(400, f"{where}.content[{i}] has unknown type {kind[:40]!r}")
    return "".join(texts)


def chat_messages(raw: list[Any]) -> list[pb.ChatMessage]:
    if not raw:
        raise HttpError(400, "messages must hold at least one message")
    out: list[pb.ChatMessage] = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        m = f.as_object(item, where)
        role = f.string(m, "role", name=f"{where}.role")
        if role not in _ROLES:
            raise HttpError(
                400, f"{where}.role {role[:40]!r} is not system, developer, user, assistant or tool"
            )
        out.append(
            pb.ChatMessage(
                role=_ROLES[role],
                content=content_text(m.get("content"), where),
                tool_calls=t.openai_tool_calls(f.array(m, "tool_calls"), where),
                tool_call_id=f.string(m, "tool_call_id"),
                name=f.string(m, "name") if role == "tool" else "",
            )
        )
    return out


def _model_name(body: dict[str, Any]) -> str:
    model = f.string(body, "model")
    if not model:
        raise HttpError(400, "model is required (GET /v1/models lists them)")
    return model


def _one_choice(body: dict[str, Any]) -> None:
    n = f.integer(body, "n", lo=1)
    if n is not None and n > 1:
        raise HttpError(400, "n above 1 is not supported: send the request n times")
    best_of = f.integer(body, "best_of", lo=1)
    if best_of is not None and best_of > 1:
        raise HttpError(400, "best_of above 1 is not supported")


def chat_request(body: dict[str, Any]) -> pb.GenerateRequest:
    _one_choice(body)
    req = pb.GenerateRequest(
        model=_model_name(body),
        chat=pb.ChatMessages(messages=chat_messages(f.array(body, "messages"))),
        sampling=t.sampling(
            body, max_tokens=t.max_tokens(body, "max_completion_tokens", "max_tokens")
        ),
        response_format=t.response_format(body.get("response_format")),
        tools=t.openai_tools(body),
        tool_choice=t.openai_tool_choice(body.get("tool_choice")),
    )
    parallel = body.get("parallel_tool_calls")
    if parallel is not None:
        req.parallel_tool_calls = f.boolean(body, "parallel_tool_calls")
    if f.boolean(body, "logprobs"):
        req.logprobs = f.integer(body, "top_logprobs", lo=0, hi=20) or 0
    return req


@door.route(API, "generate")
async def chat_completions(request: Request) -> Response:
    body = await door.body(request)
    req = chat_request(body)
    stream = f.boolean(body, "stream")
    usage = f.boolean(f.obj(body, "stream_options"), "include_usage")
    chunks = await _start(request, req)
    cid, created = t.new_id("chatcmpl-"), t.now()
    if not stream:
        reply = await door.collect(*chunks)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.text or None,
            "refusal": None,
        }
        if reply.tool_calls:
            message["tool_calls"] = t.openai_calls(reply.tool_calls)
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": t.openai_logprobs(reply.logprobs) if req.HasField("logprobs") else None,
            "finish_reason": t.FINISH_OPENAI.get(reply.stats.finish_reason, "stop"),
        }
        return door.json_response(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": req.model,
                "system_fingerprint": None,
                "choices": [choice],
                "usage": t.openai_usage(reply.stats),
            }
        )
    return door.sse(_chat_events(request, req, chunks, cid, created, usage))


async def _start(
    request: Request, req: pb.GenerateRequest
) -> tuple[AsyncIterator[pb.GenerateChunk], pb.GenerateChunk | None]:
    """Check the limits, start the generation and wait for its first chunk (errors
    before any output are a plain error response)."""
    services = door.services_of(request)
    door.check_limits(request, door.GENERATE, req)
    stream = services.inference.generate(req, deadline=door.deadline_from(request))
    first, rest = await door.first(door.guarded(request, door.GENERATE, stream))
    return rest, first


async def _chat_events(
    request: Request,
    req: pb.GenerateRequest,
    chunks: tuple[AsyncIterator[pb.GenerateChunk], pb.GenerateChunk | None],
    cid: str,
    created: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    def event(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> str:
        return door.sse_data(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": req.model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
                ],
            }
        )

    yield event({"role": "assistant", "content": ""})
    async for chunk in _each(request, chunks):
        if isinstance(chunk, str):  # an error after the stream began
            yield chunk
            return
        delta: dict[str, Any] = {}
        if chunk.text:
            delta["content"] = chunk.text
        if chunk.tool_calls:
            delta["tool_calls"] = [_call_delta(d) for d in chunk.tool_calls]
        if delta or chunk.logprobs:
            lp = t.openai_logprobs(list(chunk.logprobs)) if chunk.logprobs else None
            yield event(delta, logprobs=lp)
        if chunk.HasField("stats"):
            yield event({}, t.FINISH_OPENAI.get(chunk.stats.finish_reason, "stop"))
            if include_usage:
                yield door.sse_data(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": req.model,
                        "system_fingerprint": None,
                        "choices": [],
                        "usage": t.openai_usage(chunk.stats),
                    }
                )
    yield "data: [DONE]\n\n"


def _call_delta(d: pb.ToolCallDelta) -> dict[str, Any]:
    out: dict[str, Any] = {"index": d.index}
    if d.id:
        out["id"] = d.id
        out["type"] = "function"
    fn: dict[str, str] = {"arguments": d.arguments}
    if d.name:
        fn["name"] = d.name
    out["function"] = fn
    return out


async def _each(
    request: Request,
    chunks: tuple[AsyncIterator[pb.GenerateChunk], pb.GenerateChunk | None],
) -> AsyncIterator[pb.GenerateChunk | str]:
    """The chunks of a started stream; an error once it runs ends it with an
    ``error`` event (the OpenAI SDK raises it as APIError)."""
    rest, first = chunks
    try:
        async for chunk in door.resumed(first, rest):
            yield chunk
    except (EdgedError, HttpError) as exc:
        body = door.stream_error(request, API, exc)
        yield door.sse_data(body)


# ------------------------------------------------------------------ completions


def completion_request(body: dict[str, Any]) -> pb.GenerateRequest:
    _one_choice(body)
    if f.boolean(body, "echo"):
        raise HttpError(400, "echo is not supported")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise HttpError(
            400, "prompt must be a string (one prompt per request; token arrays are not supported)"
        )
    limit = t.max_tokens(body, "max_tokens")
    req = pb.GenerateRequest(
        model=_model_name(body),
        sampling=t.sampling(body, max_tokens=COMPLETIONS_MAX_TOKENS if limit is None else limit),
        response_format=t.response_format(body.get("response_format")),
    )
    suffix = body.get("suffix")
    if suffix is not None:
        req.infill.CopyFrom(pb.Infill(prefix=prompt, suffix=f.string(body, "suffix")))
    else:
        req.prompt = prompt
    logprobs = f.integer(body, "logprobs", lo=0, hi=20)
    if logprobs is not None:
        req.logprobs = logprobs
    return req


@door.route(API, "generate")
async def completions(request: Request) -> Response:
    body = await door.body(request)
    req = completion_request(body)
    stream = f.boolean(body, "stream")
    usage = f.boolean(f.obj(body, "stream_options"), "include_usage")
    chunks = await _start(request, req)
    cid, created = t.new_id("cmpl-"), t.now()
    if not stream:
        reply = await door.collect(*chunks)
        choice = {
            "text": reply.text,
            "index": 0,
            "logprobs": _completion_logprobs(reply.logprobs) if req.HasField("logprobs") else None,
            "finish_reason": t.FINISH_OPENAI.get(reply.stats.finish_reason, "stop"),
        }
        return door.json_response(
            {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "system_fingerprint": None,
                "choices": [choice],
                "usage": t.openai_usage(reply.stats),
            }
        )
    return door.sse(_completion_events(request, req, chunks, cid, created, usage))


async def _completion_events(
    request: Request,
    req: pb.GenerateRequest,
    chunks: tuple[AsyncIterator[pb.GenerateChunk], pb.GenerateChunk | None],
    cid: str,
    created: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    def event(text: str, finish: str | None = None, logprobs: Any = None) -> str:
        return door.sse_data(
            {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "system_fingerprint": None,
                "choices": [
                    {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}
                ],
            }
        )

    async for chunk in _each(request, chunks):
        if isinstance(chunk, str):
            yield chunk
            return
        if chunk.text or chunk.logprobs:
            lp = _completion_logprobs(list(chunk.logprobs)) if chunk.logprobs else None
            yield event(chunk.text, logprobs=lp)
        if chunk.HasField("stats"):
            yield event("", t.FINISH_OPENAI.get(chunk.stats.finish_reason, "stop"))
            if include_usage:
                yield door.sse_data(
                    {
                        "id": cid,
                        "object": "text_completion",
                        "created": created,
                        "model": req.model,
                        "choices": [],
                        "usage": t.openai_usage(chunk.stats),
                    }
                )
    yield "data: [DONE]\n\n"


def _completion_logprobs(items: list[pb.TokenLogprob]) -> dict[str, Any]:
    offsets: list[int] = []
    at = 0
    for lp in items:
        offsets.append(at)
        at += len(lp.token)
    return {
        "tokens": [lp.token for lp in items],
        "token_logprobs": [lp.logprob for lp in items],
        "top_logprobs": [{tp.token: tp.logprob for tp in lp.top} for lp in items],
        "text_offset": offsets,
    }


# ------------------------------------------------------------------ embeddings


EMBED = "/edged.v1.Inference/Embed"


def embedding_inputs(value: Any) -> tuple[list[str], list[list[int]]]:
    """OpenAI's ``input``: a string, an array of strings, an array of token ids,
    or an array of token-id arrays (texts and token inputs are not mixed)."""
    if isinstance(value, str):
        return [value], []
    if not isinstance(value, list) or not value:
        raise HttpError(
            400,
            "input must be a string, an array of strings, an array of token ids or an "
            "array of token-id arrays (not empty)",
        )
    if all(isinstance(v, str) for v in value):
        return list(value), []
    if all(_token_id(v) for v in value):
        return [], [list(value)]
    if all(isinstance(v, list) and v and all(_token_id(t) for t in v) for v in value):
        return [], [list(v) for v in value]
    raise HttpError(
        400,
        "input must be a string, an array of strings, an array of token ids or an "
        "array of non-empty token-id arrays, not a mix",
    )


def _token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32


def embedding_request(body: dict[str, Any]) -> tuple[pb.EmbedRequest, str]:
    """The EmbedRequest for a ``/v1/embeddings`` body, and its encoding_format."""
    encoding = f.string(body, "encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise HttpError(400, f"encoding_format must be 'float' or 'base64', not {encoding[:40]!r}")
    texts, token_inputs = embedding_inputs(body.get("input"))
    req = pb.EmbedRequest(
        model=_model_name(body),
        inputs=texts,
        token_inputs=[pb.TokenIds(ids=ids) for ids in token_inputs],
    )
    dimensions = f.integer(body, "dimensions", lo=1, hi=1 << 20)
    if dimensions is not None:
        req.dimensions = dimensions
    return req, encoding


def base64_floats(values: Any) -> str:
    """A vector as OpenAI's ``base64`` encoding: little-endian float32 bytes."""
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


@door.route(API, "generate")
async def embeddings(request: Request) -> Response:
    req, encoding = embedding_request(await door.body(request))
    door.check_limits(request, EMBED, req)
    services = door.services_of(request)
    reply = await services.inference.embed(req, deadline=door.deadline_from(request))
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64_floats(e.values) if encoding == "base64" else list(e.values),
        }
        for i, e in enumerate(reply.embeddings)
    ]
    usage = {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens}
    return door.json_response({"object": "list", "data": data, "model": req.model, "usage": usage})


ROUTES = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
]
