"""Tool calls: the formats models write them in, parsed as they stream."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edged.backends.base import Message, Tool, ToolCall, ToolChoice
from edged.backends.tool_calls import (
    CallParser,
    call_schema,
    generic_messages,
    generic_prompt,
    offered,
)

WEATHER = Tool(
    "get_weather",
    "Current weather for a city",
    json.dumps(
        {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        }
    ),
)
TIME = Tool("get_time", "The time now")
NAMES = frozenset({"get_weather", "get_time"})


def parse(text: str, *, step: int = 3, parallel: bool = True) -> tuple[str, list[tuple[str, dict]]]:
    """Feed ``text`` in pieces of ``step`` characters, like a stream."""
    p = CallParser(NAMES, parallel=parallel)
    out, deltas = [], []
    for i in range(0, len(text), step):
        t, d = p.feed(text[i : i + step])
        out.append(t)
        deltas += d
    t, d = p.finish()
    out.append(t)
    deltas += d
    assert [d.index for d in deltas] == list(range(len(deltas)))
    assert all(d.id.startswith("call_") and len(d.id) == 29 for d in deltas)
    return "".join(out), [(d.name, json.loads(d.arguments)) for d in deltas]


@pytest.mark.parametrize(
    "reply",
    [
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}',  # generic
        '  {"name": "get_weather", "parameters": {"city": "Paris"}}',  # Llama 3.x
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',  # Mistral
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        '{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": '
        '\\"Paris\\"}"}}',  # OpenAI-shaped, arguments as a string
    ],
)
@pytest.mark.parametrize("step", [1, 4, 1000])
def test_each_format_becomes_one_call(reply: str, step: int) -> None:
    text, calls = parse(reply, step=step)
    assert (text, calls) == ("", [("get_weather", {"city": "Paris"})])


def test_hermes_calls_keep_the_text_around_them() -> None:
    reply = (
        "Let me check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call> Done.'
    )
    for step in (1, 2, 7, 1000):
        text, calls = parse(reply, step=step)
        assert text == "Let me check.\n\n Done."
        assert calls == [("get_weather", {"city": "Oslo"}), ("get_time", {})]


def test_llama3_calls_joined_by_semicolons() -> None:
    reply = (
        '{"name": "get_time", "parameters": {}}; '
        '{"name": "get_weather", "parameters": {"city": "Rome"}}'
    )
    assert parse(reply)[1] == [("get_time", {}), ("get_weather", {"city": "Rome"})]


@pytest.mark.parametrize(
    "reply",
    [
        "Paris is sunny today.",
        '{"name": "rm_rf", "arguments": {"path": "/"}}',  # a tool nobody offered
        '{"tool_calls": [{"name": "get_weather", "arguments": "not json"}]}',
        '{"answer": 42}',  # JSON, but no call
        "<tool_call>{broken</tool_call> after",
        "<tool_ca",  # a marker that never completes
        "{",
    ],
)
def test_what_is_not_a_call_to_an_offered_tool_stays_text(reply: str) -> None:
    for step in (1, 5, 1000):
        assert parse(reply, step=step) == (reply, [])


def test_not_parallel_keeps_the_first_call() -> None:
    call = {"name": "get_time", "arguments": {}}
    reply = json.dumps({"tool_calls": [call, call]})
    assert parse(reply, parallel=False)[1] == [("get_time", {})]


def test_the_constrained_call_schema_accepts_calls_and_nothing_else() -> None:
    schema = call_schema([WEATHER, TIME], parallel=False)
    jsonschema.Draft202012Validator.check_schema(schema)
    ok = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}]}
    jsonschema.validate(ok, schema)
    for bad in (
        {"tool_calls": []},
        {"tool_calls": [{"name": "get_weather", "arguments": {"unit": "celsius"}}]},  # no city
        {"tool_calls": [{"name": "nope", "arguments": {}}]},
        {"tool_calls": [{"name": "get_time", "arguments": {}}] * 2},  # not parallel
        {"text": "hi"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_generic_messages_for_a_template_without_tools() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Oslo"}')
    chat = (
        Message("system", "Be brief."),
        Message("user", "Weather in Oslo?"),
        Message("assistant", "", (call,)),
        Message("tool", "12 C, rain", tool_call_id="call_1", name="get_weather"),
    )
    out = generic_messages(chat, [WEATHER], ToolChoice("auto"))
    assert [m.role for m in out] == ["system", "user", "assistant", "user"]
    assert out[0].content.startswith("Be brief.\n\nYou can call these tools.")
    assert '"get_weather"' in out[0].content and "plain text" in out[0].content
    assert json.loads(out[2].content) == {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    }
    assert out[3].content == "Result of tool get_weather (call call_1):\n12 C, rain"


def test_offered_tools_follow_the_choice() -> None:
    tools = [WEATHER, TIME]
    assert offered(tools, ToolChoice("none")) == []
    assert offered(tools, ToolChoice("function", "get_time")) == [TIME]
    assert offered(tools, ToolChoice("required")) == tools
    assert "You must call the tool get_time." in generic_prompt(
        [TIME], ToolChoice("function", "get_time")
    )


def test_a_call_cut_short_is_never_sent_as_text_when_only_calls_may_come() -> None:
    cut = '{"tool_calls": [{"name": "get_weather", "arguments": {"ci'
    only = CallParser(NAMES, calls_only=True)
    assert only.feed(cut) == ("", []) and only.finish() == ("", [])
    auto = CallParser(NAMES)
    assert auto.feed(cut) == ("", []) and auto.finish() == (cut, [])
