"""Transport security: socket permissions, loopback TCP with a bearer token."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from edged.daemon.tokens import TokenStore
from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg
from harness.daemon import start_daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_socket_and_dir_permissions(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    try:
        assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(d.socket.parent).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(d.socket).st_mode)
        v = pbg.SystemStub(d.channel).Version(pb.VersionRequest(), timeout=10)
        assert v.api == "edged.v1"
    finally:
        d.stop()


def test_loose_runtime_dir_is_tightened(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    os.chmod(run, 0o755)
    d = start_daemon(tmp_path)
    try:
        assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
    finally:
        d.stop()


def test_second_daemon_on_same_socket_refuses(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "edged.daemon"],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "already listening" in second.stderr
        assert d.proc.poll() is None
        assert pbg.SystemStub(d.channel).Version(pb.VersionRequest(), timeout=10).version
    finally:
        d.stop()


def test_tcp_requires_the_bearer_token(tmp_path: Path) -> None:
    port = free_port()
    d = start_daemon(tmp_path, EDGED_TCP=f"127.0.0.1:{port}")
    try:
        token_file = tmp_path / "config" / "token"
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        token = token_file.read_text().strip()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pbg.SystemStub(channel)
        for md in [(), (("authorization", "Bearer wrong"),), (("authorization", token),)]:
            with pytest.raises(grpc.RpcError) as err:
                stub.Version(pb.VersionRequest(), metadata=md, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            list(pbg.ModelsStub(channel).Pull(pb.PullRequest(source="smollm2"), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.Version(
            pb.VersionRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=10
        )
        assert ok.api == "edged.v1"
        channel.close()
    finally:
        d.stop()


def test_tcp_scoped_tokens(tmp_path: Path) -> None:
    """Scoped tokens (edged token create) on TCP: each may call what its scopes
    allow; one created or revoked while the daemon runs counts at once."""
    port = free_port()
    tokens = TokenStore(tmp_path / "config" / "tokens.json")
    reader = tokens.create("reader", ["read"])
    d = start_daemon(tmp_path, EDGED_TCP=f"127.0.0.1:{port}", EDGED_TOKENS_FILE=str(tokens.path))
    try:
        legacy = (tmp_path / "config" / "token").read_text().strip()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        system, models = pbg.SystemStub(channel), pbg.ModelsStub(channel)
        inference = pbg.InferenceStub(channel)

        def auth(token: str) -> tuple[tuple[str, str]]:
            return (("authorization", f"Bearer {token}"),)

        # legacy token: everything, as before
        assert system.Version(pb.VersionRequest(), metadata=auth(legacy), timeout=10).api
        # a read token reads (also as x-api-key) ...
        assert system.Version(pb.VersionRequest(), metadata=auth(reader), timeout=10).api
        models.List(pb.ListModelsRequest(), metadata=(("x-api-key", reader),), timeout=10)
        # ... and may not pull or generate
        with pytest.raises(grpc.RpcError) as err:
            list(models.Pull(pb.PullRequest(source="smollm2"), metadata=auth(reader), timeout=10))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'models' scope" in (err.value.details() or "")
        assert "'reader'" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            request = pb.GenerateRequest(model="smollm2", prompt="hi")
            list(inference.Generate(request, metadata=auth(reader), timeout=10))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'generate' scope" in (err.value.details() or "")

        # created while the daemon runs: accepted at once, and past auth
        manager = TokenStore(tokens.path).create("manager", ["models"])
        with pytest.raises(grpc.RpcError) as err:
            models.Delete(pb.ModelRef(model="absent"), metadata=auth(manager), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # the service answered
        # revoked while it runs: refused at once
        assert TokenStore(tokens.path).revoke("reader")
        with pytest.raises(grpc.RpcError) as err:
            system.Version(pb.VersionRequest(), metadata=auth(reader), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # the unix socket needs no token
        assert pbg.SystemStub(d.channel).Version(pb.VersionRequest(), timeout=10).api
        channel.close()
    finally:
        d.stop()


def test_tcp_refuses_non_loopback_and_loose_token(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="loopback"):
        start_daemon(tmp_path / "a", EDGED_TCP="0.0.0.0:7777")
    tok = tmp_path / "b" / "config" / "token"
    tok.parent.mkdir(parents=True)
    tok.write_text("x" * 40)
    os.chmod(tok, 0o644)
    with pytest.raises(RuntimeError, match="chmod 600"):
        start_daemon(tmp_path / "b", EDGED_TCP=f"127.0.0.1:{free_port()}")
