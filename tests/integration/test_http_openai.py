"""The OpenAI door, driven by the real ``openai`` SDK against a real daemon and
SmolLM2: chat completions (sync, async, streaming, tools, JSON schema,
logprobs), completions with ``suffix`` (infill), the Responses API on edged
sessions (``previous_response_id`` reuses the KV and ``usage`` shows it), and
the clear refusals (``n`` > 1, embeddings from a chat model)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest

from harness.daemon import Daemon, clone_store, start_daemon

MODEL = "smollm2"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[openai.OpenAI]:
    # any key that is not an edged token (edt_...) is no token: anonymous, this user
    with openai.OpenAI(base_url=daemon.http_url + "/v1", api_key="sk-no-key", max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def fim(tmp_path_factory: pytest.TempPathFactory, fim_store: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("fim-http")
    clone_store(fim_store, root / "data")
    d = start_daemon(root)
    yield d
    d.stop()


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_models_are_listed(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert "smollm2:135m-q4_1" in ids
    assert client.models.retrieve("smollm2").id == "smollm2:135m-q4_1"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nosuch")


def test_chat_completion(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=ask("Name a colour."), max_tokens=6, temperature=0, seed=1
    )
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # the same request again: its prompt is in the KV cache, and usage says so
    again = client.chat.completions.create(
        model=MODEL, messages=ask("Name a colour."), max_tokens=6, temperature=0
    )
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert (again.usage.prompt_tokens_details.cached_tokens or 0) > 0


def test_streaming_with_usage_and_stop(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ask("Count from one to ten in words."),
        max_completion_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text and finishes[-1] in ("stop", "length") and finishes.count(None) == len(finishes) - 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    # a stop string cuts the reply before it
    word = text.split()[1] if len(text.split()) > 1 else text.split()[0]
    stopped = client.chat.completions.create(
        model=MODEL,
        messages=ask("Count from one to ten in words."),
        max_tokens=24,
        temperature=0,
        stop=[word],
    )
    assert word not in (stopped.choices[0].message.content or "")
    assert stopped.choices[0].finish_reason == "stop"


def test_async_client_streams(daemon: Daemon) -> None:
    async def run() -> tuple[str, int]:
        aclient = openai.AsyncOpenAI(base_url=daemon.http_url + "/v1", api_key="x")
        try:
            stream = await aclient.chat.completions.create(
                model=MODEL,
                messages=ask("Say hello."),
                max_tokens=8,
                temperature=0,
                stream=True,
            )
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            plain = await aclient.chat.completions.create(
                model=MODEL, messages=ask("Say hello."), max_tokens=8, temperature=0
            )
            assert plain.usage is not None
            return "".join(parts), plain.usage.completion_tokens
        finally:
            await aclient.close()

    text, tokens = asyncio.run(run())
    assert text and tokens > 0


def test_forced_tool_call_matches_its_schema(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=ask("What is the weather in Paris?"),
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=48,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function" and calls[0].id
    assert calls[0].function.name == "get_weather"
    args = json.loads(calls[0].function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])  # type: ignore[index]
    # the result goes back as a tool message; the model answers in text
    follow = client.chat.completions.create(
        model=MODEL,
        messages=[
            *ask("What is the weather in Paris?"),
            {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},
            {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp_c": 21}'},
        ],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_tokens=12,
        temperature=0,
    )
    assert follow.choices[0].message.content and not follow.choices[0].message.tool_calls


def test_streamed_tool_call_deltas_join(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ask("Weather in Oslo?"),
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=48,
        temperature=0,
        stream=True,
    )
    name, arguments, ids, finish = "", "", [], None
    for c in stream:
        if not c.choices:
            continue
        for d in c.choices[0].delta.tool_calls or []:
            assert d.index == 0
            ids += [d.id] if d.id else []
            name += (d.function.name or "") if d.function else ""
            arguments += (d.function.arguments or "") if d.function else ""
        finish = c.choices[0].finish_reason or finish
    assert finish == "tool_calls" and name == "get_weather" and len(ids) == 1
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])  # type: ignore[index]


def test_json_schema_and_json_object(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=MODEL,
        messages=ask("Invent a person."),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
        max_tokens=64,
        temperature=0,
    )
    # a constrained reply that ends "stop" always matches (these prompts end well
    # inside max_tokens with SmolLM2 at temperature 0)
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), schema)
    r = client.chat.completions.create(
        model=MODEL,
        messages=ask("Reply with JSON: the name of a cat."),
        response_format={"type": "json_object"},
        max_tokens=48,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    # the SDK's structured-output helper parses the same reply itself
    parsed = client.chat.completions.parse(
        model=MODEL,
        messages=ask("Invent a person."),
        max_tokens=64,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    assert parsed.choices[0].message.content


def test_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=ask("Hi"),
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = r.choices[0].logprobs.content if r.choices[0].logprobs else None
    assert content is not None and r.usage is not None
    assert len(content) == r.usage.completion_tokens
    for lp in content:
        assert len(lp.top_logprobs) == 3 and lp.logprob <= 0
        # greedy: the chosen token is the likeliest
        assert lp.logprob == pytest.approx(lp.top_logprobs[0].logprob, abs=1e-4)


def test_refusals_are_clear(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="n above 1"):
        client.chat.completions.create(model=MODEL, messages=ask("hi"), n=2, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="has no pooling for embeddings"):
        client.embeddings.create(model=MODEL, input="hello")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nosuch", messages=ask("hi"), max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="text only"):
        client.chat.completions.create(
            model=MODEL,
            max_tokens=2,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                    ],
                }
            ],
        )
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(
            model=MODEL,
            messages=ask("hi"),
            max_tokens=2,
            temperature="hot",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.BadRequestError, match="not trained for infill"):
        client.completions.create(model=MODEL, prompt="def f(", suffix=")", max_tokens=4)


def test_completions_plain_and_with_suffix(client: openai.OpenAI, fim: Daemon) -> None:
    r = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=0, logprobs=2
    )
    assert r.object == "text_completion" and r.choices[0].text
    assert r.choices[0].logprobs is not None and r.choices[0].logprobs.tokens
    with openai.OpenAI(base_url=fim.http_url + "/v1", api_key="x", max_retries=0) as fim_client:
        filled = fim_client.completions.create(
            model="smolfim",
            prompt="def add(a, b):\n    return ",
            suffix="\n\nprint(add(1, 2))\n",
            max_tokens=6,
            temperature=0,
        )
        assert filled.usage is not None and filled.usage.completion_tokens > 0
        streamed = fim_client.completions.create(
            model="smolfim",
            prompt="x = [",
            suffix="]\n",
            max_tokens=4,
            temperature=0,
            stream=True,
        )
        assert any(c.choices and c.choices[0].finish_reason for c in streamed)


def test_responses_previous_response_id_reuses_the_session_kv(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL,
        instructions="You are terse.",
        input="My name is Ada and I like owls. Say ok.",
        max_output_tokens=8,
        temperature=0,
    )
    assert first.status in ("completed", "incomplete") and first.output_text
    assert first.usage is not None
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input="What is my name?",
        max_output_tokens=8,
        temperature=0,
    )
    assert second.usage is not None and second.usage.input_tokens_details is not None
    cached = second.usage.input_tokens_details.cached_tokens
    # the whole first exchange was resident: only the new turn was evaluated
    assert cached >= first.usage.input_tokens
    assert second.previous_response_id == first.id
    # stored responses come back, and a branch from the first one forks the session
    assert client.responses.retrieve(first.id).output_text == first.output_text
    branch = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input="What do I like?",
        max_output_tokens=6,
        temperature=0,
    )
    assert branch.id != second.id
    assert client.responses.retrieve(second.id).output_text == second.output_text
    # deleting: an older response with later ones is refused; the latest goes
    with pytest.raises(openai.ConflictError):
        client.responses.delete(first.id)
    client.responses.delete(second.id)
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    assert client.responses.retrieve(branch.id).output_text == branch.output_text
    client.responses.delete(branch.id)


def test_responses_stream_and_tools(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=MODEL,
            input="Say hi.",
            max_output_tokens=6,
            temperature=0,
            stream=True,
            store=False,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(
        getattr(e, "delta", "") for e in events if e.type == "response.output_text.delta"
    )
    final = events[-1].response  # type: ignore[union-attr]
    assert deltas and final.output_text == deltas
    assert [e.sequence_number for e in events] == list(range(len(events)))
    with pytest.raises(openai.NotFoundError):  # store: false keeps nothing
        client.responses.retrieve(final.id)

    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "The weather",
        "parameters": WEATHER["function"]["parameters"],
    }  # type: ignore[index]
    call_reply = client.responses.create(
        model=MODEL,
        input="Weather in Rome?",
        tools=[tool],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=48,
        temperature=0,
    )
    calls = [o for o in call_reply.output if o.type == "function_call"]
    assert len(calls) >= 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), tool["parameters"])
    answer = client.responses.create(
        model=MODEL,
        previous_response_id=call_reply.id,
        tools=[tool],  # type: ignore[list-item]
        input=[
            {
                "type": "function_call_output",
                "call_id": calls[0].call_id,
                "output": '{"temp_c": 18}',
            }
        ],
        tool_choice="none",
        max_output_tokens=10,
        temperature=0,
    )
    assert answer.output_text
    assert answer.usage is not None and answer.usage.input_tokens_details.cached_tokens > 0
    client.responses.delete(answer.id)
    client.responses.delete(call_reply.id)
