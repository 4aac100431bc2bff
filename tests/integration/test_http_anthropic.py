"""The Anthropic door, driven by the real ``anthropic`` SDK against a real daemon
and SmolLM2: messages (plain, streamed through the SDK's helper and as raw
events, async), system prompts, stop sequences, tools (forced, streamed, and a
tool_result round trip), structured output, count_tokens against a real call's
usage, and the refusals (no max_tokens, images, prefill, unknown models). One
test needs no model: how content blocks map onto edged's chat messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import pytest
from anthropic.types import Message, MessageParam, ToolParam

from edged.daemon.http import anthropic as door
from edged.daemon.http.errors import HttpError
from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon

MODEL = "smollm2"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": SCHEMA,
}
# this SDK has no temperature argument any more; the API (and edged) still take it
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}
# a forced call needs room for its whole JSON object
TOOL_TOKENS = 48


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[anthropic.Anthropic]:
    # any key that is not an edged token (edt_...) is no token: anonymous, this user
    with anthropic.Anthropic(base_url=daemon.http_url, api_key="sk-ant-none", max_retries=0) as sdk:
        yield sdk


def ask(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


def text_of(message: Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def test_message_shape_usage_and_max_tokens(client: anthropic.Anthropic) -> None:
    m = client.messages.create(model=MODEL, messages=ask("Name a colour."), max_tokens=8, **GREEDY)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert m.model == MODEL and m.content[0].type == "text" and text_of(m)
    assert m.stop_reason in ("end_turn", "max_tokens") and m.stop_sequence is None
    assert 0 < m.usage.output_tokens <= 8
    assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) > 0
    assert m.usage.cache_creation_input_tokens == 0
    # the same prompt again is in the KV cache: Anthropic counts it apart
    cut = client.messages.create(
        model=MODEL, messages=ask("Name a colour."), max_tokens=1, **GREEDY
    )
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 1
    assert (cut.usage.cache_read_input_tokens or 0) > 0
    total = m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)
    assert cut.usage.input_tokens + (cut.usage.cache_read_input_tokens or 0) == total


def test_stream_helper_gives_text_and_final_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL, messages=ask("Say hello."), max_tokens=12, **GREEDY
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) >= 1 and "".join(pieces) == text_of(final)
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert 0 < final.usage.output_tokens <= 12
    # message_start cannot know the prompt yet: message_delta carries the totals
    assert final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) > 0


def test_raw_events_in_order_async(daemon: Daemon) -> None:
    async def run() -> list[Any]:
        aclient = anthropic.AsyncAnthropic(base_url=daemon.http_url, api_key="x", max_retries=0)
        try:
            stream = await aclient.messages.create(
                model=MODEL,
                messages=ask("Count to five."),
                max_tokens=10,
                **GREEDY,
                stream=True,
            )
            return [event async for event in stream]
        finally:
            await aclient.close()

    events = asyncio.run(run())
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    start = events[0].message
    assert start.content == [] and start.stop_reason is None and start.id.startswith("msg_")
    assert events[1].index == 0 and events[1].content_block.type == "text"
    assert all(e.index == 0 and e.delta.type == "text_delta" for e in events[2:-3])
    delta = events[-2]
    assert delta.delta.stop_reason == "max_tokens" and delta.usage.output_tokens == 10


def test_system_prompt_and_count_tokens(client: anthropic.Anthropic) -> None:
    system = "You are a pirate. Answer in one short sentence."
    plain = client.messages.count_tokens(model=MODEL, messages=ask("Who are you?"))
    with_system = client.messages.count_tokens(
        model=MODEL, messages=ask("Who are you?"), system=system
    )
    as_blocks = client.messages.count_tokens(
        model=MODEL,
        messages=ask("Who are you?"),
        system=[{"type": "text", "text": system}],
    )
    in_messages = client.messages.count_tokens(
        model=MODEL, messages=[{"role": "system", "content": system}, *ask("Who are you?")]
    )
    assert with_system.input_tokens == as_blocks.input_tokens == in_messages.input_tokens
    assert with_system.input_tokens > plain.input_tokens > 0
    longer = client.messages.count_tokens(
        model=MODEL, messages=ask("Who are you? Tell me about your ship and your crew.")
    )
    assert longer.input_tokens > plain.input_tokens
    m = client.messages.create(
        model=MODEL, system=system, messages=ask("Who are you?"), max_tokens=8, **GREEDY
    )
    assert text_of(m)
    # Anthropic's input_tokens leave out cache reads; the two add up to the count
    assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) == with_system.input_tokens


def test_stop_sequence_is_reported(client: anthropic.Anthropic) -> None:
    prompt = ask("Count from one to ten in words.")
    free = text_of(client.messages.create(model=MODEL, messages=prompt, max_tokens=24, **GREEDY))
    words = free.split()
    assert len(words) >= 2
    stop = words[1]
    stopped = client.messages.create(
        model=MODEL, messages=prompt, max_tokens=24, **GREEDY, stop_sequences=[stop, "zzz"]
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert text_of(stopped) == free[: free.index(stop)]


def test_forced_tool_use_and_tool_result_round_trip(client: anthropic.Anthropic) -> None:
    m = client.messages.create(
        model=MODEL,
        messages=ask("What is the weather in Paris?"),
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        max_tokens=TOOL_TOKENS,
        **GREEDY,
    )
    assert m.stop_reason == "tool_use"
    uses = [b for b in m.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].id.startswith("toolu_")
    assert isinstance(uses[0].input, dict)
    jsonschema.validate(uses[0].input, SCHEMA)
    # the tools are part of the prompt (count_tokens counts as for tool_choice auto:
    # a forced choice's instruction line differs by a few tokens)
    question = ask("What is the weather in Paris?")
    bare = client.messages.count_tokens(model=MODEL, messages=question)
    counted = client.messages.count_tokens(model=MODEL, messages=question, tools=[WEATHER])
    assert counted.input_tokens > bare.input_tokens + 20
    # the call goes back as the assistant's turn, its result in the user's; a text reply
    follow = client.messages.create(
        model=MODEL,
        messages=[
            *ask("What is the weather in Paris?"),
            {"role": "assistant", "content": m.content},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": uses[0].id,
                        "content": [{"type": "text", "text": '{"temp_c": 21, "sky": "clear"}'}],
                    }
                ],
            },
        ],
        tools=[WEATHER],
        tool_choice={"type": "none"},
        max_tokens=12,
        **GREEDY,
    )
    assert text_of(follow) and all(b.type == "text" for b in follow.content)
    assert follow.stop_reason in ("end_turn", "max_tokens")
    # the earlier turns were in the KV cache
    assert (follow.usage.cache_read_input_tokens or 0) > 0


def test_streamed_tool_input_json_deltas_join(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL,
        messages=ask("Weather in Oslo?"),
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        max_tokens=TOOL_TOKENS,
        **GREEDY,
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    starts = [e for e in events if e.type == "content_block_start"]
    tool_starts = [e for e in starts if e.content_block.type == "tool_use"]
    assert len(tool_starts) == 1
    index = tool_starts[0].index
    block = tool_starts[0].content_block
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {}
    pieces = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta"
        and e.index == index
        and e.delta.type == "input_json_delta"
    ]
    assert pieces
    joined = "".join(pieces)
    used = final.content[index]
    assert used.type == "tool_use" and used.id == block.id
    assert used.input == json.loads(joined)
    jsonschema.validate(used.input, SCHEMA)
    assert final.stop_reason == "tool_use"


def test_structured_output(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "maxLength": 12}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    m = client.messages.create(
        model=MODEL,
        messages=ask("Name a colour."),
        max_tokens=24,
        output_config={"format": {"type": "json_schema", "schema": schema}},
        **GREEDY,
    )
    assert m.stop_reason == "end_turn"
    jsonschema.validate(json.loads(text_of(m)), schema)


def test_blocks_become_chat_messages_in_order() -> None:
    """No model needed: how content blocks map onto edged's chat messages."""
    body: dict[str, Any] = {
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "Weather in Rome and Oslo?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "two calls", "signature": "x"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Rome"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": True,
                        "content": [{"type": "text", "text": "no data"}],
                    },
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
    }
    got = door.chat(body).messages
    assert [(m.role, m.content) for m in got] == [
        ("system", "Be brief."),
        ("user", "Weather in Rome and Oslo?"),
        ("assistant", "Checking."),
        ("tool", "21C"),
        ("tool", "Error: no data"),
        ("user", "And tomorrow?"),
    ]
    assert [(c.id, c.name, json.loads(c.arguments)) for c in got[2].tool_calls] == [
        ("toolu_1", "get_weather", {"city": "Rome"}),
        ("toolu_2", "get_weather", {"city": "Oslo"}),
    ]
    assert [(m.tool_call_id, m.name) for m in got[3:5]] == [
        ("toolu_1", "get_weather"),
        ("toolu_2", "get_weather"),
    ]
    choice, parallel = door.tool_choice(
        {"tool_choice": {"type": "any", "disable_parallel_tool_use": True}}
    )
    assert choice.mode == pb.ToolChoice.MODE_REQUIRED and parallel is False
    assert door.tool_choice({})[1] is None
    with pytest.raises(HttpError, match="server tools"):
        door.tools({"tools": [{"type": "web_search_20250305", "name": "web_search"}]})
    with pytest.raises(HttpError, match="input_schema is required"):
        door.tools({"tools": [{"name": "f"}]})


def test_refusals_are_clear(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="max_tokens is required"):
        client.messages.create(
            model=MODEL, messages=ask("hi"), max_tokens=anthropic.NOT_GIVEN, timeout=30
        )  # type: ignore[call-overload]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
    with_image: Any = {"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}
    with pytest.raises(anthropic.BadRequestError, match="text only") as refused:
        client.messages.create(model=MODEL, messages=[with_image], max_tokens=2)
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nosuch", messages=ask("hi"), max_tokens=2)
    with pytest.raises(anthropic.BadRequestError, match="prefill"):
        client.messages.create(
            model=MODEL,
            messages=[*ask("hi"), {"role": "assistant", "content": "Hello"}],
            max_tokens=2,
        )
    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        client.messages.create(
            model=MODEL, messages=ask("hi"), max_tokens=2, extra_body={"temperature": "hot"}
        )


def test_models_list_in_anthropics_shape(daemon: Daemon) -> None:
    """GET /v1/models is shared with OpenAI; the Anthropic SDK gets its own shape."""
    with anthropic.Anthropic(base_url=daemon.http_url, api_key="x", max_retries=0) as client:
        ids = [m.id for m in client.models.list()]
        assert "smollm2:135m-q4_1" in ids
        assert client.models.retrieve("smollm2").id == "smollm2:135m-q4_1"
