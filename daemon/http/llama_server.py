"""llama-server's editor endpoints: ``/infill`` (llama.vscode, llama.vim),
``/tokenize``, ``/detokenize`` and ``/health``.

llama-server serves one model, so its clients send none. Here a request may
name one (``"model"``); without it, ``/infill`` uses the one pulled model that
can infill (a 400 says which to choose when several can), and ``/tokenize`` and
``/detokenize`` the one loaded model (else the one pulled).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edged.daemon.http import door
from edged.daemon.http import fields as f
from edged.daemon.http import translate as t
from edged.daemon.http.errors import HttpError
from edged.v1 import edged_pb2 as pb

API = "llama-server"
MAX_EXTRA = 64
_STOP_TYPE = {
    pb.FINISH_REASON_STOP: "eos",
    pb.FINISH_REASON_STOP_SEQUENCE: "word",
    pb.FINISH_REASON_LENGTH: "limit",
    pb.FINISH_REASON_CONTEXT_FULL: "limit",
    pb.FINISH_REASON_TIME_LIMIT: "limit",
}


async def _infill_model(request: Request, body: dict[str, Any]) -> str:
    named = f.string(body, "model")
    if named:
        return named
    services = door.services_of(request)
    listed = await services.models.list_models(pb.ListModelsRequest())
    able: list[str] = []
    for m in listed.models:
        shown = await services.models.show(pb.ModelRef(model=f"{m.name}:{m.tag}"))
        if "infill" in shown.capabilities:
            able.append(f"{m.name}:{m.tag}")
    if len(able) == 1:
        return able[0]
    if not able:
        raise HttpError(
            400,
            "no pulled model can infill (none has FIM tokens): pull a code "
            "model trained for fill-in-the-middle, such as a Qwen2.5-Coder GGUF",
        )
    raise HttpError(
        400, f'several models can infill ({", ".join(able[:8])}): add "model" to the request'
    )


async def _any_model(request: Request, body: dict[str, Any]) -> str:
    named = f.string(body, "model")
    if named:
        return named
    services = door.services_of(request)
    loaded = (await services.models.list_loaded(pb.ListLoadedRequest())).models
    if len(loaded) == 1:
        return loaded[0].model
    listed = (await services.models.list_models(pb.ListModelsRequest())).models
    if len(listed) == 1:
        return f"{listed[0].name}:{listed[0].tag}"
    raise HttpError(400, 'add "model" to the request: more than one model is pulled')


def infill_request(body: dict[str, Any], model: str) -> pb.GenerateRequest:
    extra: list[pb.InfillContext] = []
    for i, raw in enumerate(f.array(body, "input_extra")[: MAX_EXTRA + 1]):
        item = f.as_object(raw, f"input_extra[{i}]")
        extra.append(
            pb.InfillContext(filename=f.string(item, "filename"), text=f.string(item, "text"))
        )
    if len(extra) > MAX_EXTRA:
        raise HttpError(400, f"input_extra: at most {MAX_EXTRA} files")
    n_predict = f.integer(body, "n_predict", lo=-1, hi=t.UINT32_MAX)
    warm_up = n_predict == 0
    # n_predict 0 only fills the cache: evaluate the prompt, one token, discarded
    limit = None if n_predict is None or n_predict < 0 else max(1, n_predict)
    infill = pb.Infill(
        prefix=f.string(body, "input_prefix"),
        suffix=f.string(body, "input_suffix"),
        prompt=f.string(body, "prompt"),
        extra=extra,
        n_indent=f.integer(body, "n_indent", lo=0, hi=t.UINT32_MAX) or 0,
        t_max_predict_ms=0
        if warm_up
        else (f.integer(body, "t_max_predict_ms", lo=0, hi=t.UINT32_MAX) or 0),
    )
    return pb.GenerateRequest(
        model=model,
        infill=infill,
        sampling=t.sampling(body, max_tokens=limit),
        stream_interval_ms=0,
    )


@door.route(API, "generate")
async def infill(request: Request) -> Response:
    body = await door.body(request)
    req = infill_request(body, await _infill_model(request, body))
    warm_up = body.get("n_predict") == 0
    services = door.services_of(request)
    door.check_limits(request, door.GENERATE, req)
    stream = services.inference.generate(req, deadline=door.deadline_from(request))
    first, rest = await door.first(door.guarded(request, door.GENERATE, stream))
    if f.boolean(body, "stream"):
        return door.sse(_infill_events(req, first, rest, warm_up))
    reply = await door.collect(rest, first)
    return door.json_response(_final(req, "" if warm_up else reply.text, reply.stats))


async def _infill_events(
    req: pb.GenerateRequest,
    first: pb.GenerateChunk | None,
    rest: AsyncIterator[pb.GenerateChunk],
    warm_up: bool,
) -> AsyncIterator[str]:
    async for chunk in door.resumed(first, rest):
        if chunk.text and not warm_up:
            yield door.sse_data({"content": chunk.text, "stop": False, "index": 0})
        if chunk.HasField("stats"):
            yield door.sse_data(_final(req, "", chunk.stats))


def _final(req: pb.GenerateRequest, text: str, stats: pb.GenerationStats) -> dict[str, Any]:
    evaluated = stats.prompt_tokens - stats.cached_prompt_tokens
    first_ms = stats.time_to_first_token_ms
    decode_ms = max(0.0, stats.total_ms - first_ms)
    return {
        "content": text,
        "index": 0,
        "model": req.model,
        "stop": True,
        "stop_type": _STOP_TYPE.get(stats.finish_reason, "none"),
        "tokens_evaluated": stats.prompt_tokens,
        "tokens_predicted": stats.completion_tokens,
        "tokens_cached": stats.cached_prompt_tokens,
        "truncated": False,
        "generation_settings": {"model": req.model, "n_predict": req.sampling.max_tokens or -1},
        "timings": {
            "cache_n": stats.cached_prompt_tokens,
            "prompt_n": evaluated,
            "prompt_ms": first_ms,
            "prompt_per_second": stats.prefill_tokens_per_second,
            "predicted_n": stats.completion_tokens,
            "predicted_ms": decode_ms,
            "predicted_per_second": stats.decode_tokens_per_second,
            "draft_n": stats.drafted_tokens,
            "draft_n_accepted": stats.accepted_tokens,
        },
    }


@door.route(API, "read")
async def tokenize(request: Request) -> Response:
    body = await door.body(request)
    services = door.services_of(request)
    reply = await services.models.tokenize(
        pb.TokenizeRequest(
            model=await _any_model(request, body),
            text=f.string(body, "content"),
            add_special=f.boolean(body, "add_special"),
            parse_special=f.boolean(body, "parse_special", True),
        )
    )
    if f.boolean(body, "with_pieces"):
        return door.json_response(
            {
                "tokens": [
                    {"id": tok, "piece": _piece(piece)}
                    for tok, piece in zip(reply.tokens, reply.pieces, strict=False)
                ]
            }
        )
    return door.json_response({"tokens": list(reply.tokens)})


def _piece(piece: bytes) -> str | list[int]:
    """llama-server's piece: the text, or its bytes when they are not UTF-8."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


@door.route(API, "read")
async def detokenize(request: Request) -> Response:
    body = await door.body(request)
    raw = f.array(body, "tokens")
    if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**32 for x in raw):
        raise HttpError(400, "tokens must be an array of token ids")
    services = door.services_of(request)
    reply = await services.models.detokenize(
        pb.DetokenizeRequest(model=await _any_model(request, body), tokens=raw)
    )
    return door.json_response({"content": reply.text})


@door.route(API, "")
async def health(request: Request) -> Response:
    return door.json_response({"status": "ok"})


ROUTES = [
    Route("/infill", infill, methods=["POST"]),
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/detokenize", detokenize, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
    Route("/v1/health", health, methods=["GET"]),
]
