"""Model lifecycle end to end: a real daemon, the real SmolLM2, `edged ps/stop`.

One daemon serves the module (EDGED_KEEP_ALIVE=1 so idle expiry is quick to
see); tests that need the model to stay put between their own requests ask
for a long keep-alive on each request. The memory-limit refusal needs its own
daemon (EDGED_MEMORY_LIMIT_MB).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon
from tests.integration.helpers import chat, collect

pytestmark = pytest.mark.model

NAME = "smollm2:135m-q4_1"
KEEP = 120.0  # seconds: long enough that nothing expires during one test


@pytest.fixture(scope="module")
def life(tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("life")
    clone_store(smollm2_store, root / "data")
    d = start_daemon(root, EDGED_KEEP_ALIVE="1")
    yield d
    d.stop()


@pytest.fixture
def daemon_clean(life: Daemon) -> Iterator[Daemon]:
    """The module's daemon with nothing loaded and no model settings."""
    life.models.Unload(pb.ModelRef(model="smollm2"), timeout=60)
    life.models.Configure(pb.ConfigureModelRequest(model="smollm2"), timeout=10)
    yield life
    life.models.Unload(pb.ModelRef(model="smollm2"), timeout=60)


def ask(d: Daemon, keep: float | None = KEEP, context: int = 0, text: str = "Hi") -> None:
    req = chat("smollm2", text, temperature=0.0, max_tokens=4)
    if keep is not None:
        req.keep_alive_s = keep
    req.context_length = context
    collect(d.inference.Generate(req, timeout=120))


def loaded(d: Daemon) -> list[pb.LoadedModel]:
    return list(d.models.ListLoaded(pb.ListLoadedRequest(), timeout=30).models)


def edged(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged.daemon.cli.main", "--no-autostart", *args],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ps_fields_context_reuse_and_keep_alive_zero(daemon_clean: Daemon) -> None:
    d = daemon_clean
    session = d.sessions.Create(pb.CreateSessionRequest(model="smollm2", device="cpu"))
    send = pb.SendRequest(session_id=session.id, content="Hello", keep_alive_s=KEEP)
    send.sampling.max_tokens = 4
    collect(d.sessions.Send(send, timeout=120))
    (first,) = loaded(d)
    assert (first.model, first.backend, first.device) == (NAME, "llama.cpp", "cpu")
    weights = 50_000_000  # SmolLM2 Q4_1 is ~98 MB of weights
    mem = first.memory
    assert mem.weights_bytes > weights and mem.kv_bytes > 0
    assert mem.total_bytes == mem.weights_bytes + mem.kv_bytes + mem.overhead_bytes
    assert first.rss_bytes > weights
    assert first.sessions >= 1 and first.context_length == 2048  # EDGED_CONTEXT
    assert first.keep_alive_s == KEEP and not first.pinned and first.gpu_layers == 0
    assert KEEP - 30 < first.expires_unix_ms / 1000 - time.time() <= KEEP
    out = edged(d, "ps")
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert "MEMORY (EST / RSS)" in header and "SESSIONS" in header and "UNTIL" in header
    assert row.startswith(NAME) and "llama.cpp" in row and "in 1 minute" in row
    stored = json.loads((d.root / "data" / "sessions" / f"{session.id}.json").read_text())
    assert stored["device"] == "cpu"  # later turns ask for the device it was created with
    d.sessions.Delete(pb.SessionRef(session_id=session.id))

    ask(d, context=1024)  # less context than loaded: the same worker
    (same,) = loaded(d)
    assert same.pid == first.pid and same.context_length == 2048
    ask(d, context=4096)  # more: reloaded
    (bigger,) = loaded(d)
    assert bigger.pid != first.pid and bigger.context_length == 4096
    assert bigger.memory.kv_bytes == 2 * first.memory.kv_bytes
    ask(d)  # the default fits in the 4096 worker
    assert loaded(d)[0].pid == bigger.pid
    ask(d, keep=0)
    assert loaded(d) == []  # unloaded as soon as the request ended


def test_pinned_load_survives_idle_timeout_then_expires(daemon_clean: Daemon) -> None:
    d = daemon_clean
    m = d.models.Load(pb.LoadRequest(model="smollm2", pin=True), timeout=120)
    assert m.pinned and m.model == NAME and m.pid and m.expires_unix_ms == 0
    ask(d, keep=None)  # a request with the default keep-alive does not unpin it
    time.sleep(3)  # three default keep-alives (EDGED_KEEP_ALIVE=1)
    (now,) = loaded(d)
    assert now.pid == m.pid and now.pinned
    assert "pinned" in edged(d, "ps").stdout
    unpinned = d.models.Load(pb.LoadRequest(model="smollm2", pin=False), timeout=60)
    assert unpinned.pid == m.pid and not unpinned.pinned
    deadline = time.monotonic() + 15
    while loaded(d) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert loaded(d) == []  # the default keep-alive applied once unpinned
    out = edged(d, "stop", "smollm2")
    assert out.returncode == 0 and out.stdout == f"{NAME} is not loaded\n", out.stderr
    out = edged(d, "stop", "no-such-model")
    assert out.returncode == 1 and "not found" in out.stderr


def test_model_settings_damaged_file_pin_and_stop(daemon_clean: Daemon) -> None:
    d = daemon_clean
    path = d.root / "data" / "models" / "settings.json"
    path.write_text("{ not json")
    assert d.models.Show(pb.ModelRef(model="smollm2")).settings == pb.ModelSettings()
    s = pb.ModelSettings(pinned=True, context_length=1024, keep_alive_s=-1)
    assert d.models.Configure(pb.ConfigureModelRequest(model="smollm2", settings=s)) == s
    assert (path.parent / "settings.json.bad").read_text() == "{ not json"
    assert json.loads(path.read_text())["models"][NAME] == {
        "context_length": 1024,
        "keep_alive_s": -1.0,
        "pinned": True,
    }
    assert d.models.Show(pb.ModelRef(model="smollm2")).settings == s
    ask(d, keep=None)
    (m,) = loaded(d)
    assert m.pinned and m.keep_alive_s < 0 and m.context_length == 1024
    out = edged(d, "config", "smollm2", "--keep-alive", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1:] == [
        "  keep-alive  0 seconds",
        "  pinned      yes",
        "  context     1024",
    ]
    assert loaded(d)[0].pid == m.pid  # pinned beats keep-alive 0
    out = edged(d, "stop", "smollm2")  # stop unloads even a pinned model
    assert out.returncode == 0 and out.stdout == f"stopped {NAME}\n", out.stderr
    assert loaded(d) == []
    out = edged(d, "config", "smollm2", "--reset")
    assert "no settings" in out.stdout
    assert d.models.Show(pb.ModelRef(model="smollm2")).settings == pb.ModelSettings()


def test_bad_lifecycle_values_are_invalid_argument(daemon_clean: Daemon) -> None:
    d = daemon_clean
    for field, value in (("keep_alive_s", float("nan")), ("context_length", 12)):
        req = chat("smollm2", "Hi")
        setattr(req, field, value)
        with pytest.raises(grpc.RpcError) as info:
            collect(d.inference.Generate(req, timeout=60))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        d.models.Configure(
            pb.ConfigureModelRequest(
                model="smollm2", settings=pb.ModelSettings(backend="no-such-backend")
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_memory_limit_refuses_with_resource_exhausted(tmp_path: Path, smollm2_store: Path) -> None:
    clone_store(smollm2_store, tmp_path / "data")
    d = start_daemon(tmp_path, EDGED_MEMORY_LIMIT_MB="64")
    try:
        with pytest.raises(grpc.RpcError) as info:
            ask(d)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        text = info.value.details()
        assert f"not enough memory to load {NAME} on cpu: it needs about" in text
        assert "EDGED_MEMORY_LIMIT_MB allows 67 MB for all models" in text
        assert "Loaded: nothing else" in text
        with pytest.raises(grpc.RpcError) as info:
            d.models.Load(pb.LoadRequest(model="smollm2"), timeout=60)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert loaded(d) == []
    finally:
        d.stop()
