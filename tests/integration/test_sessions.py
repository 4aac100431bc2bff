"""Sessions over several turns, with the history kept by the daemon."""

from __future__ import annotations

import pytest

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, start_daemon
from tests.integration.helpers import collect

pytestmark = pytest.mark.model


def send(d: Daemon, sid: str, text: str, max_tokens: int = 48) -> tuple[str, pb.GenerationStats]:
    req = pb.SendRequest(
        session_id=sid,
        content=text,
        sampling=pb.SamplingParams(temperature=0.0, max_tokens=max_tokens),
    )
    text_out, stats, _ = collect(d.sessions.Send(req, timeout=120))
    return text_out, stats


def test_multi_turn_session_recalls_and_reuses_kv(daemon: Daemon) -> None:
    s = daemon.sessions.Create(pb.CreateSessionRequest(model="smollm2"), timeout=30)
    assert s.id.startswith("s_") and s.model == "smollm2:135m-q4_1"
    _, st1 = send(daemon, s.id, "The secret word is volcano.", max_tokens=16)
    assert st1.cached_prompt_tokens == 0
    reply, st2 = send(daemon, s.id, "What is the secret word?")
    assert "volcano" in reply.lower()
    # the second turn only sent the new message, yet the prompt covered the history
    assert st2.prompt_tokens > st1.prompt_tokens + st1.completion_tokens
    assert st2.cached_prompt_tokens >= st1.prompt_tokens, "the history's KV was reused"
    assert st2.kv_source == "resident"
    got = daemon.sessions.Get(pb.SessionRef(session_id=s.id), timeout=10)
    assert [m.role for m in got.history] == ["user", "assistant", "user", "assistant"]
    assert got.history[3].content == reply
    assert got.session.turns == 2 and got.session.token_count > 0
    ids = [x.id for x in daemon.sessions.List(pb.ListSessionsRequest(), timeout=10).sessions]
    assert s.id in ids
    daemon.sessions.Delete(pb.SessionRef(session_id=s.id), timeout=10)
    ids = [x.id for x in daemon.sessions.List(pb.ListSessionsRequest(), timeout=10).sessions]
    assert s.id not in ids


def test_sessions_do_not_leak_into_each_other(daemon: Daemon) -> None:
    """Interleave sessions with distinct facts; each recalls its own, never another's."""
    import concurrent.futures

    # Words SmolLM2 recalls at temperature 0 when asked alone. Its greedy answer
    # depends on the CPU's arithmetic: on some x86 machines "violin" comes back
    # as "Vinyl" even with no other session running, which is no leak.
    words = ["volcano", "saxophone", "telescope", "dolphin"]
    sids = {
        w: daemon.sessions.Create(pb.CreateSessionRequest(model="smollm2"), timeout=30).id
        for w in words
    }
    with concurrent.futures.ThreadPoolExecutor(len(words)) as pool:
        list(pool.map(lambda w: send(daemon, sids[w], f"The secret word is {w}.", 16), words))
        answers = pool.map(lambda w: send(daemon, sids[w], "What is the secret word?", 24), words)
        replies = {w: a[0] for w, a in zip(words, answers, strict=True)}
    for word, reply in replies.items():
        assert word in reply.lower(), (word, reply)
        assert not any(o in reply.lower() for o in words if o != word), (word, reply)


def test_sessions_survive_a_restart(tmp_path, smollm2_store) -> None:  # type: ignore[no-untyped-def]
    """Restart: the KV comes back from the disk tier; without it, from the history."""
    import shutil

    from harness.daemon import clone_store

    clone_store(smollm2_store, tmp_path / "data")
    d = start_daemon(tmp_path)
    s = d.sessions.Create(pb.CreateSessionRequest(model="smollm2"), timeout=30)
    send(d, s.id, "The secret word is saxophone.", max_tokens=16)
    assert d.stop() == 0  # a graceful stop saves resident sessions to the disk tier

    d2 = start_daemon(tmp_path)
    try:
        assert d2.sessions.Get(pb.SessionRef(session_id=s.id), timeout=10).session.turns == 1
        reply, stats = send(d2, s.id, "What is the secret word?")
        assert "saxophone" in reply.lower()
        assert stats.kv_source == "disk" and stats.cached_prompt_tokens > 0
    finally:
        d2.stop()

    shutil.rmtree(tmp_path / "cache" / "kv")  # the saved state is gone: rebuild
    d3 = start_daemon(tmp_path)
    try:
        reply3, stats3 = send(d3, s.id, "What is the secret word?")
        assert "saxophone" in reply3.lower()
        assert stats3.kv_source == "rebuilt"
    finally:
        d3.stop()


def test_a_session_turn_honours_stream_interval(daemon: Daemon) -> None:
    sid = daemon.sessions.Create(pb.CreateSessionRequest(model="smollm2"), timeout=30).id
    req = pb.SendRequest(
        session_id=sid,
        content="Tell me a story about a cat.",
        sampling=pb.SamplingParams(temperature=0.0, max_tokens=24),
        stream_interval_ms=0,
    )
    _, stats, n = collect(daemon.sessions.Send(req, timeout=120))
    # every decode step's text goes at once; a step that verified accepted
    # draft tokens (speculation) decoded them together with its own token
    steps = stats.completion_tokens - stats.accepted_tokens
    assert stats.completion_tokens > 3 and n >= steps - 3
