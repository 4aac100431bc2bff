"""The remote engine's logic without a network: URLs, the token file, the
error table, the request body and reading the upstream's stream (an httpx
MockTransport plays the upstream for the probe)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from edged.backends.base import Job, Message, Sampling, Tool, ToolChoice
from edged.common import errors
from edged.daemon.remote import upstream
from edged.daemon.remote.worker import _StreamState, request_body
from edged.models_registry.remote import RemoteSpec, check_url

TOKEN = "sk-" + "x7" * 20


def test_urls_get_v1_and_refuse_credentials() -> None:
    assert check_url("http://gpu:8000") == "http://gpu:8000/v1"
    assert check_url("https://gpu/v1/") == "https://gpu/v1"
    for bad in ("ftp://gpu/v1", "gpu:8000", "http://u:p@gpu/v1", "http://gpu/v1?x=1"):
        with pytest.raises(errors.InvalidArgument):
            check_url(bad)


def test_token_file_must_be_private_and_one_token(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    f.chmod(0o644)
    with pytest.raises(errors.FailedPrecondition, match="chmod 600") as err:
        upstream.read_token(str(f))
    assert TOKEN not in str(err.value)
    f.chmod(0o600)
    assert upstream.read_token(str(f)) == TOKEN
    f.write_text(TOKEN + " extra\n")
    with pytest.raises(errors.FailedPrecondition, match="one token") as err:
        upstream.read_token(str(f))
    assert TOKEN not in str(err.value)
    with pytest.raises(errors.FailedPrecondition, match="cannot read"):
        upstream.read_token(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, errors.Unauthenticated),
        (403, errors.PermissionDenied),
        (404, errors.NotFound),
        (429, errors.ResourceExhausted),
        (400, errors.InvalidArgument),
        (500, errors.Unavailable),
        (503, errors.Unavailable),
    ],
)
def test_status_table_names_the_host_never_the_token(status: int, kind: type) -> None:
    spec = RemoteSpec("http://gpu:8000/v1", "m", token_file="/t")
    body = json.dumps({"error": {"message": f"bad key {TOKEN}"}}).encode()
    err = upstream.status_error(spec, status, body, TOKEN)
    assert type(err) is kind
    assert "gpu:8000" in str(err) and TOKEN not in str(err) and "[token]" in str(err)


def test_request_body_carries_the_whole_conversation_and_controls() -> None:
    job = Job(
        1,
        Sampling(max_tokens=9, temperature=0.0, seed=3, stop=("\n",)),
        messages=(Message("user", "hi"), Message("assistant", "hello"), Message("user", "again")),
        session_id="s_1",
        tools=(Tool("f", "a tool", '{"type": "object"}'),),
        tool_choice=ToolChoice("required"),
    )
    path, body = request_body("up-model", job)
    assert path == "chat/completions"
    assert [m["content"] for m in body["messages"]] == ["hi", "hello", "again"]
    assert body["model"] == "up-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 9 and body["seed"] == 3 and body["stop"] == ["\n"]
    assert body["tools"][0]["function"]["parameters"] == {"type": "object"}
    assert body["tool_choice"] == "required"
    raw_path, raw = request_body("up-model", Job(2, Sampling(), prompt="once"))
    assert raw_path == "completions" and raw["prompt"] == "once"


def test_stream_state_reads_text_tool_calls_and_cached_tokens() -> None:
    state = _StreamState(7)
    assert state.feed({"choices": [{"delta": {"role": "assistant"}}]}) is None
    chunk = state.feed({"choices": [{"delta": {"content": "Hi"}}]})
    assert chunk is not None and chunk.text == "Hi" and chunk.request_id == 7
    call = state.feed(
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{"}}
                        ]
                    }
                }
            ]
        }
    )
    assert call is not None and call.tool_calls[0].name == "f"
    state.feed({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
    state.feed(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 50,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 40},
            },
        }
    )
    stats = state.stats(0.0)
    assert (stats.prompt_tokens, stats.cached_prompt_tokens, stats.completion_tokens) == (50, 40, 2)
    assert stats.finish_reason == "tool_calls" and stats.kv_source == "prefix"


def test_probe_stores_what_the_upstream_declares(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        if request.url.path == "/v1/models":
            return httpx.Response(
                200,
                json={"data": [{"id": "m", "owned_by": "vllm", "max_model_len": 8192}]},
            )
        if request.url.path == "/v1/embeddings":
            return httpx.Response(400, json={"error": {"message": "not an embedding model"}})
        body = json.loads(request.content)
        ok = "tools" in body  # accepts tools, refuses response_format
        return httpx.Response(200 if ok else 400, json={})

    real = upstream.client

    def mocked(spec: RemoteSpec, *, timeout_s: float | None = None) -> httpx.AsyncClient:
        c = real(spec, timeout_s=timeout_s)
        c._transport = httpx.MockTransport(answer)
        return c

    monkeypatch.setattr(upstream, "client", mocked)
    probed = asyncio.run(upstream.probe(RemoteSpec("http://gpu:8000", "m"), TOKEN))
    assert probed.context_length == 8192 and probed.tools and not probed.json_output
    assert not probed.embeddings and probed.owned_by == "vllm"
    assert all(h == f"Bearer {TOKEN}" for h in seen)
    with pytest.raises(errors.NotFound, match="does not serve 'other'"):
        asyncio.run(upstream.probe(RemoteSpec("http://gpu:8000", "other"), TOKEN))
