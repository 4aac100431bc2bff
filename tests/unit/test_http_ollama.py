"""The Ollama dialect's translations, without a daemon: keep_alive durations,
options, Ollama's id-less tool calls, the request kinds of /api/generate, the
final record's durations, the NDJSON stream of a reply with tool calls, and
what /api/show says about a model."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from starlette.requests import Request

from edged.daemon.http import ollama, ollama_models
from edged.daemon.http.errors import HttpError
from edged.v1 import edged_pb2 as pb

YEAR_S = 365 * 24 * 3600.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("0", 0.0),
        (0, 0.0),
        (90, 90.0),
        ("90", 90.0),
        (-1, -1.0),
        ("-1m", -1.0),
        ("10000h", -1.0),  # longer than edged keeps anything: until unloaded
        (2 * YEAR_S, -1.0),
    ],
)
def test_keep_alive(value: Any, seconds: float | None) -> None:
    got = ollama.keep_alive(value)
    assert got == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize("value", ["soon", "5 minutes", "m", True, [1], {"s": 1}])
def test_keep_alive_refuses_what_is_no_duration(value: Any) -> None:
    with pytest.raises(HttpError) as err:
        ollama.keep_alive(value)
    assert err.value.status == 400 and "keep_alive" in err.value.message


def test_options() -> None:
    s = ollama.sampling(
        {
            "temperature": 0.2,
            "top_k": 5,
            "top_p": 0.9,
            "min_p": 0.05,
            "repeat_penalty": 1.1,
            "seed": 7,
            "stop": ["\n"],
            "num_thread": 3,  # runtime options are edged's to choose
            "use_mmap": True,
            "mirostat": 0,  # neutral: fine
            "presence_penalty": 0.0,
        }
    )
    assert (s.temperature, s.top_k, s.seed, list(s.stop)) == (pytest.approx(0.2), 5, 7, ["\n"])
    # num_predict: absent or <= 0 is "to the end of the context", as in Ollama
    for value in (None, 0, -1, -2):
        got = ollama.sampling({} if value is None else {"num_predict": value})
        assert got.HasField("max_tokens") and got.max_tokens == 0
    assert ollama.sampling({"num_predict": 12}).max_tokens == 12
    for key, value in (("mirostat", 2), ("presence_penalty", 0.5), ("typical_p", 0.7)):
        with pytest.raises(HttpError, match=f"options.{key} is not supported"):
            ollama.sampling({key: value})
    assert ollama.context_length({}) == 0
    assert ollama.context_length({"num_ctx": 100}) == 256  # edged's least context
    assert ollama.context_length({"num_ctx": 4096}) == 4096
    with pytest.raises(HttpError, match=r"options\.num_ctx"):
        ollama.context_length({"num_ctx": "big"})


def test_generate_request_kinds() -> None:
    infill = ollama.generate_request(
        {"prompt": "def f(", "suffix": "    return x\n", "raw": True, "system": "x"}, "m"
    )
    assert infill.WhichOneof("input") == "infill"
    assert (infill.infill.prefix, infill.infill.suffix) == ("def f(", "    return x\n")
    raw = ollama.generate_request({"prompt": "[INST] hi [/INST]", "raw": True}, "m")
    assert raw.WhichOneof("input") == "prompt" and raw.prompt == "[INST] hi [/INST]"
    chat = ollama.generate_request({"prompt": "hi", "system": "be brief", "suffix": ""}, "m")
    assert [(m.role, m.content) for m in chat.chat.messages] == [
        ("system", "be brief"),
        ("user", "hi"),
    ]
    fmt = ollama.generate_request({"prompt": "hi", "format": "json", "keep_alive": "1m"}, "m")
    assert fmt.response_format.type == pb.ResponseFormat.TYPE_JSON_OBJECT
    assert fmt.keep_alive_s == 60.0
    with pytest.raises(HttpError, match="template is not supported"):
        ollama.generate_request({"prompt": "hi", "template": "{{ .Prompt }}"}, "m")


def test_tool_calls_get_ids_and_results_find_their_call() -> None:
    messages = ollama.chat_messages(
        [
            {"role": "user", "content": "weather and time in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                    {"function": {"name": "time", "arguments": {"tz": "CET"}}},
                ],
            },
            {"role": "tool", "tool_name": "time", "content": "12:00"},
            {"role": "tool", "content": "sunny"},  # no name: the next unanswered call
            {"role": "tool", "tool_name": "weather", "content": "late"},  # no call left
        ]
    )
    calls = messages[1].tool_calls
    assert [c.id for c in calls] == ["call_1_0", "call_1_1"]
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    answers = [(m.tool_call_id, m.name) for m in messages[2:]]
    assert answers == [("call_1_1", "time"), ("call_1_0", "weather"), ("call_result_4", "weather")]


def test_chat_message_refusals() -> None:
    with pytest.raises(HttpError, match="images are not supported"):
        ollama.chat_messages([{"role": "user", "content": "x", "images": ["aGk="]}])
    with pytest.raises(HttpError, match=r"messages\[0\]\.role"):
        ollama.chat_messages([{"role": "developer", "content": "x"}])
    with pytest.raises(HttpError, match=r"messages\[0\]\.content"):
        ollama.chat_messages([{"role": "user", "content": [{"type": "text"}]}])


def stats(**fields: Any) -> pb.GenerationStats:
    base: dict[str, Any] = {
        "prompt_tokens": 20,
        "cached_prompt_tokens": 4,
        "completion_tokens": 10,
        "time_to_first_token_ms": 300.0,
        "prefill_tokens_per_second": 160.0,
        "decode_tokens_per_second": 50.0,
        "total_ms": 480.0,
        "finish_reason": pb.FINISH_REASON_STOP,
    }
    return pb.GenerationStats(**{**base, **fields})


def test_final_record_durations_are_nanoseconds() -> None:
    final = ollama._final(stats())
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["total_duration"] == 480_000_000
    assert final["prompt_eval_duration"] == 100_000_000  # 16 tokens at 160/s
    assert final["eval_duration"] == 200_000_000  # 10 tokens at 50/s
    assert final["load_duration"] == 200_000_000  # to the first token, beyond the prefill
    assert (final["prompt_eval_count"], final["eval_count"]) == (20, 10)
    assert all(isinstance(v, int) for k, v in final.items() if k.endswith("duration"))
    for reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_CONTEXT_FULL):
        assert ollama._final(stats(finish_reason=reason))["done_reason"] == "length"
    tight = ollama._final(stats(decode_tokens_per_second=0.0, completion_tokens=1))
    assert 0 < tight["eval_duration"] <= tight["total_duration"]


def test_stream_sends_tool_calls_whole_with_object_arguments() -> None:
    async def chunks() -> AsyncIterator[pb.GenerateChunk]:
        yield pb.GenerateChunk(tool_calls=[pb.ToolCallDelta(index=0, id="c", name="weather")])
        yield pb.GenerateChunk(tool_calls=[pb.ToolCallDelta(index=0, arguments='{"city": ')])
        yield pb.GenerateChunk(tool_calls=[pb.ToolCallDelta(index=0, arguments='"Oslo"}')])
        yield pb.GenerateChunk(stats=pb.GenerationStats(finish_reason=pb.FINISH_REASON_TOOL_CALLS))

    async def run() -> list[dict[str, Any]]:
        request = Request({"type": "http", "method": "POST", "path": "/api/chat", "headers": []})
        req = pb.GenerateRequest(model="m")
        first = pb.GenerateChunk(text="Let me check.")
        lines = [x async for x in ollama._records(request, req, (chunks(), first), chat=True)]
        return [json.loads(line) for line in lines]

    records = asyncio.run(run())
    assert [r["done"] for r in records] == [False, False, True]
    assert records[0]["message"] == {"role": "assistant", "content": "Let me check."}
    assert records[1]["message"]["tool_calls"] == [
        {"function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    ]
    assert records[2]["message"] == {"role": "assistant", "content": ""}
    assert records[2]["done_reason"] == "stop"


def test_show_fields() -> None:
    assert ollama_models.parameter_size(134_515_008) == "134.52M"
    assert ollama_models.parameter_size(8_030_261_248) == "8.0B"
    assert ollama_models.parameter_size(7_000_000_000) == "7B"
    assert ollama_models.parameter_size(900) == "900"
    assert ollama_models.bare_digest("sha256:" + "ab" * 32) == "ab" * 32
    stamp = ollama_models.timestamp(0)
    assert stamp == "1970-01-01T00:00:00.000000Z"
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() == 0
    chat = pb.ShowModelResponse(chat_template="{% for m in messages %}{% endfor %}")
    chat.capabilities.extend(["completion", "chat", "tools"])
    infill = pb.ShowModelResponse(chat_template="{{ x }}")
    infill.capabilities.extend(["completion", "infill"])
    assert ".Suffix" not in ollama_models.show_template(chat)
    assert "{{ .Suffix }}" in ollama_models.show_template(infill)
    assert ollama_models.capabilities(chat) == ["completion", "tools"]
    assert ollama_models.capabilities(infill) == ["completion", "insert"]
    shown = pb.ShowModelResponse(sampling_defaults={"temperature": 0.2, "max_tokens": 64.0})
    lines = [f"{k:<30} {v}" for k, v in ollama_models.parameters(shown, 4096)]
    continue_reads = re.compile(r'^(\S+)\s+((?:".*")|\S+)$')  # Continue's Ollama.ts
    assert [continue_reads.match(line).groups() for line in lines] == [  # type: ignore[union-attr]
        ("num_ctx", "4096"),
        ("num_predict", "64"),
        ("temperature", "0.2"),
    ]
