"""JSON <-> protobuf pieces more than one dialect uses: sampling, tools and
tool choice in OpenAI's shape (Ollama uses it too), finish reasons, logprobs,
and the ids responses carry."""

from __future__ import annotations

import secrets
import time
from typing import Any

from edged.daemon.http import fields as f
from edged.daemon.http.errors import HttpError
from edged.v1 import edged_pb2 as pb

UINT32_MAX = 2**32 - 1
MAX_STOP = 16

FINISH_OPENAI = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_STOP_SEQUENCE: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_CONTEXT_FULL: "length",
    pb.FINISH_REASON_TIME_LIMIT: "length",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
    pb.FINISH_REASON_CANCELLED: "stop",
}


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def sampling(
    body: dict[str, Any],
    *,
    max_tokens: int | None = None,
    names: dict[str, str] | None = None,
) -> pb.SamplingParams:
    """Sampling fields of a request body. ``names`` maps edged's field names to
    the dialect's (``{"max_tokens": "num_predict"}``); ``max_tokens`` is the
    value already read (dialects spell and default it differently)."""
    n = names or {}

    def key(name: str) -> str:
        return n.get(name, name)

    out = pb.SamplingParams()
    if max_tokens is not None:
        out.max_tokens = max_tokens
    temperature = f.number(body, key("temperature"), lo=0.0, hi=100.0)
    if temperature is not None:
        out.temperature = temperature
    top_p = f.number(body, key("top_p"), lo=0.0, hi=1.0)
    if top_p is not None:
        out.top_p = top_p if top_p > 0 else 1.0
    top_k = f.integer(body, key("top_k"), lo=0, hi=2**31 - 1)
    if top_k is not None:
        out.top_k = top_k
    min_p = f.number(body, key("min_p"), lo=0.0, hi=1.0)
    if min_p is not None:
        out.min_p = min_p
    repeat = f.number(body, key("repeat_penalty"), lo=0.0, hi=10.0)
    if repeat is not None and repeat > 0:
        out.repeat_penalty = repeat
    seed = f.integer(body, key("seed"))
    if seed is not None:
        out.seed = seed % 2**64  # a negative seed (Ollama's -1) is as good as any
    stop = f.strings(body, key("stop"))
    stop = [s for s in stop if s]
    if len(stop) > MAX_STOP:
        raise HttpError(400, f"{key('stop')}: at most {MAX_STOP} stop strings")
    out.stop.extend(stop)
    speculative = f.string(body, key("speculative"), "")
    if speculative:
        out.speculative = speculative
    return out


def max_tokens(body: dict[str, Any], *keys: str) -> int | None:
    """The first of ``keys`` set (``max_completion_tokens``, ``max_tokens``)."""
    for k in keys:
        value = f.integer(body, k, lo=0, hi=UINT32_MAX)
        if value is not None:
            return value
    return None


# ------------------------------------------------------------------ tools (OpenAI's shape)


def openai_tools(body: dict[str, Any], *, flat: bool = False) -> list[pb.Tool]:
    """``tools``: ``[{"type": "function", "function": {name, description,
    parameters}}]``; ``flat`` (the Responses API): the function's fields sit
    beside ``type``."""
    out: list[pb.Tool] = []
    for i, raw in enumerate(f.array(body, "tools")):
        tool = f.as_object(raw, f"tools[{i}]")
        kind = f.string(tool, "type", "function", name=f"tools[{i}].type")
        if kind != "function":
            raise HttpError(400, f"tools[{i}]: only function tools are supported, not {kind!r}")
        fn = tool if flat else f.obj(tool, "function", name=f"tools[{i}].function")
        name = f.string(fn, "name", name=f"tools[{i}].function.name")
        if not name:
            raise HttpError(400, f"tools[{i}] needs a function name")
        params = fn.get("parameters")
        out.append(
            pb.Tool(
                name=name,
                description=f.string(fn, "description", name=f"tools[{i}].description"),
                parameters="" if params is None else f.json_text(params, "parameters"),
            )
        )
    return out


def openai_tool_choice(value: Any) -> pb.ToolChoice:
    """``"auto" | "none" | "required" | {"type": "function", "function": {"name"}}``
    (or the Responses API's ``{"type": "function", "name"}``)."""
    if value is None:
        return pb.ToolChoice()
    if isinstance(value, str):
        modes = {
            "auto": pb.ToolChoice.MODE_AUTO,
            "none": pb.ToolChoice.MODE_NONE,
            "required": pb.ToolChoice.MODE_REQUIRED,
        }
        if value not in modes:
            raise HttpError(400, f"tool_choice {value[:40]!r} is not auto, none or required")
        return pb.ToolChoice(mode=modes[value])
    choice = f.as_object(value, "tool_choice")
    fn = choice.get("function")
    name = f.string(fn, "name") if isinstance(fn, dict) else f.string(choice, "name")
    if not name:
        raise HttpError(400, 'tool_choice must be "auto", "none", "required" or name a function')
    return pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function=name)


def openai_tool_calls(raw: list[Any], where: str) -> list[pb.ToolCall]:
    """An assistant message's ``tool_calls`` (Ollama's have no id and object arguments)."""
    out: list[pb.ToolCall] = []
    for i, item in enumerate(raw):
        call = f.as_object(item, f"{where}.tool_calls[{i}]")
        fn = f.obj(call, "function", name=f"{where}.tool_calls[{i}].function")
        arguments = fn.get("arguments", "{}")
        out.append(
            pb.ToolCall(
                id=f.string(call, "id"),
                name=f.string(fn, "name"),
                arguments=f.json_text(arguments, "arguments"),
            )
        )
    return out


def response_format(value: Any) -> pb.ResponseFormat:
    """OpenAI's ``response_format``: text, json_object, json_schema."""
    if value is None:
        return pb.ResponseFormat()
    fmt = f.as_object(value, "response_format")
    kind = f.string(fmt, "type", "text")
    if kind == "text":
        return pb.ResponseFormat(type=pb.ResponseFormat.TYPE_TEXT)
    if kind == "json_object":
        return pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_OBJECT)
    if kind == "json_schema":
        spec = f.obj(fmt, "json_schema") or fmt  # chat nests it; Responses' text.format does not
        schema = spec.get("schema")
        if schema is None:
            raise HttpError(400, "response_format json_schema needs a schema")
        return pb.ResponseFormat(
            type=pb.ResponseFormat.TYPE_JSON_SCHEMA,
            schema=f.json_text(schema, "json_schema.schema"),
            name=f.string(spec, "name"),
        )
    raise HttpError(
        400, f"response_format type {kind[:40]!r} is not text, json_object or json_schema"
    )


def json_format(value: Any) -> pb.ResponseFormat:
    """Ollama's ``format``: ``"json"`` or a JSON schema object."""
    if value is None or value == "":
        return pb.ResponseFormat()
    if value == "json":
        return pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_OBJECT)
    if isinstance(value, dict):
        return pb.ResponseFormat(
            type=pb.ResponseFormat.TYPE_JSON_SCHEMA, schema=f.json_text(value, "format")
        )
    raise HttpError(400, 'format must be "json" or a JSON schema object')


# ------------------------------------------------------------------ replies


def openai_logprobs(items: list[pb.TokenLogprob]) -> dict[str, Any]:
    """Chat completions' ``logprobs.content``."""
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": list(lp.token_bytes),
                "top_logprobs": [
                    {"token": t.token, "logprob": t.logprob, "bytes": list(t.token_bytes)}
                    for t in lp.top
                ],
            }
            for lp in items
        ],
        "refusal": None,
    }


def openai_usage(stats: pb.GenerationStats) -> dict[str, Any]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_prompt_tokens},
        # OpenAI's names for predicted-output tokens: speculative drafts kept / dropped
        "completion_tokens_details": {
            "accepted_prediction_tokens": stats.accepted_tokens,
            "rejected_prediction_tokens": stats.drafted_tokens - stats.accepted_tokens,
        },
    }


def openai_calls(calls: list[pb.ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]
