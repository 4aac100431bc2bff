"""The controls a request may carry beyond sampling, checked before anything is queued.

Constrained output (:func:`constraint_from`), tools and the tool choice
(:func:`tools_from`, :func:`tool_choice_from`), logprobs and fill-in-the-middle
(:func:`infill_from`) arrive as protobuf and leave as the engine's own types.
Everything a person can get wrong is refused here with INVALID_ARGUMENT
naming the field: a JSON schema is checked against its meta-schema with the
``jsonschema`` library, a regex must compile, tool names must be unique.
Whether the model's backend supports a control is the engine's capabilities'
business (:func:`edged.backends.toolkit.check_controls`, asked by the
scheduler before the job reaches the worker's queue).
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from edged.backends.base import Constraint, Infill, Tool, ToolChoice
from edged.common.errors import InvalidArgument
from edged.v1 import edged_pb2 as pb

MAX_SCHEMA_BYTES = 256 * 1024
MAX_GRAMMAR_BYTES = 256 * 1024
MAX_TOOLS = 128
MAX_LOGPROBS = 20
MAX_INFILL_FILES = 256
MAX_INFILL_CHARS = 4 * 1024 * 1024
GRAMMAR_SYNTAXES = ("gbnf", "ebnf", "lark")
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

_KINDS = {
    pb.ResponseFormat.TYPE_JSON_OBJECT: "json_object",
    pb.ResponseFormat.TYPE_JSON_SCHEMA: "json_schema",
    pb.ResponseFormat.TYPE_GRAMMAR: "grammar",
    pb.ResponseFormat.TYPE_REGEX: "regex",
}
_MODES = {
    pb.ToolChoice.MODE_UNSPECIFIED: "auto",
    pb.ToolChoice.MODE_AUTO: "auto",
    pb.ToolChoice.MODE_NONE: "none",
    pb.ToolChoice.MODE_REQUIRED: "required",
    pb.ToolChoice.MODE_FUNCTION: "function",
}


def check_schema(text: str, field: str) -> dict[str, Any]:
    """A JSON schema given as JSON text: parsed and checked against its meta-schema."""
    if len(text.encode("utf-8")) > MAX_SCHEMA_BYTES:
        raise InvalidArgument(f"{field} is larger than {MAX_SCHEMA_BYTES} bytes")
    try:
        schema = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"{field} is not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise InvalidArgument(f"{field} must be a JSON object (a JSON schema)")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the top level"
        message = f"{field} is not a valid JSON schema at {where}: {exc.message}"
        raise InvalidArgument(message) from None
    except RecursionError as exc:
        raise InvalidArgument(f"{field} is not a valid JSON schema: {exc}") from exc
    return schema


def constraint_from(msg: pb.ResponseFormat) -> Constraint | None:
    """The reply constraint a request asks for (None: plain text)."""
    kind = _KINDS.get(msg.type)
    if msg.type == pb.ResponseFormat.TYPE_TEXT or kind is None:
        if msg.type not in (pb.ResponseFormat.TYPE_TEXT, pb.ResponseFormat.TYPE_UNSPECIFIED):
            raise InvalidArgument(f"unknown response_format.type {msg.type}")
        return None
    if kind == "json_object":
        return Constraint(kind)
    if kind == "json_schema":
        if not msg.schema:
            raise InvalidArgument("response_format.schema is required for json_schema")
        check_schema(msg.schema, "response_format.schema")
        return Constraint(kind, msg.schema)
    if kind == "grammar":
        if not msg.grammar.strip():
            raise InvalidArgument("response_format.grammar is empty")
        if len(msg.grammar.encode("utf-8")) > MAX_GRAMMAR_BYTES:
            raise InvalidArgument(f"response_format.grammar is over {MAX_GRAMMAR_BYTES} bytes")
        if msg.syntax not in GRAMMAR_SYNTAXES:
            raise InvalidArgument(
                f"response_format.syntax must be one of {', '.join(GRAMMAR_SYNTAXES)}, "
                f"got {msg.syntax!r}"
            )
        return Constraint(kind, msg.grammar, msg.syntax)
    if not msg.regex:
        raise InvalidArgument("response_format.regex is empty")
    try:
        re.compile(msg.regex)
    except re.error as exc:
        raise InvalidArgument(f"response_format.regex does not compile: {exc}") from exc
    return Constraint(kind, msg.regex)


def tools_from(tools: Any) -> tuple[Tool, ...]:
    if len(tools) > MAX_TOOLS:
        raise InvalidArgument(f"at most {MAX_TOOLS} tools per request")
    out: list[Tool] = []
    seen: set[str] = set()
    for t in tools:
        if not TOOL_NAME.fullmatch(t.name):
            raise InvalidArgument(
                f"tool name {t.name[:80]!r} must be 1-64 letters, digits, '_' or '-'"
            )
        if t.name in seen:
            raise InvalidArgument(f"two tools are called {t.name!r}")
        seen.add(t.name)
        if t.parameters:
            schema = check_schema(t.parameters, f"the parameters of tool {t.name!r}")
            if schema.get("type", "object") != "object":
                raise InvalidArgument(f"the parameters of tool {t.name!r} must be an object schema")
        out.append(Tool(t.name, t.description, t.parameters))
    return tuple(out)


def tool_choice_from(msg: pb.ToolChoice, tools: tuple[Tool, ...]) -> ToolChoice:
    mode = _MODES.get(msg.mode)
    if mode is None:
        raise InvalidArgument(f"unknown tool_choice.mode {msg.mode}")
    if mode in ("required", "function") and not tools:
        raise InvalidArgument(f"tool_choice {mode} needs tools")
    if mode == "function" and msg.function not in {t.name for t in tools}:
        raise InvalidArgument(f"tool_choice names {msg.function!r}, which is not one of the tools")
    return ToolChoice(mode, msg.function if mode == "function" else "")


def logprobs_from(request: Any) -> int | None:
    if not request.HasField("logprobs"):
        return None
    if request.logprobs > MAX_LOGPROBS:
        raise InvalidArgument(f"logprobs asks for {request.logprobs} alternatives; at most 20")
    return int(request.logprobs)


def infill_from(msg: pb.Infill) -> Infill:
    if len(msg.extra) > MAX_INFILL_FILES:
        raise InvalidArgument(f"at most {MAX_INFILL_FILES} extra files per infill request")
    size = len(msg.prefix) + len(msg.suffix) + len(msg.prompt)
    size += sum(len(e.text) + len(e.filename) for e in msg.extra)
    if size > MAX_INFILL_CHARS:
        raise InvalidArgument(f"the infill request is over {MAX_INFILL_CHARS} characters")
    if any("\x00" in t for t in (msg.prefix, msg.suffix, msg.prompt)):
        raise InvalidArgument("the infill text contains a NUL character")
    return Infill(
        prefix=msg.prefix,
        suffix=msg.suffix,
        prompt=msg.prompt,
        extra=tuple((e.filename, e.text) for e in msg.extra),
        n_indent=msg.n_indent,
        t_max_predict_ms=msg.t_max_predict_ms,
    )
