"""Anthropic's Messages API: ``POST /v1/messages`` (plain and streamed) and
``POST /v1/messages/count_tokens``, as the ``anthropic`` SDKs and tools built
on them call it (``x-api-key`` and any ``anthropic-version`` are accepted).

A request's ``system``, ``messages`` (text, ``tool_use`` and ``tool_result``
blocks), ``tools`` and ``tool_choice`` become the chat request the gRPC door
sends; the reply comes back as a ``message`` with ``text`` and ``tool_use``
content blocks, or as Anthropic's named SSE events. Usage follows Anthropic's
arithmetic: ``input_tokens`` excludes ``cache_read_input_tokens`` (the prompt
tokens already in edged's KV cache), and the two add up to the prompt.

Refused with a 400: image and document blocks (edged's models read text only),
server tools (``web_search_...``, ``bash_...``), ``thinking`` of type
``enabled`` (no edged model thinks aloud; ``adaptive`` and ``disabled`` are
fine), ``mcp_servers``, and a final assistant message (prefill: edged's replies
always start a new assistant turn). ``metadata``, ``cache_control``,
``service_tier`` and ``output_config.effort`` are accepted and have no effect.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

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
API = "anthropic"
_STOP_REASON = {
    pb.FINISH_REASON_STOP: "end_turn",
    pb.FINISH_REASON_STOP_SEQUENCE: "stop_sequence",
    pb.FINISH_REASON_LENGTH: "max_tokens",
    pb.FINISH_REASON_CONTEXT_FULL: "model_context_window_exceeded",
    pb.FINISH_REASON_TIME_LIMIT: "max_tokens",
    pb.FINISH_REASON_TOOL_CALLS: "tool_use",
    pb.FINISH_REASON_CANCELLED: "end_turn",
}
_TOOL_CHOICE = {
    "auto": pb.ToolChoice.MODE_AUTO,
    "any": pb.ToolChoice.MODE_REQUIRED,
    "tool": pb.ToolChoice.MODE_FUNCTION,
    "none": pb.ToolChoice.MODE_NONE,
}
_MEDIA_BLOCKS = ("image", "document")
# earlier turns' thinking: Anthropic drops it from the context too
_SKIPPED_BLOCKS = ("thinking", "redacted_thinking")
_THINKING_OK = ("disabled", "adaptive")


# ------------------------------------------------------------------ request: content


def _refuse_block(kind: str, where: str, allowed: str) -> HttpError:
    if kind in _MEDIA_BLOCKS:
        return HttpError(400, f"{where} is an {kind!r} block: edged's models read text only")
    return HttpError(400, f"{where} has type {kind[:40]!r}; edged takes {allowed} blocks here")


def _text_blocks(value: Any, where: str) -> str:
    """A string, or an array of text blocks (``system``, a tool result's content)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise HttpError(400, f"{where} must be a string or an array of text blocks")
    texts: list[str] = []
    for i, raw in enumerate(value):
        block = f.as_object(raw, f"{where}[{i}]")
        kind = f.string(block, "type", name=f"{where}[{i}].type")
        if kind != "text":
            raise _refuse_block(kind, f"{where}[{i}]", "text")
        texts.append(f.string(block, "text", name=f"{where}[{i}].text"))
    return "".join(texts)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """A message's content as blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise HttpError(400, f"{where}.content must be a string or an array of content blocks")
    return [f.as_object(raw, f"{where}.content[{i}]") for i, raw in enumerate(content)]


def _assistant(content: Any, where: str, names: dict[str, str]) -> pb.ChatMessage:
    """An assistant turn: its text, and its ``tool_use`` blocks as tool calls
    (their ids and names are noted in ``names`` for the results that follow)."""
    message = pb.ChatMessage(role="assistant")
    texts: list[str] = []
    for i, block in enumerate(_blocks(content, where)):
        at = f"{where}.content[{i}]"
        kind = f.string(block, "type", name=f"{at}.type")
        if kind == "text":
            texts.append(f.string(block, "text", name=f"{at}.text"))
        elif kind == "tool_use":
            call = pb.ToolCall(
                id=f.string(block, "id", name=f"{at}.id"),
                name=f.string(block, "name", name=f"{at}.name"),
                arguments=f.json_text(f.obj(block, "input", name=f"{at}.input"), f"{at}.input"),
            )
            names[call.id] = call.name
            message.tool_calls.append(call)
        elif kind not in _SKIPPED_BLOCKS:
            raise _refuse_block(kind, at, "text and tool_use")
    message.content = "".join(texts)
    return message


def _tool_result(block: dict[str, Any], at: str, names: dict[str, str]) -> pb.ChatMessage:
    """A ``tool_result`` block as a ``tool`` message. An error result reads
    "Error: ..." to the model (edged's chat messages have no error flag)."""
    call_id = f.string(block, "tool_use_id", name=f"{at}.tool_use_id")
    if not call_id:
        raise HttpError(400, f"{at}.tool_use_id is required")
    text = _text_blocks(block.get("content"), f"{at}.content")
    if f.boolean(block, "is_error", name=f"{at}.is_error"):
        text = f"Error: {text}"
    return pb.ChatMessage(
        role="tool", content=text, tool_call_id=call_id, name=names.get(call_id, "")
    )


def _user(content: Any, where: str, names: dict[str, str]) -> list[pb.ChatMessage]:
    """A user turn: its text as user messages and each ``tool_result`` block as
    a ``tool`` message, in the order the blocks come."""
    out: list[pb.ChatMessage] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            out.append(pb.ChatMessage(role="user", content="".join(texts)))
            texts.clear()

    for i, block in enumerate(_blocks(content, where)):
        at = f"{where}.content[{i}]"
        kind = f.string(block, "type", name=f"{at}.type")
        if kind == "text":
            texts.append(f.string(block, "text", name=f"{at}.text"))
        elif kind == "tool_result":
            flush()
            out.append(_tool_result(block, at, names))
        else:
            raise _refuse_block(kind, at, "text and tool_result")
    flush()
    return out or [pb.ChatMessage(role="user", content="")]


def chat(body: dict[str, Any]) -> pb.ChatMessages:
    """``system`` and ``messages`` as edged's chat messages."""
    out: list[pb.ChatMessage] = []
    system = _text_blocks(body.get("system"), "system")
    if system:
        out.append(pb.ChatMessage(role="system", content=system))
    raw = f.array(body, "messages")
    if not raw:
        raise HttpError(400, "messages must hold at least one message")
    names: dict[str, str] = {}  # tool_use id -> tool name
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        m = f.as_object(item, where)
        role = f.string(m, "role", name=f"{where}.role")
        if role == "user":
            out.extend(_user(m.get("content"), where, names))
        elif role == "system":  # the SDK's SystemMessageParam: a system message in place
            out.append(pb.ChatMessage(role="system", content=_text_blocks(m.get("content"), where)))
        elif role == "assistant":
            if i == len(raw) - 1:
                raise HttpError(
                    400,
                    f"{where} is a final assistant message (prefill), which edged does not "
                    "continue: its replies start a new assistant turn",
                )
            out.append(_assistant(m.get("content"), where, names))
        else:
            raise HttpError(400, f"{where}.role {role[:40]!r} is not user, assistant or system")
    return pb.ChatMessages(messages=out)


# ------------------------------------------------------------------ request: controls


def tools(body: dict[str, Any]) -> list[pb.Tool]:
    """``tools``: ``[{name, description, input_schema}]`` (client tools only)."""
    out: list[pb.Tool] = []
    for i, raw in enumerate(f.array(body, "tools")):
        tool = f.as_object(raw, f"tools[{i}]")
        kind = f.string(tool, "type", "custom", name=f"tools[{i}].type")
        if kind != "custom":
            raise HttpError(
                400,
                f"tools[{i}] is {kind[:40]!r}: edged runs no server tools; define a client "
                "tool (name, description, input_schema)",
            )
        name = f.string(tool, "name", name=f"tools[{i}].name")
        if not name:
            raise HttpError(400, f"tools[{i}].name is required")
        if "input_schema" not in tool:
            raise HttpError(400, f"tools[{i}].input_schema is required")
        schema = f.obj(tool, "input_schema", name=f"tools[{i}].input_schema")
        out.append(
            pb.Tool(
                name=name,
                description=f.string(tool, "description", name=f"tools[{i}].description"),
                parameters=f.json_text(schema, f"tools[{i}].input_schema"),
            )
        )
    return out


def tool_choice(body: dict[str, Any]) -> tuple[pb.ToolChoice, bool | None]:
    """``tool_choice`` (``auto | any | tool | none``), and whether parallel calls
    are allowed (``disable_parallel_tool_use``; None when not said)."""
    if body.get("tool_choice") is None:
        return pb.ToolChoice(), None
    choice = f.obj(body, "tool_choice")
    kind = f.string(choice, "type", name="tool_choice.type")
    if kind not in _TOOL_CHOICE:
        raise HttpError(400, f"tool_choice.type {kind[:40]!r} is not auto, any, tool or none")
    out = pb.ToolChoice(mode=_TOOL_CHOICE[kind])
    if kind == "tool":
        out.function = f.string(choice, "name", name="tool_choice.name")
        if not out.function:
            raise HttpError(400, 'tool_choice of type "tool" needs the tool\'s name')
    if choice.get("disable_parallel_tool_use") is None:
        return out, None
    disabled = f.boolean(choice, "disable_parallel_tool_use")
    return out, not disabled


def _output_format(body: dict[str, Any]) -> pb.ResponseFormat:
    """Structured outputs: ``output_config.format`` (or the beta's top-level
    ``output_format``): ``{"type": "json_schema", "schema": {...}}``."""
    fmt = f.obj(f.obj(body, "output_config"), "format", name="output_config.format")
    fmt = fmt or f.obj(body, "output_format")
    if not fmt:
        return pb.ResponseFormat()
    kind = f.string(fmt, "type", name="output_config.format.type")
    if kind != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise HttpError(400, 'output_config.format must be {"type": "json_schema", "schema": {}}')
    return pb.ResponseFormat(
        type=pb.ResponseFormat.TYPE_JSON_SCHEMA, schema=f.json_text(fmt["schema"], "schema")
    )


def _refuse_unsupported(body: dict[str, Any]) -> None:
    thinking = f.string(f.obj(body, "thinking"), "type", "disabled", name="thinking.type")
    if thinking not in _THINKING_OK:
        raise HttpError(
            400,
            f"thinking of type {thinking[:40]!r} is not supported: edged's models reply "
            'without thinking blocks (send "disabled" or "adaptive")',
        )
    if f.array(body, "mcp_servers"):
        raise HttpError(400, "mcp_servers is not supported: edged calls no MCP servers")


def _model_name(body: dict[str, Any]) -> str:
    model = f.string(body, "model")
    if not model:
        raise HttpError(400, "model is required (GET /v1/models lists them)")
    return model


def message_request(body: dict[str, Any]) -> pb.GenerateRequest:
    """A ``/v1/messages`` body as edged's generate request."""
    _refuse_unsupported(body)
    limit = f.integer(body, "max_tokens", lo=1, hi=t.UINT32_MAX)
    if limit is None:
        raise HttpError(400, "max_tokens is required: the most tokens the reply may have")
    choice, parallel = tool_choice(body)
    req = pb.GenerateRequest(
        model=_model_name(body),
        chat=chat(body),
        sampling=t.sampling(body, max_tokens=limit, names={"stop": "stop_sequences"}),
        response_format=_output_format(body),
        tools=tools(body),
        tool_choice=choice,
    )
    if parallel is not None:
        req.parallel_tool_calls = parallel
    return req


# ------------------------------------------------------------------ replies


def _tool_id(raw: str) -> str:
    """edged's ``call_<hex>`` ids in Anthropic's ``toolu_`` spelling (any id the
    client sends back is taken as it is)."""
    return "toolu_" + raw.removeprefix("call_") if raw.startswith("call_") else raw


def _tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the ``input`` object ({} when there are none, or
    when a reply cut short left them unfinished)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        log.info("tool call arguments are not JSON (cut short?): %.80r", arguments)
        return {}
    return value if isinstance(value, dict) else {}


def usage(stats: pb.GenerationStats) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` are the prompt tokens edged evaluated,
    ``cache_read_input_tokens`` those it found in its KV cache."""
    cached = min(stats.cached_prompt_tokens, stats.prompt_tokens)
    return {
        "input_tokens": stats.prompt_tokens - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": stats.completion_tokens,
    }


def _stop(stats: pb.GenerationStats) -> tuple[str, str | None]:
    """``stop_reason`` and ``stop_sequence`` (the stop string that matched)."""
    reason = _STOP_REASON.get(stats.finish_reason, "end_turn")
    return reason, (stats.stop_sequence or None) if reason == "stop_sequence" else None


def _message(mid: str, model: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage(pb.GenerationStats()),
    }


def message(mid: str, model: str, reply: door.Reply) -> dict[str, Any]:
    """A finished reply as a ``message``: a text block (when there is text),
    then a ``tool_use`` block per call."""
    content: list[dict[str, Any]] = []
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    for call in reply.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.id),
                "name": call.name,
                "input": _tool_input(call.arguments),
            }
        )
    out = _message(mid, model, content)
    out["stop_reason"], out["stop_sequence"] = _stop(reply.stats)
    out["usage"] = usage(reply.stats)
    return out


# ------------------------------------------------------------------ endpoints


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


@door.route(API, "generate")
async def messages(request: Request) -> Response:
    body = await door.body(request)
    req = message_request(body)
    stream = f.boolean(body, "stream")
    chunks = await _start(request, req)
    mid = t.new_id("msg_")
    if not stream:
        reply = await door.collect(*chunks)
        return door.json_response(message(mid, req.model, reply))
    return door.sse(_events(request, _message(mid, req.model, []), chunks))


def _event(kind: str, **fields: Any) -> str:
    return door.sse_data({"type": kind, **fields}, event=kind)


class _Blocks:
    """The content blocks of a streamed reply, in Anthropic's order: each block
    starts, takes its deltas and stops before the next one starts."""

    def __init__(self) -> None:
        self.started = 0
        self.open: int | None = None
        self.text_at: int | None = None  # the open text block
        self.calls: dict[int, int] = {}  # tool call index -> block index

    def _start(self, block: dict[str, Any]) -> list[str]:
        events = self.stop()
        self.open = self.started
        self.started += 1
        return [*events, _event("content_block_start", index=self.open, content_block=block)]

    def stop(self) -> list[str]:
        """Stop the open block, if any."""
        if self.open is None:
            return []
        index, self.open, self.text_at = self.open, None, None
        return [_event("content_block_stop", index=index)]

    def text(self, text: str) -> list[str]:
        events: list[str] = []
        if self.text_at is None:
            events = self._start({"type": "text", "text": ""})
            self.text_at = self.open
        delta = {"type": "text_delta", "text": text}
        return [*events, _event("content_block_delta", index=self.text_at, delta=delta)]

    def call(self, d: pb.ToolCallDelta) -> list[str]:
        events: list[str] = []
        if d.index not in self.calls:
            block = {"type": "tool_use", "id": _tool_id(d.id), "name": d.name, "input": {}}
            events = self._start(block)
            self.calls[d.index] = self.started - 1
        if d.arguments:
            delta = {"type": "input_json_delta", "partial_json": d.arguments}
            events.append(_event("content_block_delta", index=self.calls[d.index], delta=delta))
        return events


async def _events(
    request: Request,
    start: dict[str, Any],
    chunks: tuple[AsyncIterator[pb.GenerateChunk], pb.GenerateChunk | None],
) -> AsyncIterator[str]:
    """``message_start``; per block ``content_block_start``, its deltas and
    ``content_block_stop``; ``message_delta`` (stop reason, full usage);
    ``message_stop``. An error once the stream runs ends it with an ``error``
    event (the SDK raises it as an APIStatusError)."""
    yield _event("message_start", message=start)
    blocks = _Blocks()
    rest, first = chunks
    try:
        async for chunk in door.resumed(first, rest):
            for event in _chunk_events(blocks, chunk):
                yield event
    except (EdgedError, HttpError) as exc:
        body = door.stream_error(request, API, exc)
        yield door.sse_data(body, event="error")
        return
    yield _event("message_stop")


def _chunk_events(blocks: _Blocks, chunk: pb.GenerateChunk) -> list[str]:
    events: list[str] = []
    if chunk.text:
        events += blocks.text(chunk.text)
    for d in chunk.tool_calls:
        events += blocks.call(d)
    if chunk.HasField("stats"):
        events += blocks.stop()
        reason, sequence = _stop(chunk.stats)
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        events.append(_event("message_delta", delta=delta, usage=usage(chunk.stats)))
    return events


@door.route(API, "")
async def count_tokens(request: Request) -> Response:
    """``{"input_tokens": N}``: the prompt tokens a ``/v1/messages`` call with the
    same system, messages and tools would need (cached ones included). Needs
    ``generate`` (the key that sends the messages counts them) or ``read`` (as
    gRPC's Models.Tokenize does): it generates nothing."""
    scopes: frozenset[str] = request.scope.get("edged.scopes", frozenset())
    if not scopes & {"generate", "read", "admin"}:
        door.require(request, "generate")
    body = await door.body(request)
    _refuse_unsupported(body)
    services = door.services_of(request)
    reply = await services.models.tokenize(
        pb.TokenizeRequest(model=_model_name(body), chat=chat(body), tools=tools(body))
    )
    return door.json_response({"input_tokens": reply.count})


ROUTES = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
