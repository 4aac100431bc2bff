"""A small typed client for the edged daemon.

``connect()`` returns a :class:`Client` whose attributes are the generated
gRPC stubs (``inference``, ``sessions``, ``models``, ``system``, ``health``),
typed here with Protocols so callers get checked request/response types.

Transport: the unix socket ``unix://<paths.socket>`` by default, or loopback
TCP (``tcp="127.0.0.1:PORT"``), where every call carries
``authorization: Bearer <token>`` read from the token file at call time.

When nothing answers and ``autostart`` is on, ``connect()`` spawns
``python -m edged.daemon.cli.main serve`` detached (output appended to
``<log_dir>/serve.out``) and waits until the daemon's health check says
SERVING.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edged.common import errors
from edged.daemon import config
from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc

__all__ = [
    "Client",
    "DaemonNotRunning",
    "DaemonStartFailed",
    "TokenUnavailable",
    "connect",
    "daemon_command",
]

SERVE_LOG = "serve.out"

_Req = TypeVar("_Req", contravariant=True)
_Resp = TypeVar("_Resp", covariant=True)
_Metadata = Sequence[tuple[str, str]]

# Short reconnect backoff: autostart polls a socket that appears within seconds.
_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


# ---------------------------------------------------------------- errors


class DaemonNotRunning(errors.Unavailable):
    """Nothing answers at the daemon's address and autostart is off."""


class DaemonStartFailed(errors.Unavailable):
    """Autostart spawned the daemon but it did not become ready."""


class TokenUnavailable(errors.Unauthenticated):
    """The bearer token for TCP cannot be read."""


# ---------------------------------------------------------------- typed stubs


class ResponseStream(Protocol[_Resp]):
    """A server-streaming call: iterate it; ``cancel()`` stops it."""

    def __iter__(self) -> Iterator[_Resp]: ...

    def __next__(self) -> _Resp: ...

    def cancel(self) -> bool: ...


class UnaryMethod(Protocol[_Req, _Resp]):
    def __call__(
        self,
        request: _Req,
        timeout: float | None = None,
        metadata: _Metadata | None = None,
        wait_for_ready: bool | None = None,
    ) -> _Resp: ...


class StreamMethod(Protocol[_Req, _Resp]):
    def __call__(
        self,
        request: _Req,
        timeout: float | None = None,
        metadata: _Metadata | None = None,
        wait_for_ready: bool | None = None,
    ) -> ResponseStream[_Resp]: ...


class InferenceStub(Protocol):
    Generate: StreamMethod[pb.GenerateRequest, pb.GenerateChunk]
    Embed: UnaryMethod[pb.EmbedRequest, pb.EmbedResponse]


class SessionsStub(Protocol):
    Create: UnaryMethod[pb.CreateSessionRequest, pb.Session]
    Send: StreamMethod[pb.SendRequest, pb.GenerateChunk]
    List: UnaryMethod[pb.ListSessionsRequest, pb.ListSessionsResponse]
    Get: UnaryMethod[pb.SessionRef, pb.GetSessionResponse]
    Delete: UnaryMethod[pb.SessionRef, pb.DeleteSessionResponse]


class ModelsStub(Protocol):
    Pull: StreamMethod[pb.PullRequest, pb.PullProgress]
    List: UnaryMethod[pb.ListModelsRequest, pb.ListModelsResponse]
    Show: UnaryMethod[pb.ModelRef, pb.ShowModelResponse]
    Delete: UnaryMethod[pb.ModelRef, pb.DeleteModelResponse]
    ListLoaded: UnaryMethod[pb.ListLoadedRequest, pb.ListLoadedResponse]
    Unload: UnaryMethod[pb.ModelRef, pb.UnloadResponse]
    Load: UnaryMethod[pb.LoadRequest, pb.LoadedModel]
    Configure: UnaryMethod[pb.ConfigureModelRequest, pb.ModelSettings]
    Convert: StreamMethod[pb.ConvertRequest, pb.PullProgress]
    Tokenize: UnaryMethod[pb.TokenizeRequest, pb.TokenizeResponse]
    Detokenize: UnaryMethod[pb.DetokenizeRequest, pb.DetokenizeResponse]
    Copy: UnaryMethod[pb.CopyModelRequest, pb.ModelInfo]
    Create: UnaryMethod[pb.CreateModelRequest, pb.CreateModelResponse]


class SystemStub(Protocol):
    Version: UnaryMethod[pb.VersionRequest, pb.VersionResponse]
    Hardware: UnaryMethod[pb.HardwareRequest, pb.HardwareResponse]


class HealthStub(Protocol):
    # grpc_health ships no type information.
    Check: UnaryMethod[Any, Any]


# ---------------------------------------------------------------- auth


class _CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, base: Any, metadata: list[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


class _BearerAuth(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``authorization: Bearer <token>``, reading the token file per call."""

    def __init__(self, token_file: Path) -> None:
        self._token_file = token_file

    def _token(self) -> str:
        try:
            token = self._token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TokenUnavailable(
                f"cannot read the token file {self._token_file}: {exc.strerror or exc}"
            ) from exc
        if not token:
            raise TokenUnavailable(f"the token file {self._token_file} is empty")
        return token

    def _details(self, details: Any) -> _CallDetails:
        metadata = [(k, v) for k, v in (details.metadata or ()) if k.lower() != "authorization"]
        metadata.append(("authorization", f"Bearer {self._token()}"))
        return _CallDetails(details, metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


# ---------------------------------------------------------------- client


class Client:
    """A channel to the daemon with one typed stub per service."""

    def __init__(self, channel: grpc.Channel, target: str) -> None:
        self.channel = channel
        self.target = target
        self.inference: InferenceStub = edged_pb2_grpc.InferenceStub(channel)
        self.sessions: SessionsStub = edged_pb2_grpc.SessionsStub(channel)
        self.models: ModelsStub = edged_pb2_grpc.ModelsStub(channel)
        self.system: SystemStub = edged_pb2_grpc.SystemStub(channel)
        self.health: HealthStub = health_pb2_grpc.HealthStub(channel)

    def is_serving(self, timeout_s: float = 5.0) -> bool:
        """True when ``grpc.health.v1.Health/Check`` (service "") says SERVING."""
        reply = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open(target: str, token_file: Path | None) -> grpc.Channel:
    channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
    if token_file is not None:
        channel = grpc.intercept_channel(channel, _BearerAuth(token_file))
    return channel


def daemon_command(paths: config.Paths, tcp: str | None = None) -> list[str]:
    """The command autostart runs: ``serve`` on exactly the paths we connect to."""
    cmd = [sys.executable, "-m", "edged.daemon.cli.main", "serve"]
    cmd += ["--data-dir", str(paths.data_dir), "--cache-dir", str(paths.cache_dir)]
    cmd += ["--log-dir", str(paths.log_dir), "--runtime-dir", str(paths.runtime_dir)]
    cmd += ["--socket", str(paths.socket), "--token-file", str(paths.token_file)]
    if tcp is not None:
        cmd += ["--tcp", tcp]
    return cmd


def _spawn_daemon(cmd: list[str], log_file: Path) -> subprocess.Popen[bytes]:
    """Start the daemon detached from this terminal; the environment is inherited."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    detach: dict[str, Any] = {"start_new_session": True}
    if sys.platform == "win32":
        flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
        detach = {"creationflags": flags}
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            close_fds=True,
            **detach,
        )


def _probe(channel: grpc.Channel, timeout_s: float, wait: bool = False) -> str:
    """'serving', 'starting' (answers, not SERVING yet) or 'absent'.

    Uses a channel without auth: a daemon that answers UNAUTHENTICATED is
    there all the same; the token is checked by the caller's first real call.
    """
    health: HealthStub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = health.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout_s, wait_for_ready=wait
        )
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return "serving"
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return "absent"
        raise errors.Unavailable(
            f"something answers at the daemon's address but its health check "
            f"failed: {exc.details() or code.name}"
        ) from exc
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return "serving"
    return "starting"


def _wait_serving(
    channel: grpc.Channel,
    deadline: float,
    alive: Callable[[], int | None] = lambda: None,
) -> bool:
    """Poll health until SERVING (True) or the deadline (False).

    ``alive`` returns the spawned process's exit code once it has exited.
    """
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if alive() is not None:
            return False
        if _probe(channel, min(0.25, remaining), wait=True) == "serving":
            return True
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def connect(
    *,
    paths: config.Paths | None = None,
    tcp: str | None = None,
    token_file: Path | None = None,
    autostart: bool = True,
    timeout_s: float = 60,
) -> Client:
    """Connect to the daemon, starting it first when needed and allowed.

    Raises :class:`DaemonNotRunning` (nothing answers, autostart off) or
    :class:`DaemonStartFailed` (autostart did not reach SERVING in time).
    """
    paths = config.load_paths() if paths is None else paths
    if tcp is None:
        target = f"unix://{paths.socket}"
        auth_file = None
    else:
        target = tcp
        auth_file = token_file if token_file is not None else paths.token_file
    deadline = time.monotonic() + timeout_s
    probe = _open(target, None)
    try:
        state = _probe(probe, min(3.0, timeout_s))
        if state == "absent" and not autostart:
            raise DaemonNotRunning("no daemon is running (start one with `edged serve`)")
        if state == "absent":
            log_file = paths.log_dir / SERVE_LOG
            sys.stderr.write("edged: starting the daemon...\n")
            sys.stderr.flush()
            proc = _spawn_daemon(daemon_command(paths, tcp), log_file)
            if not _wait_serving(probe, deadline, proc.poll):
                code = proc.poll()
                how = (
                    f"exited with status {code}"
                    if code is not None
                    else f"did not become ready within {timeout_s:g} s"
                )
                raise DaemonStartFailed(f"the daemon {how}; see {log_file}")
        elif state == "starting" and not _wait_serving(probe, deadline):
            raise DaemonStartFailed(
                f"the daemon at {target} did not report SERVING within {timeout_s:g} s"
            )
    finally:
        probe.close()
    return Client(_open(target, auth_file), target)
