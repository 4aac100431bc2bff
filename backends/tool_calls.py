"""Tool calls: how tools reach a model, and how its reply becomes structured calls.

Shown to the model: a chat template that knows tools (it uses the Jinja
variable ``tools``) gets them as OpenAI-style function specs and renders them
its own way. Any other model gets edged's generic tool prompt
(:data:`GENERIC_PROMPT`, added to the system message) and is asked to answer
with the generic call format::

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}

That is also the format a ``required`` or named tool choice constrains the
reply to (:func:`call_schema`, a JSON schema a grammar is made from), so even a
tiny model produces a parseable call whose arguments match the tool's schema.

Parsed from the reply (:class:`CallParser`, streaming): the generic format;
Hermes/Qwen ``<tool_call>{...}</tool_call>`` blocks (with text around them);
Llama 3.x ``{"name": ..., "parameters": ...}`` replies (after an optional
``<|python_tag|>``, several joined by ``;``); Mistral ``[TOOL_CALLS][...]``.
A call to a tool the request did not offer, or markup that does not parse,
stays text: nothing the model writes becomes a call unless it names a tool
the client defined.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edged.backends.base import Message, Tool, ToolCall, ToolCallDelta, ToolChoice

MAX_PARALLEL_CALLS = 8  # the most calls a constrained reply may hold
TAG_OPEN, TAG_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL = "[TOOL_CALLS]"
PYTHON_TAG = "<|python_tag|>"
_MARKERS = (TAG_OPEN, MISTRAL, PYTHON_TAG)

GENERIC_PROMPT = """You can call these tools. Each has a name, a description and the JSON schema \
of its arguments:
{tools}
To call tools, reply with only this JSON and nothing else:
{{"tool_calls": [{{"name": "<tool name>", "arguments": {{<the arguments>}}}}]}}
{instruction}"""
_INSTRUCTION = {
    "auto": "If no tool is needed, answer in plain text instead.",
    "required": "You must call at least one of the tools.",
}


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def tool_schema(tool: Tool) -> dict[str, Any]:
    """A tool's arguments schema as an object (an empty tool takes no arguments)."""
    if not tool.parameters:
        return {"type": "object", "properties": {}}
    schema = json.loads(tool.parameters)
    return schema if isinstance(schema, dict) else {"type": "object"}


def function_specs(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """Tools as OpenAI-style function specs (what tool-aware chat templates read)."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": tool_schema(t),
            },
        }
        for t in tools
    ]


def offered(tools: Sequence[Tool], choice: ToolChoice) -> list[Tool]:
    """The tools the model is shown: none for choice "none", the named one for "function"."""
    if choice.mode == "none":
        return []
    if choice.mode == "function":
        return [t for t in tools if t.name == choice.function]
    return list(tools)


def generic_prompt(tools: Sequence[Tool], choice: ToolChoice) -> str:
    listed = [
        {"name": t.name, "description": t.description, "parameters": tool_schema(t)} for t in tools
    ]
    instruction = (
        f"You must call the tool {choice.function}."
        if choice.mode == "function"
        else _INSTRUCTION.get(choice.mode, _INSTRUCTION["auto"])
    )
    return GENERIC_PROMPT.format(
        tools=json.dumps(listed, ensure_ascii=False), instruction=instruction
    )


def generic_calls_text(calls: Sequence[ToolCall]) -> str:
    """How an assistant turn with calls is written in the generic format (history)."""
    items = [{"name": c.name, "arguments": _json_or_text(c.arguments)} for c in calls]
    return json.dumps({"tool_calls": items}, ensure_ascii=False)


def generic_messages(
    messages: Sequence[Message], tools: Sequence[Tool], choice: ToolChoice
) -> list[Message]:
    """A chat for a template that knows no tools: the tool prompt in the system
    message, calls written in the generic format, results as user turns."""
    out: list[Message] = []
    prompt = generic_prompt(tools, choice) if tools else ""
    if prompt:
        if messages and messages[0].role == "system":
            out.append(Message("system", f"{messages[0].content}\n\n{prompt}"))
            messages = messages[1:]
        else:
            out.append(Message("system", prompt))
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            text = generic_calls_text(m.tool_calls)
            out.append(Message("assistant", f"{m.content}\n{text}" if m.content else text))
        elif m.role == "tool":
            who = f"{m.name} " if m.name else ""
            out.append(
                Message("user", f"Result of tool {who}(call {m.tool_call_id}):\n{m.content}")
            )
        else:
            out.append(Message(m.role, m.content))
    return out


def call_schema(tools: Sequence[Tool], *, parallel: bool) -> dict[str, Any]:
    """The JSON schema of a reply made of generic-format calls to ``tools``."""
    one_of = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": tool_schema(t)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    calls: dict[str, Any] = {
        "type": "array",
        "items": one_of[0] if len(one_of) == 1 else {"anyOf": one_of},
        "minItems": 1,
        "maxItems": MAX_PARALLEL_CALLS if parallel else 1,
    }
    return {
        "type": "object",
        "properties": {"tool_calls": calls},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }


def _json_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


# ---------------------------------------------------------------- parsing replies


@dataclass
class CallParser:
    """Turns a reply's text, as it streams, into text and tool-call deltas.

    Text that may be the start of call markup is held until it is known; a
    reply that starts with ``{`` (after whitespace) is held whole and parsed at
    the end. Only calls to ``names`` become calls; anything else is text.
    """

    names: frozenset[str]
    parallel: bool = True
    # the reply can only be calls (a required or named tool choice): what does
    # not parse (a call cut short by max_tokens) is dropped, never sent as text
    calls_only: bool = False
    calls: list[ToolCall] = field(default_factory=list)
    _held: str = ""
    _mode: str = "start"  # start | text | tag | whole

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        self._held += text
        out: list[str] = []
        deltas: list[ToolCallDelta] = []
        while True:
            if self._mode == "start":
                head = self._held.lstrip()
                if not head:
                    break
                if head.startswith("{") or head.startswith(MISTRAL) or head.startswith(PYTHON_TAG):
                    self._mode = "whole"
                    continue
                if any(m.startswith(head) for m in (MISTRAL, PYTHON_TAG)):
                    break  # could still become a marker
                self._mode = "text"
            if self._mode == "text":
                i = self._held.find(TAG_OPEN)
                if i < 0:
                    keep = _partial_suffix(self._held, TAG_OPEN)
                    out.append(self._held[: len(self._held) - keep])
                    self._held = self._held[len(self._held) - keep :]
                    break
                out.append(self._held[:i])
                self._held = self._held[i:]
                self._mode = "tag"
            if self._mode == "tag":
                end = self._held.find(TAG_CLOSE)
                if end < 0:
                    break
                block = self._held[: end + len(TAG_CLOSE)]
                self._held = self._held[end + len(TAG_CLOSE) :]
                parsed = self._calls_from(_loads(block[len(TAG_OPEN) : -len(TAG_CLOSE)]))
                if parsed:
                    deltas += self._add(parsed)
                else:
                    out.append(block)
                self._mode = "text"
                continue
            break  # whole: everything waits for finish()
        return "".join(out), deltas

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """The end of the reply: what is still held, as calls or as text."""
        held, self._held = self._held, ""
        if self._mode == "whole":
            parsed = self._calls_from_reply(held.strip())
            if parsed:
                return "", self._add(parsed)
        elif self._mode == "tag":
            parsed = self._calls_from(_loads(held[len(TAG_OPEN) :]))
            if parsed:
                return "", self._add(parsed)
        return ("", []) if self.calls_only else (held, [])

    def _add(self, parsed: list[tuple[str, str]]) -> list[ToolCallDelta]:
        deltas = []
        for name, arguments in parsed:
            if self.calls and not self.parallel:
                break
            call = ToolCall(new_call_id(), name, arguments)
            deltas.append(ToolCallDelta(len(self.calls), call.id, call.name, call.arguments))
            self.calls.append(call)
        return deltas

    def _calls_from_reply(self, text: str) -> list[tuple[str, str]]:
        if text.startswith(MISTRAL):
            return self._calls_from(_loads(text[len(MISTRAL) :]))
        if text.startswith(PYTHON_TAG):
            text = text[len(PYTHON_TAG) :].strip()
        value = _loads(text)
        if value is None and ";" in text:  # Llama 3.x: several calls joined by ';'
            parts = [_loads(p) for p in text.split(";") if p.strip()]
            value = parts if parts and all(p is not None for p in parts) else None
        return self._calls_from(value)

    def _calls_from(self, value: Any) -> list[tuple[str, str]]:
        """(name, arguments JSON) of every call in a parsed value; [] when any
        part is not a call to an offered tool (then the whole thing stays text)."""
        if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
            value = value["tool_calls"]
        items = value if isinstance(value, list) else [value]
        out: list[tuple[str, str]] = []
        for item in items:
            if not isinstance(item, dict):
                return []
            nested = item.get("function")
            fn: dict[str, Any] = nested if isinstance(nested, dict) else item
            name = fn.get("name")
            args = fn.get("arguments", fn.get("parameters", {}))
            if isinstance(args, str):
                args = _loads(args)
            if name not in self.names or not isinstance(args, dict):
                return []
            out.append((name, json.dumps(args, ensure_ascii=False)))
        return out


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a start of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0
