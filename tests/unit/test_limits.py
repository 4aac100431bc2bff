"""Request limits and error-message redaction (pure logic; the real daemon is in
tests/integration/test_limits.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.daemon.config import Limits, load_limits
from edged.daemon.limits import Limiter
from edged.daemon.services import _errors
from edged.v1 import edged_pb2 as pb


def test_limits_from_env() -> None:
    lim = load_limits({"EDGED_MAX_STREAMS": "3", "EDGED_MAX_MESSAGE_MB": "2"})
    assert lim.max_streams == 3 and lim.max_message_bytes == 2 << 20
    assert load_limits({}) == Limits()
    with pytest.raises(ValueError, match="EDGED_MAX_TOKENS"):
        load_limits({"EDGED_MAX_TOKENS": "lots"})


def _chat(text: str, **sampling: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model="m",
        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=text)]),
        sampling=pb.SamplingParams(**sampling),
    )


def test_limiter_checks() -> None:
    sessions = [0]
    guard = Limiter(Limits(max_prompt_bytes=10, max_tokens=5, max_sessions=1), lambda: sessions[0])
    gen = "/edged.v1.Inference/Generate"
    assert guard.check(gen, _chat("short")) is None
    assert "EDGED_MAX_PROMPT_BYTES" in (guard.check(gen, _chat("é" * 6)) or "")  # 12 bytes
    assert "EDGED_MAX_TOKENS" in (guard.check(gen, _chat("a", max_tokens=6)) or "")
    send = pb.SendRequest(session_id="s", content="x" * 11)
    assert guard.check("/edged.v1.Sessions/Send", send) is not None
    create = "/edged.v1.Sessions/Create"
    assert guard.check(create, pb.CreateSessionRequest(model="m")) is None
    sessions[0] = 1
    assert "EDGED_MAX_SESSIONS" in (guard.check(create, pb.CreateSessionRequest()) or "")
    assert guard.check("/edged.v1.Models/List", pb.ListModelsRequest()) is None


@pytest.mark.parametrize(
    ("message", "request_text", "expected"),
    [
        ("cannot open /etc/shadow: denied", "", "cannot open <path>: denied"),
        ("blob /store/blobs/sha256-ab is corrupt", "", "blob /store/blobs/sha256-ab is corrupt"),
        ("no such file /home/u/m.gguf", 'source: "/home/u/m.gguf"', "no such file /home/u/m.gguf"),
        ("see https://example.org/a/b and 3/4", "", "see https://example.org/a/b and 3/4"),
        ("missing C:\\Users\\me\\m.gguf", "", "missing <path>"),
        ("in '/usr/lib/x.so'", "", "in '<path>'"),
    ],
)
def test_redact_paths(message: str, request_text: str, expected: str) -> None:
    _errors.allow_paths_under(Path("/store"))
    try:
        assert _errors.redact_paths(message, request_text) == expected
    finally:
        _errors.allow_paths_under()


def test_the_stream_limit_counts_running_streams() -> None:
    guard = Limiter(Limits(max_streams=1), lambda: 0)
    gen = "/edged.v1.Inference/Generate"
    with guard.streaming(gen):
        assert "EDGED_MAX_STREAMS" in (guard.check(gen, _chat("x")) or "")
        with guard.streaming("/edged.v1.Models/List"):  # not a streaming call: not counted
            assert guard.active_streams == 1
    assert guard.check(gen, _chat("x")) is None and guard.active_streams == 0
