"""Tool calls through gRPC on the real SmolLM2 (a template without tools: the
generic tool prompt, and constrained calls for required/named choices)."""

from __future__ import annotations

import json

import grpc
import jsonschema
import pytest

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon
from tests.integration.helpers import chat, collect

pytestmark = pytest.mark.model
TC = pb.ToolChoice

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = pb.Tool(
    name="get_weather",
    description="Get the current weather in a city",
    parameters=json.dumps(WEATHER_PARAMS),
)


def calls_of(chunks: list[pb.GenerateChunk]) -> list[tuple[str, str, str]]:
    """(id, name, arguments) per call, its streamed parts joined."""
    calls: dict[int, list[str]] = {}
    for c in chunks:
        for d in c.tool_calls:
            part = calls.setdefault(d.index, ["", "", ""])
            part[0] = part[0] or d.id
            part[1] = part[1] or d.name
            part[2] += d.arguments
    return [tuple(calls[i]) for i in sorted(calls)]  # type: ignore[misc]


def ask(
    daemon: Daemon, text: str, mode: int, function: str = "", **sampling: object
) -> list[pb.GenerateChunk]:
    req = chat("smollm2", text, **{"max_tokens": 128, **sampling})
    req.tools.append(WEATHER)
    req.parallel_tool_calls = False  # a 135M model repeats calls when it may make several
    req.tool_choice.mode = mode
    req.tool_choice.function = function
    return list(daemon.inference.Generate(req, timeout=120))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_returns_a_call_whose_arguments_validate(daemon: Daemon, seed: int) -> None:
    chunks = ask(
        daemon, "What is the weather like in Paris?", TC.MODE_REQUIRED, temperature=0.7, seed=seed
    )
    calls = calls_of(chunks)
    assert len(calls) == 1, chunks
    call_id, name, arguments = calls[0]
    assert call_id.startswith("call_") and name == "get_weather"
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMS)
    assert "".join(c.text for c in chunks) == ""  # never raw markup in the text
    assert chunks[-1].stats.finish_reason == pb.FINISH_REASON_TOOL_CALLS


def test_a_named_function_is_called(daemon: Daemon) -> None:
    chunks = ask(daemon, "Tell me about Rome.", TC.MODE_FUNCTION, "get_weather", temperature=0.0)
    assert [c[1] for c in calls_of(chunks)] == ["get_weather"]


def test_auto_that_needs_no_tool_answers_in_text(daemon: Daemon) -> None:
    chunks = ask(daemon, "Say hello to me in one short sentence.", TC.MODE_AUTO, temperature=0.0)
    assert calls_of(chunks) == []
    assert "".join(c.text for c in chunks).strip()
    assert chunks[-1].stats.finish_reason != pb.FINISH_REASON_TOOL_CALLS


def test_none_and_bad_tool_requests(daemon: Daemon) -> None:
    chunks = ask(daemon, "What is the weather like in Paris?", TC.MODE_NONE, temperature=0.0)
    assert calls_of(chunks) == []
    for tools, choice, words in (
        ([pb.Tool(name="bad name!")], TC(), "tool name"),
        ([WEATHER, WEATHER], TC(), "two tools are called"),
        ([pb.Tool(name="t", parameters='{"type": "array"}')], TC(), "must be an object schema"),
        ([], TC(mode=TC.MODE_REQUIRED), "needs tools"),
        ([WEATHER], TC(mode=TC.MODE_FUNCTION, function="nope"), "not one of the tools"),
    ):
        req = chat("smollm2", "hi")
        req.tools.extend(tools)
        req.tool_choice.CopyFrom(choice)
        with pytest.raises(grpc.RpcError) as err:
            collect(daemon.inference.Generate(req, timeout=60))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in (err.value.details() or "")


def test_a_tool_round_trip_in_a_session_reuses_the_kv(daemon: Daemon) -> None:
    s = daemon.sessions.Create(pb.CreateSessionRequest(model="smollm2"), timeout=30)
    first = pb.SendRequest(
        session_id=s.id,
        content="What is the weather like in Paris?",
        sampling=pb.SamplingParams(temperature=0.0, max_tokens=96),
        tools=[WEATHER],
        tool_choice=TC(mode=TC.MODE_REQUIRED),
        parallel_tool_calls=False,
    )
    chunks = list(daemon.sessions.Send(first, timeout=120))
    ((call_id, name, _),) = calls_of(chunks)
    result = pb.ChatMessage(role="tool", content="18 C and sunny", tool_call_id=call_id, name=name)
    second = pb.SendRequest(
        session_id=s.id,
        sampling=pb.SamplingParams(temperature=0.0, max_tokens=32),
        tools=[WEATHER],
        tool_results=[result],
    )
    text, stats, _ = collect(daemon.sessions.Send(second, timeout=120))
    assert stats.kv_source == "resident"
    assert stats.cached_prompt_tokens > 0.5 * stats.prompt_tokens, stats
    history = daemon.sessions.Get(pb.SessionRef(session_id=s.id), timeout=10).history
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[1].tool_calls[0].id == call_id and history[1].tool_calls[0].name == "get_weather"
    assert history[2].tool_call_id == call_id and history[3].content == text
