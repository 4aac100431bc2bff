"""A real edged daemon in a child process, on a private unix socket and data dir.

What the tests (tests/conftest.py), the benchmarks (bench/) and the scripts
(scripts/) share: start a daemon with its own EDGED_* paths under a folder,
wait until its health check says SERVING, talk to it through generated gRPC
stubs, and seed its store by hard-linking another daemon's data dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    root: Path
    socket: Path
    channel: grpc.Channel

    @property
    def inference(self) -> pbg.InferenceStub:
        return pbg.InferenceStub(self.channel)

    @property
    def sessions(self) -> pbg.SessionsStub:
        return pbg.SessionsStub(self.channel)

    @property
    def models(self) -> pbg.ModelsStub:
        return pbg.ModelsStub(self.channel)

    @property
    def system(self) -> pbg.SystemStub:
        return pbg.SystemStub(self.channel)

    @property
    def http_url(self) -> str:
        """The daemon's HTTP API ("" when EDGED_HTTP is off)."""
        version = self.system.Version(pb.VersionRequest(), timeout=10)
        return str(version.http_url)

    def log(self) -> str:
        path = self.root / "log" / "edged.log"
        return path.read_text() if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def daemon_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    env.update(
        EDGED_DATA_DIR=str(root / "data"),
        EDGED_CACHE_DIR=str(root / "cache"),
        EDGED_LOG_DIR=str(root / "log"),
        EDGED_RUNTIME_DIR=str(root / "run"),
        EDGED_TOKEN_FILE=str(root / "config" / "token"),
        EDGED_TOKENS_FILE=str(root / "config" / "tokens.json"),
        EDGED_HTTP="127.0.0.1:0",  # a free port each (Daemon.http_url says which)
        EDGED_THREADS=env.get("EDGED_TEST_THREADS", "2"),
        EDGED_CONTEXT="2048",
    )
    env.update(extra)
    return env


def start_daemon(root: Path, **extra: str) -> Daemon:
    env = daemon_env(root, **extra)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "daemon.out", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edged.daemon"], env=env, stdout=out, stderr=out
        )
    sock = root / "run" / "edged.sock"
    channel = grpc.insecure_channel(f"unix:{sock}")
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {(root / 'daemon.out').read_text()[-2000:]}")
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                break
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("daemon did not become healthy in 60 s")
        time.sleep(0.1)
    return Daemon(proc=proc, env=env, root=root, socket=sock, channel=channel)


def clone_store(src: Path, dst: Path) -> None:
    """Hard-link a seeded data dir into a fresh one (cheap, and blobs are immutable)."""
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True, mode=0o700)
        elif path.is_file() and "sessions" not in path.parts:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.link(path, target)
