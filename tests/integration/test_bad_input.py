"""Bad input gets a clear status, the daemon keeps serving, the registry is unchanged."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import grpc
import pytest

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon
from tests.integration.helpers import chat, collect

pytestmark = pytest.mark.model

C = grpc.StatusCode


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes() if p.stat().st_size < 1 << 20 else str(p.stat()).encode())
    return h.hexdigest()


def status_of(fn, *args) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        result = fn(*args)
        if hasattr(result, "__iter__") and not isinstance(result, (str, bytes)):
            list(result)
    return err.value.code(), err.value.details()


@pytest.mark.parametrize(
    ("sampling", "word"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"repeat_penalty": math.inf}, "repeat_penalty"),
        ({"max_tokens": 10_000_000}, "max_tokens"),
        ({"top_k": -3}, "top_k"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_bad_sampling_values(daemon: Daemon, sampling: dict[str, object], word: str) -> None:
    code, msg = status_of(daemon.inference.Generate, chat("smollm2", "hi", **sampling))
    assert code == C.INVALID_ARGUMENT and word in msg


def test_bad_requests(daemon: Daemon) -> None:
    cases = [
        (chat("nosuchmodel", "hi"), C.NOT_FOUND, "pull"),
        (chat("../../etc/passwd", "hi"), C.INVALID_ARGUMENT, ""),
        (chat("smollm2", "   "), C.INVALID_ARGUMENT, "empty"),
        (pb.GenerateRequest(model="smollm2", prompt=""), C.INVALID_ARGUMENT, ""),
        (pb.GenerateRequest(model="smollm2"), C.INVALID_ARGUMENT, "prompt, chat or infill"),
        (pb.GenerateRequest(prompt="hi"), C.INVALID_ARGUMENT, "model"),
        (chat("smollm2", "word " * 3000), C.RESOURCE_EXHAUSTED, "context"),
    ]
    for req, code, word in cases:
        got, msg = status_of(daemon.inference.Generate, req)
        assert got == code, (req, got, msg)
        assert word in msg
        assert "/tmp" not in msg and "/root" not in msg and "/home" not in msg
    bad_role = pb.GenerateRequest(
        model="smollm2",
        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="wizard", content="hi")]),
    )
    assert status_of(daemon.inference.Generate, bad_role)[0] == C.INVALID_ARGUMENT
    # still serving
    _, stats, _ = collect(
        daemon.inference.Generate(chat("smollm2", "hi", max_tokens=4), timeout=60)
    )
    assert stats.completion_tokens > 0


def test_bad_sessions(daemon: Daemon) -> None:
    assert (
        status_of(daemon.sessions.Get, pb.SessionRef(session_id="s_" + "0" * 24))[0] == C.NOT_FOUND
    )
    assert status_of(daemon.sessions.Get, pb.SessionRef(session_id="../x"))[0] == C.INVALID_ARGUMENT
    code, _ = status_of(daemon.sessions.Create, pb.CreateSessionRequest(model="nope"))
    assert code == C.NOT_FOUND


def test_bad_model_files_leave_the_registry_unchanged(daemon: Daemon, tmp_path: Path) -> None:
    data = daemon.root / "data"
    before = tree_digest(data)
    real = next((data / "models" / "blobs").iterdir()).read_bytes()[: 1 << 20]
    files = {
        "random.gguf": bytes(range(256)) * 64,
        "magic.gguf": b"GGUF",
        "truncated.gguf": real,  # a real header cut at 1 MiB
        "empty.gguf": b"",
    }
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        code, msg = status_of(daemon.models.Pull, pb.PullRequest(source=str(path)))
        assert code in (C.FAILED_PRECONDITION, C.INVALID_ARGUMENT), (name, code, msg)
        assert str(tmp_path) not in msg or name in msg
        assert tree_digest(data) == before, f"{name} changed the registry"
    for source, code in [
        ("https://127.0.0.1:1/x.gguf", None),
        (str(tmp_path / "missing.gguf"), C.NOT_FOUND),
        ("relative/path.gguf", C.INVALID_ARGUMENT),
    ]:
        got, _ = status_of(daemon.models.Pull, pb.PullRequest(source=source))
        assert code is None or got == code
    got, msg = status_of(
        daemon.models.Pull,
        pb.PullRequest(source=str(tmp_path / "random.gguf"), digest="sha256:abc"),
    )
    assert got == C.INVALID_ARGUMENT and "digest" in msg
    blob = next((data / "models" / "blobs").iterdir())
    got, msg = status_of(
        daemon.models.Pull,
        pb.PullRequest(source=str(blob), name="copy", digest="sha256:" + "0" * 64),
    )
    assert got == C.FAILED_PRECONDITION and "digest" in msg.lower()
    assert status_of(daemon.models.Show, pb.ModelRef(model="a/../../b"))[0] == C.INVALID_ARGUMENT
    assert status_of(daemon.models.Delete, pb.ModelRef(model="nosuch"))[0] == C.NOT_FOUND
    assert tree_digest(data) == before
