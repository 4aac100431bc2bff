"""Local API limits and access: each limit refuses with RESOURCE_EXHAUSTED, the
socket refuses other users, errors carry no paths, and the daemon keeps serving."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg
from harness.daemon import Daemon, clone_store, start_daemon
from tests.integration.helpers import chat, collect

C = grpc.StatusCode


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("limited")
    clone_store(smollm2_store, root / "data")
    d = start_daemon(
        root,
        EDGED_MAX_MESSAGE_MB="1",
        EDGED_MAX_PROMPT_BYTES="20000",
        EDGED_MAX_TOKENS="64",
        EDGED_MAX_SESSIONS="2",
        EDGED_MAX_STREAMS="1",
    )
    try:
        yield d
    finally:
        d.stop()


def error_of(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        result = call() if callable(call) else call
        if hasattr(result, "__iter__"):
            list(result)
    return err.value


def test_oversized_message_is_refused(limited: Daemon) -> None:
    big = chat("smollm2", "x" * (2 << 20))
    err = error_of(lambda: limited.inference.Generate(big, timeout=30))
    assert err.code() == C.RESOURCE_EXHAUSTED


def test_prompt_and_max_tokens_limits(limited: Daemon) -> None:
    err = error_of(lambda: limited.inference.Generate(chat("smollm2", "y" * 30000), timeout=30))
    assert err.code() == C.RESOURCE_EXHAUSTED
    assert "EDGED_MAX_PROMPT_BYTES" in (err.details() or "")
    # infill text and tool definitions count too
    big_infill = pb.GenerateRequest(model="smollm2", infill=pb.Infill(prefix="y" * 30000))
    err = error_of(lambda: limited.inference.Generate(big_infill, timeout=30))
    assert err.code() == C.RESOURCE_EXHAUSTED and "EDGED_MAX_PROMPT_BYTES" in (err.details() or "")
    big_tools = chat("smollm2", "hi")
    big_tools.tools.add(name="t", description="y" * 30000)
    err = error_of(lambda: limited.inference.Generate(big_tools, timeout=30))
    assert err.code() == C.RESOURCE_EXHAUSTED
    err = error_of(
        lambda: limited.inference.Generate(chat("smollm2", "hi", max_tokens=65), timeout=30)
    )
    assert err.code() == C.RESOURCE_EXHAUSTED
    assert "EDGED_MAX_TOKENS" in (err.details() or "")
    # at the limit: served
    _, stats, _ = collect(
        limited.inference.Generate(chat("smollm2", "hi", max_tokens=4), timeout=120)
    )
    assert stats.completion_tokens >= 1


def test_session_limit(limited: Daemon) -> None:
    sessions = pbg.SessionsStub(limited.channel)
    made = [sessions.Create(pb.CreateSessionRequest(model="smollm2"), timeout=30) for _ in range(2)]
    err = error_of(lambda: sessions.Create(pb.CreateSessionRequest(model="smollm2"), timeout=30))
    assert err.code() == C.RESOURCE_EXHAUSTED and "EDGED_MAX_SESSIONS" in (err.details() or "")
    err = error_of(lambda: sessions.Fork(pb.SessionRef(session_id=made[0].id), timeout=30))
    assert err.code() == C.RESOURCE_EXHAUSTED
    sessions.Delete(pb.SessionRef(session_id=made[0].id), timeout=30)
    again = sessions.Create(pb.CreateSessionRequest(model="smollm2"), timeout=30)
    for s in (made[1], again):
        sessions.Delete(pb.SessionRef(session_id=s.id), timeout=30)


def test_stream_limit_counts_running_streams(limited: Daemon) -> None:
    first = limited.inference.Generate(
        chat("smollm2", "Write a long story about a dolphin.", max_tokens=64, temperature=0.0),
        timeout=120,
    )
    started = threading.Event()
    chunks: list[pb.GenerateChunk] = []

    def consume() -> None:
        for c in first:
            chunks.append(c)
            started.set()

    t = threading.Thread(target=consume)
    t.start()
    assert started.wait(120)
    second = error_of(
        lambda: limited.inference.Generate(chat("smollm2", "hi", max_tokens=2), timeout=30)
    )
    t.join(120)
    assert second.code() == C.RESOURCE_EXHAUSTED and "EDGED_MAX_STREAMS" in (second.details() or "")
    assert any(c.HasField("stats") for c in chunks)
    # the slot is free again once the first stream ended
    _, stats, _ = collect(
        limited.inference.Generate(chat("smollm2", "hi", max_tokens=2), timeout=120)
    )
    assert stats.completion_tokens >= 1


_ABS_PATH = re.compile(r"(?<![\w.:/-])/[\w.\-/]+")


def test_errors_carry_no_paths_outside_the_store(limited: Daemon, tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-model.gguf"
    garbage.write_bytes(b"GGUF" + os.urandom(4000))
    models = limited.models
    calls = [
        lambda: models.Show(pb.ModelRef(model="../../../etc/passwd"), timeout=30),
        lambda: list(models.Pull(pb.PullRequest(source=str(garbage)), timeout=60)),
        lambda: list(models.Pull(pb.PullRequest(source="/etc/shadow"), timeout=60)),
        lambda: list(models.Pull(pb.PullRequest(source="file:///etc/passwd"), timeout=60)),
        lambda: limited.inference.Generate(chat("nosuch", "hi"), timeout=30),
    ]
    store = str(limited.root / "data")
    for call in calls:
        err = error_of(call)
        details = err.details() or ""
        assert "Traceback" not in details
        for path in _ABS_PATH.findall(details):
            assert path.startswith(store) or path in (str(garbage), "/etc/shadow"), details
    health = pbg.SystemStub(limited.channel).Version(pb.VersionRequest(), timeout=10)
    assert health.api == "edged.v1"


def _connect_as_nobody(path: Path) -> int:
    """1: refused (EACCES), 0: connected, 2: another error."""
    pid = os.fork()
    if pid == 0:  # child: become nobody, try the socket
        code = 3
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(str(path))
                code = 0
            except PermissionError:
                code = 1
            except OSError:
                code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_connect() -> None:
    # A world-traversable parent, so only edged's own modes stand in the way.
    base = Path(tempfile.mkdtemp(prefix="edged-access-"))
    try:
        os.chmod(base, 0o755)
        d = start_daemon(base)
        try:
            assert _connect_as_nobody(d.socket) == 1  # the 0700 runtime dir stops it
            os.chmod(d.socket.parent, 0o755)  # someone loosens the dir...
            assert _connect_as_nobody(d.socket) == 1  # ...the 0600 socket still stops it
            v = pbg.SystemStub(d.channel).Version(pb.VersionRequest(), timeout=10)
            assert v.api == "edged.v1"  # its owner still gets in
        finally:
            d.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_extra_streams_on_one_connection_all_get_resource_exhausted(limited: Daemon) -> None:
    """150 streams on one HTTP/2 connection: the one EDGED_MAX_STREAMS admits runs,
    every other gets the documented RESOURCE_EXHAUSTED naming the limit, none the
    transport's own refusal (UNAVAILABLE "Stream removed", HTTP/2's 128 streams)."""
    import asyncio

    async def run() -> list[grpc.StatusCode]:
        async with grpc.aio.insecure_channel(f"unix:{limited.socket}") as channel:
            stub = pbg.InferenceStub(channel)
            req = chat(
                "smollm2", "Write a long story about a lighthouse.", max_tokens=64, temperature=0.0
            )

            async def one() -> grpc.StatusCode:
                try:
                    async for _ in stub.Generate(req, timeout=300):
                        pass
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == C.RESOURCE_EXHAUSTED:
                        assert "EDGED_MAX_STREAMS" in (exc.details() or "")
                    return exc.code()
                return C.OK

            return list(await asyncio.gather(*(one() for _ in range(150))))

    codes = asyncio.run(run())
    assert C.UNAVAILABLE not in codes
    assert set(codes) <= {C.OK, C.RESOURCE_EXHAUSTED}
    assert codes.count(C.OK) >= 1 and codes.count(C.RESOURCE_EXHAUSTED) >= 100


def test_http_door_applies_the_same_limits(limited: Daemon) -> None:
    """The limits answer the same on HTTP: 413 for size, 400 for max_tokens, 429
    with Retry-After for sessions and streams."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(limited.http_url)

    def post(path: str, body: object) -> tuple[int, dict[str, str], dict[str, object]]:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=120)
        conn.request(
            "POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        r = conn.getresponse()
        out = r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(r.read())
        conn.close()
        return out

    def ask(text: str, **extra: object) -> dict[str, object]:
        return {"model": "smollm2", "messages": [{"role": "user", "content": text}], **extra}

    status, _, body = post("/v1/chat/completions", ask("x" * (2 << 20)))
    assert status == 413  # over EDGED_MAX_MESSAGE_MB
    status, _, body = post("/v1/chat/completions", ask("y" * 30000))
    assert status == 413 and "EDGED_MAX_PROMPT_BYTES" in str(body)
    status, _, body = post("/v1/chat/completions", ask("hi", max_tokens=65))
    assert status == 400 and "EDGED_MAX_TOKENS" in str(body)
    # streams: one running generation holds the only slot
    first = limited.inference.Generate(
        chat("smollm2", "Write a long story about a dolphin.", max_tokens=64, temperature=0.0),
        timeout=120,
    )
    next(iter(first))
    status, headers, body = post("/v1/chat/completions", ask("hi", max_tokens=2))
    first.cancel()
    assert status == 429 and headers.get("retry-after") == "1"
    assert "EDGED_MAX_STREAMS" in str(body)
