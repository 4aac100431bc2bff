"""connect(): unix socket, TCP with a bearer token, autostart."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from edged.daemon import client as client_mod
from edged.daemon import config
from edged.daemon.cli.main import main
from edged.daemon.client import DaemonNotRunning, connect, daemon_command
from edged.v1 import edged_pb2 as pb

from .conftest import FakeDaemon, RequireToken, serve_fake


def test_connect_unix_socket(fake: FakeDaemon) -> None:
    with connect(autostart=False) as client:
        assert client.target == f"unix://{fake.root / 'run' / 'edged.sock'}"
        assert client.is_serving()
        assert client.system.Version(pb.VersionRequest()).version == "9.9.9"
    # no token is sent over the unix socket
    assert "authorization" not in fake.calls[-1].metadata


def test_no_autostart_without_daemon(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-autostart", "list"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "edged: no daemon is running (start one with `edged serve`)\n"
    with pytest.raises(DaemonNotRunning):
        connect(autostart=False)


@pytest.fixture
def tcp_fake(root: Path) -> Any:
    token = root / "token"
    token.write_text("s3cret\n")
    daemon = serve_fake("127.0.0.1:0", root, interceptors=(RequireToken("s3cret"),))
    yield daemon
    daemon.stop()


def test_bearer_token_on_tcp(tcp_fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    token = str(tcp_fake.root / "token")
    assert main(["--tcp", tcp_fake.address, "--token-file", token, "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["name"] == "smollm2"
    (call,) = [c for c in tcp_fake.calls if c.method == "List"]
    assert call.metadata["authorization"] == "Bearer s3cret"


def test_tcp_from_environment_and_token_reread_per_call(
    tcp_fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGED_TCP", tcp_fake.address)  # EDGED_TOKEN_FILE is set by `root`
    assert main(["run", "m", "hi"]) == 0
    assert capsys.readouterr().out == "Hello world\n"
    with connect(tcp=tcp_fake.address) as client:
        (tcp_fake.root / "token").write_text("rotated")
        with pytest.raises(grpc.RpcError) as info:
            client.models.List(pb.ListModelsRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        (tcp_fake.root / "token").write_text("s3cret")
        assert client.models.List(pb.ListModelsRequest()).models


def test_missing_token_file_is_a_clear_error(
    tcp_fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tcp_fake.root / "nope"
    assert main(["--tcp", tcp_fake.address, "--token-file", str(missing), "ps"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"edged: cannot read the token file {missing}")
    assert err.count("\n") == 1


class FakeProc:
    def __init__(self, code: int | None = None) -> None:
        self.code = code

    def poll(self) -> int | None:
        return self.code


def test_autostart_spawns_the_daemon_and_waits(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[FakeDaemon] = []
    spawned: list[tuple[list[str], Path]] = []

    def spawn(cmd: list[str], log_file: Path) -> FakeProc:
        spawned.append((cmd, log_file))
        # the "daemon" comes up a little later, as a real one would
        timer = threading.Timer(
            0.3, lambda: started.append(serve_fake(f"unix://{root / 'run' / 'edged.sock'}", root))
        )
        timer.start()
        return FakeProc()

    monkeypatch.setattr(client_mod, "_spawn_daemon", spawn)
    try:
        assert main(["list", "--json"]) == 0
    finally:
        for daemon in started:
            daemon.stop()
    out, err = capsys.readouterr()
    assert json.loads(out)["models"][0]["tag"] == "135m"
    assert err == "edged: starting the daemon...\n"
    ((cmd, log_file),) = spawned
    assert cmd[:4] == [sys.executable, "-m", "edged.daemon.cli.main", "serve"]
    assert log_file == root / "log" / "serve.out"


def test_autostart_reports_a_daemon_that_exits(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(client_mod, "_spawn_daemon", lambda cmd, log: FakeProc(3))
    assert main(["ps"]) == 1
    err = capsys.readouterr().err
    log = root / "log" / "serve.out"
    assert err == (
        f"edged: starting the daemon...\nedged: the daemon exited with status 3; see {log}\n"
    )


def test_autostart_times_out_naming_the_log(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(client_mod, "_spawn_daemon", lambda cmd, log: FakeProc())
    with pytest.raises(
        client_mod.DaemonStartFailed, match=r"did not become ready within 0\.5 s; see .*serve\.out"
    ):
        connect(timeout_s=0.5)


def test_waits_for_a_daemon_that_is_starting(fake: FakeDaemon) -> None:
    fake.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    timer = threading.Timer(0.3, fake.health.set, ("", health_pb2.HealthCheckResponse.SERVING))
    timer.start()
    with connect(autostart=False, timeout_s=10) as client:
        assert client.is_serving()


def test_spawn_daemon_detaches_and_logs(root: Path) -> None:
    log = root / "log" / "serve.out"
    proc = client_mod._spawn_daemon([sys.executable, "-c", "print('hello from serve')"], log)
    assert proc.wait(timeout=30) == 0
    assert log.read_text() == "hello from serve\n"


def test_daemon_command_names_every_path(root: Path) -> None:
    paths = config.load_paths()
    cmd = daemon_command(paths, "127.0.0.1:7777")
    assert cmd[4:] == [
        "--data-dir", str(root / "data"), "--cache-dir", str(root / "cache"),
        "--log-dir", str(root / "log"), "--runtime-dir", str(root / "run"),
        "--socket", str(root / "run" / "edged.sock"), "--token-file", str(root / "token"),
        "--tcp", "127.0.0.1:7777",
    ]  # fmt: skip
