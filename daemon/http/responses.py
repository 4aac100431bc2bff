"""OpenAI's Responses API on edged sessions: ``POST /v1/responses``,
``GET`` and ``DELETE /v1/responses/{id}``.

A stored response (``store``, default true) is a turn of an edged session: its
id names the session and the turn (``resp_<session>_<turn>``). A request with
``previous_response_id`` continues that session, so the conversation's KV is
reused rather than evaluated again (``usage.input_tokens_details.cached_tokens``
shows it). Continuing from an older response forks the session at that turn
(the fork copies the KV too). ``store: false`` answers without keeping anything.

Deleting the latest response of a conversation rewinds its session by that
turn (the first turn: the session goes); deleting an older one is a 409, since
the responses after it continue from it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edged.common.errors import EdgedError, NotFound
from edged.daemon.http import door
from edged.daemon.http import fields as f
from edged.daemon.http import translate as t
from edged.daemon.http.errors import HttpError
from edged.daemon.http.openai import content_text
from edged.v1 import edged_pb2 as pb

log = logging.getLogger("edged.http")
API = "openai"
CREATE = "/edged.v1.Sessions/Create"
FORK = "/edged.v1.Sessions/Fork"
_ID = re.compile(r"resp_([0-9a-f]{24})_([0-9]{1,7})")
_INCOMPLETE = {pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_CONTEXT_FULL, pb.FINISH_REASON_TIME_LIMIT}


def response_id(session_id: str, turn: int) -> str:
    return f"resp_{session_id.removeprefix('s_')}_{turn}"


def parse_id(rid: str) -> tuple[str, int]:
    m = _ID.fullmatch(rid)
    if m is None:
        raise NotFound(f"no stored response {rid[:80]!r} (ids look like resp_<hex>_<n>)")
    return "s_" + m.group(1), int(m.group(2))


# ------------------------------------------------------------------ input


def input_messages(value: Any) -> list[pb.ChatMessage]:
    """``input``: a string, or items (messages, function_call, function_call_output)."""
    if isinstance(value, str):
        return [pb.ChatMessage(role="user", content=value)]
    if not isinstance(value, list) or not value:
        raise HttpError(400, "input must be a string or a non-empty array of items")
    out: list[pb.ChatMessage] = []
    for i, raw in enumerate(value):
        where = f"input[{i}]"
        item = f.as_object(raw, where)
        kind = f.string(item, "type", "message")
        if kind == "message":
            role = f.string(item, "role", name=f"{where}.role")
            if role not in ("user", "assistant", "system", "developer"):
                raise HttpError(
                    400, f"{where}.role {role[:40]!r} is not user, assistant, system or developer"
                )
            out.append(
                pb.ChatMessage(
                    role="system" if role == "developer" else role,
                    content=content_text(item.get("content"), where),
                )
            )
        elif kind == "function_call":
            call = pb.ToolCall(
                id=f.string(item, "call_id", name=f"{where}.call_id"),
                name=f.string(item, "name", name=f"{where}.name"),
                arguments=f.string(item, "arguments", "{}", name=f"{where}.arguments"),
            )
            if out and out[-1].role == "assistant":
                out[-1].tool_calls.append(call)  # several calls of one reply
            else:
                out.append(pb.ChatMessage(role="assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            output = item.get("output")
            out.append(
                pb.ChatMessage(
                    role="tool",
                    tool_call_id=f.string(item, "call_id", name=f"{where}.call_id"),
                    content=output if isinstance(output, str) else content_text(output, where),
                )
            )
        else:
            raise HttpError(
                400,
                f"{where} has type {kind[:40]!r}; edged reads message, "
                "function_call and function_call_output items",
            )
    return out


def _split(
    messages: list[pb.ChatMessage],
) -> tuple[str, list[pb.ChatMessage], list[pb.ChatMessage]]:
    """(system text, history, this turn: what follows the last assistant message)."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    rest = [m for m in messages if m.role != "system"]
    last = max((i for i, m in enumerate(rest) if m.role == "assistant"), default=-1)
    return system, rest[: last + 1], rest[last + 1 :]


def _turn(tail: list[pb.ChatMessage]) -> tuple[str, list[pb.ChatMessage]]:
    """This turn's user text and tool results."""
    if not tail:
        raise HttpError(400, "input must end with a user message or function_call_output items")
    return "\n\n".join(m.content for m in tail if m.role == "user"), [
        m for m in tail if m.role == "tool"
    ]


# ------------------------------------------------------------------ controls


def _text_format(body: dict[str, Any]) -> pb.ResponseFormat:
    text = f.obj(body, "text")
    fmt = text.get("format")
    return t.response_format(fmt) if fmt is not None else pb.ResponseFormat()


class _Controls:
    """The generation controls of a Responses request, for Generate or Send."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.sampling = t.sampling(body, max_tokens=t.max_tokens(body, "max_output_tokens"))
        self.response_format = _text_format(body)
        self.tools = t.openai_tools(body, flat=True)
        self.tool_choice = t.openai_tool_choice(body.get("tool_choice"))
        self.parallel = body.get("parallel_tool_calls")
        if self.parallel is not None:
            self.parallel = f.boolean(body, "parallel_tool_calls")
        self.logprobs = f.integer(body, "top_logprobs", lo=0, hi=20)

    def apply(self, req: pb.GenerateRequest | pb.SendRequest) -> None:
        req.sampling.CopyFrom(self.sampling)
        req.response_format.CopyFrom(self.response_format)
        req.tools.extend(self.tools)
        req.tool_choice.CopyFrom(self.tool_choice)
        if self.parallel is not None:
            req.parallel_tool_calls = bool(self.parallel)
        if self.logprobs is not None:
            req.logprobs = self.logprobs


# ------------------------------------------------------------------ POST /v1/responses


class _Plan:
    """What a request runs: a session turn (stored) or a plain generation."""

    def __init__(self, model: str, rid: str, method: str, run: Any, message: Any) -> None:
        self.model = model
        self.rid = rid
        self.method = method
        self.run = run  # (request, deadline=) -> stream
        self.message = message
        self.new_session = ""  # a session made for this request: removed if it fails to start


async def _plan(request: Request, body: dict[str, Any], controls: _Controls) -> _Plan:
    services = door.services_of(request)
    store = f.boolean(body, "store", True)
    previous = f.string(body, "previous_response_id")
    messages = input_messages(body.get("input"))
    system, history, tail = _split(messages)
    instructions = f.string(body, "instructions")
    system = "\n\n".join(s for s in (instructions, system) if s)
    if previous:
        session_id, turn = parse_id(previous)
        got = await services.sessions.get(pb.SessionRef(session_id=session_id))
        if turn > got.session.turns or turn < 1:
            raise NotFound(f"no stored response {previous!r}")
        if history:
            raise HttpError(
                400,
                "with previous_response_id, input holds this turn only: user "
                "messages and function_call_output items",
            )
        if system and system != got.session.system_prompt:
            raise HttpError(
                400,
                "instructions differ from the conversation's: start a new one "
                "(without previous_response_id) to change them",
            )
        if not store:  # answer from the stored history; keep nothing
            past = _history_until(got, turn)
            req = _chat(got.session.model, got.session.system_prompt, [*past, *tail], controls)
            return _Plan(
                req.model, t.new_id("resp_"), door.GENERATE, services.inference.generate, req
            )
        if turn < got.session.turns:  # continue from an older turn: a branch
            door.check_limits(request, FORK, pb.SessionRef(session_id=session_id))
            forked = await services.sessions.fork(pb.SessionRef(session_id=session_id))
            await services.sessions.rewind(pb.RewindRequest(session_id=forked.id, turns=turn))
            session_id = forked.id
        return _send(services, session_id, got.session.model, turn, tail, controls)
    model = f.string(body, "model")
    if not model:
        raise HttpError(400, "model is required (GET /v1/models lists them)")
    if not store:
        req = _chat(model, system, [*history, *tail], controls)
        return _Plan(model, t.new_id("resp_"), door.GENERATE, services.inference.generate, req)
    content, results = _turn(tail)  # refuse a bad input before storing a session
    create = pb.CreateSessionRequest(model=model, system_prompt=system, history=history)
    door.check_limits(request, CREATE, create)
    door.check_limits(request, door.SEND, pb.SendRequest(content=content, tool_results=results))
    session = await services.sessions.create(create)
    turns = sum(1 for m in history if m.role == "assistant")
    plan = _send(services, session.id, session.model, turns, tail, controls)
    plan.new_session = session.id
    return plan


def _history_until(got: pb.GetSessionResponse, turn: int) -> list[pb.ChatMessage]:
    out: list[pb.ChatMessage] = []
    done = 0
    for m in got.history:
        if done == turn:
            break
        out.append(m)
        done += m.role == "assistant"
    return out


def _chat(
    model: str, system: str, messages: list[pb.ChatMessage], controls: _Controls
) -> pb.GenerateRequest:
    _turn([m for m in messages[-1:] if m.role != "assistant"])
    chat = [pb.ChatMessage(role="system", content=system)] if system else []
    req = pb.GenerateRequest(model=model, chat=pb.ChatMessages(messages=[*chat, *messages]))
    controls.apply(req)
    return req


def _send(
    services: door.Services,
    session_id: str,
    model: str,
    turns: int,
    tail: list[pb.ChatMessage],
    controls: _Controls,
) -> _Plan:
    content, results = _turn(tail)
    req = pb.SendRequest(session_id=session_id, content=content, tool_results=results)
    controls.apply(req)
    return _Plan(model, response_id(session_id, turns + 1), door.SEND, services.sessions.send, req)


@door.route(API, "generate")
async def create(request: Request) -> Response:
    body = await door.body(request)
    controls = _Controls(body)
    plan = await _plan(request, body, controls)
    try:
        door.check_limits(request, plan.method, plan.message)
        stream = plan.run(plan.message, deadline=door.deadline_from(request))
        first, rest = await door.first(door.guarded(request, plan.method, stream))
    except (EdgedError, HttpError):
        if plan.new_session:  # nothing was said in it: do not keep it
            services = door.services_of(request)
            await services.sessions.delete(pb.SessionRef(session_id=plan.new_session))
        raise
    shape = _Shape(plan, body, t.now())
    if f.boolean(body, "stream"):
        return door.sse(_events(request, shape, first, rest))
    reply = await door.collect(rest, first)
    return door.json_response(shape.response(reply))


class _Shape:
    """The response object around a reply."""

    def __init__(self, plan: _Plan, body: dict[str, Any], created: int) -> None:
        self.plan = plan
        self.body = body
        self.created = created
        self.message_id = t.new_id("msg_")

    def response(self, reply: door.Reply | None, status: str = "completed") -> dict[str, Any]:
        b = self.body
        incomplete = None
        output: list[dict[str, Any]] = []
        usage = None
        if reply is not None:
            if reply.stats.finish_reason in _INCOMPLETE:
                status, incomplete = "incomplete", {"reason": "max_output_tokens"}
            output = self.output(reply)
            usage = _usage(reply.stats)
        return {
            "id": self.plan.rid,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": b.get("instructions"),
            "max_output_tokens": b.get("max_output_tokens"),
            "model": self.plan.model,
            "output": output,
            "parallel_tool_calls": b.get("parallel_tool_calls", True),
            "previous_response_id": b.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": b.get("store", True),
            "temperature": b.get("temperature"),
            "text": b.get("text") or {"format": {"type": "text"}},
            "tool_choice": b.get("tool_choice", "auto"),
            "tools": b.get("tools", []),
            "top_p": b.get("top_p"),
            "truncation": "disabled",
            "usage": usage,
            "metadata": b.get("metadata") or {},
        }

    def message(self, text: str, status: str = "completed") -> dict[str, Any]:
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": [] if status != "completed" else [_text_part(text)],
        }

    def output(self, reply: door.Reply) -> list[dict[str, Any]]:
        out = [self.message(reply.text)] if reply.text or not reply.tool_calls else []
        out.extend(_function_call(c) for c in reply.tool_calls)
        return out


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _function_call(call: pb.ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": "fc_" + call.id.removeprefix("call_"),
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


def _usage(stats: pb.GenerationStats) -> dict[str, Any]:
    return {
        "input_tokens": stats.prompt_tokens,
        "input_tokens_details": {"cached_tokens": stats.cached_prompt_tokens},
        "output_tokens": stats.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }


async def _events(
    request: Request,
    shape: _Shape,
    first: pb.GenerateChunk | None,
    rest: AsyncIterator[pb.GenerateChunk],
) -> AsyncIterator[str]:
    seq = 0

    def event(kind: str, **data: Any) -> str:
        nonlocal seq
        seq += 1
        return door.sse_data({"type": kind, "sequence_number": seq - 1, **data}, event=kind)

    yield event("response.created", response=shape.response(None, "in_progress"))
    yield event("response.in_progress", response=shape.response(None, "in_progress"))
    text: list[str] = []
    text_index: int | None = None
    calls: dict[int, tuple[int, pb.ToolCall]] = {}  # call index -> (output index, call)
    outputs = 0

    stats = pb.GenerationStats()
    try:
        async for chunk in door.resumed(first, rest):
            if chunk.text:
                if text_index is None:
                    text_index, outputs = outputs, outputs + 1
                    yield event(
                        "response.output_item.added",
                        output_index=text_index,
                        item=shape.message("", "in_progress"),
                    )
                    yield event(
                        "response.content_part.added",
                        item_id=shape.message_id,
                        output_index=text_index,
                        content_index=0,
                        part=_text_part(""),
                    )
                text.append(chunk.text)
                yield event(
                    "response.output_text.delta",
                    item_id=shape.message_id,
                    output_index=text_index,
                    content_index=0,
                    delta=chunk.text,
                    logprobs=[],
                )
            for d in chunk.tool_calls:
                if d.index not in calls:
                    call = pb.ToolCall(id=d.id, name=d.name)
                    calls[d.index] = (outputs, call)
                    outputs += 1
                    yield event(
                        "response.output_item.added",
                        output_index=calls[d.index][0],
                        item=_function_call(call, "in_progress"),
                    )
                index, call = calls[d.index]
                call.arguments += d.arguments
                if d.arguments:
                    yield event(
                        "response.function_call_arguments.delta",
                        item_id=_function_call(call)["id"],
                        output_index=index,
                        delta=d.arguments,
                    )
            if chunk.HasField("stats"):
                stats = chunk.stats
    except (EdgedError, HttpError) as exc:
        error = door.stream_error(request, API, exc)["error"]
        yield event("error", code=error.get("type"), message=error["message"], param=None)
        return
    whole = "".join(text)
    if text_index is not None:
        yield event(
            "response.output_text.done",
            item_id=shape.message_id,
            output_index=text_index,
            content_index=0,
            text=whole,
            logprobs=[],
        )
        yield event(
            "response.content_part.done",
            item_id=shape.message_id,
            output_index=text_index,
            content_index=0,
            part=_text_part(whole),
        )
        yield event("response.output_item.done", output_index=text_index, item=shape.message(whole))
    for index, call in calls.values():
        item = _function_call(call)
        yield event(
            "response.function_call_arguments.done",
            item_id=item["id"],
            output_index=index,
            arguments=call.arguments,
        )
        yield event("response.output_item.done", output_index=index, item=item)
    final = shape.response(door.Reply(whole, [c for _, c in calls.values()], [], stats))
    kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    yield event(kind, response=final)


# ------------------------------------------------------------------ stored responses


async def _stored(request: Request) -> tuple[str, int, pb.GetSessionResponse]:
    rid = request.path_params["response_id"]
    session_id, turn = parse_id(rid)
    services = door.services_of(request)
    try:
        got = await services.sessions.get(pb.SessionRef(session_id=session_id))
    except NotFound:
        raise NotFound(f"no stored response {rid!r}") from None
    if not 1 <= turn <= got.session.turns:
        raise NotFound(f"no stored response {rid!r}")
    return session_id, turn, got


@door.route(API, "generate")
async def get(request: Request) -> Response:
    session_id, turn, got = await _stored(request)
    past = _history_until(got, turn)
    reply = past[-1]
    plan = _Plan(got.session.model, request.path_params["response_id"], "", None, None)
    prev = response_id(session_id, turn - 1) if turn > 1 else None
    shape = _Shape(
        plan,
        {"previous_response_id": prev, "instructions": got.session.system_prompt or None},
        got.session.updated_unix_ms // 1000,
    )
    return door.json_response(
        shape.response(door.Reply(reply.content, list(reply.tool_calls), [], pb.GenerationStats()))
    )


@door.route(API, "generate")
async def delete(request: Request) -> Response:
    session_id, turn, got = await _stored(request)
    rid = request.path_params["response_id"]
    services = door.services_of(request)
    if turn < got.session.turns:
        later = response_id(session_id, got.session.turns)
        raise HttpError(
            409,
            f"{rid} has later responses that continue from it (the latest: "
            f"{later}); delete those first",
        )
    if turn == 1:
        await services.sessions.delete(pb.SessionRef(session_id=session_id))
    else:
        await services.sessions.rewind(pb.RewindRequest(session_id=session_id, turns=turn - 1))
    return door.json_response({"id": rid, "object": "response", "deleted": True})


ROUTES = [
    Route("/v1/responses", create, methods=["POST"]),
    Route("/v1/responses/{response_id}", get, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
]
