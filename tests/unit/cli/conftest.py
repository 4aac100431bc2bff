"""A fake in-process edged daemon for CLI tests.

``fake`` serves canned replies on a unix socket in a short temporary
directory (sun_path is limited to ~107 bytes), with EDGED_* pointing there.
Every call is recorded with its request and metadata; ``fake.fail[method]``
makes a method answer with an error status instead.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg

ENV_VARS = (
    "EDGED_DATA_DIR",
    "EDGED_CACHE_DIR",
    "EDGED_LOG_DIR",
    "EDGED_RUNTIME_DIR",
    "EDGED_SOCKET",
    "EDGED_TCP",
    "EDGED_TOKEN_FILE",
    "EDGED_TOKENS_FILE",
    "EDGED_HTTP",
    "EDGED_THREADS",
    "EDGED_CONTEXT",
    "EDGED_KEEP_ALIVE",
    "EDGED_QUEUE_SIZE",
)

STATS = pb.GenerationStats(
    prompt_tokens=12,
    cached_prompt_tokens=4,
    completion_tokens=3,
    time_to_first_token_ms=42.5,
    decode_tokens_per_second=55.25,
    total_ms=100.0,
    finish_reason=pb.FINISH_REASON_STOP,
    backend="llama.cpp",
    device="cpu",
    kv_source="none",
)

MODEL = pb.ModelInfo(
    name="smollm2",
    tag="135m",
    digest="sha256:" + "ab" * 32,
    size_bytes=91_000_000,
    format="gguf",
    architecture="llama",
    quantization="Q4_1",
    parameters=134_515_008,
    context_length=8192,
    modified_unix_ms=int(time.time() * 1000) - 120_000,
    source="catalog:smollm2:135m",
    has_chat_template=True,
)


@dataclass
class Call:
    method: str
    request: Any
    metadata: dict[str, str]


@dataclass
class FakeState:
    calls: list[Call] = field(default_factory=list)
    fail: dict[str, tuple[grpc.StatusCode, str]] = field(default_factory=dict)
    chunks: list[str] = field(default_factory=lambda: ["Hel", "lo", " world"])
    cancelled: threading.Event = field(default_factory=threading.Event)
    sessions: set[str] = field(default_factory=set)
    loaded: bool = True  # ListLoaded reports one model

    def record(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        self.calls.append(Call(method, request, dict(context.invocation_metadata())))
        if method in self.fail:
            code, details = self.fail[method]
            context.abort(code, details)

    def requests(self, method: str) -> list[Any]:
        return [c.request for c in self.calls if c.method == method]

    def reply(self, content: str, context: grpc.ServicerContext) -> Iterator[pb.GenerateChunk]:
        """Canned chunks; the content "slow" streams one chunk, then waits for a cancel."""
        if content == "slow":
            # fires when the RPC ends; in this branch only a cancel ends it early
            context.add_callback(self.cancelled.set)
            yield pb.GenerateChunk(text="partial", tokens=1)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if not context.is_active():
                    self.cancelled.set()
                    return
                time.sleep(0.01)
            return
        for text in self.chunks:
            yield pb.GenerateChunk(text=text, tokens=1)
        yield pb.GenerateChunk(stats=STATS)


class Inference(pbg.InferenceServicer):  # type: ignore[misc]
    def __init__(self, state: FakeState) -> None:
        self.state = state

    def Generate(self, request: pb.GenerateRequest, context: Any) -> Iterator[pb.GenerateChunk]:
        self.state.record("Generate", request, context)
        last = request.chat.messages[-1].content if request.chat.messages else request.prompt
        yield from self.state.reply(last, context)


class Sessions(pbg.SessionsServicer):  # type: ignore[misc]
    def __init__(self, state: FakeState) -> None:
        self.state = state

    def Create(self, request: pb.CreateSessionRequest, context: Any) -> pb.Session:
        self.state.record("Create", request, context)
        sid = uuid.uuid4().hex
        self.state.sessions.add(sid)
        return pb.Session(id=sid, model=request.model, system_prompt=request.system_prompt)

    def Send(self, request: pb.SendRequest, context: Any) -> Iterator[pb.GenerateChunk]:
        self.state.record("Send", request, context)
        if request.session_id not in self.state.sessions:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such session")
        yield from self.state.reply(request.content, context)

    def Delete(self, request: pb.SessionRef, context: Any) -> pb.DeleteSessionResponse:
        self.state.record("Delete", request, context)
        self.state.sessions.discard(request.session_id)
        return pb.DeleteSessionResponse()


class Models(pbg.ModelsServicer):  # type: ignore[misc]
    def __init__(self, state: FakeState) -> None:
        self.state = state

    def Pull(self, request: pb.PullRequest, context: Any) -> Iterator[pb.PullProgress]:
        self.state.record("Pull", request, context)
        yield pb.PullProgress(status="resolving")
        for done in (0, 40_000_000, 91_000_000):
            yield pb.PullProgress(
                status="downloading", completed_bytes=done, total_bytes=91_000_000
            )
        yield pb.PullProgress(status="verifying sha256 digest")
        yield pb.PullProgress(status="success", model=MODEL)

    def List(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        self.state.record("List", request, context)
        return pb.ListModelsResponse(models=[MODEL])

    def Show(self, request: pb.ModelRef, context: Any) -> pb.ShowModelResponse:
        self.state.record("Show", request, context)
        return pb.ShowModelResponse(
            model=MODEL,
            chat_template="{% for m in messages %}{{ m.content }}{% endfor %}",
            metadata={"general.architecture": "llama", "llama.context_length": "8192"},
        )

    def Delete(self, request: pb.ModelRef, context: Any) -> pb.DeleteModelResponse:
        self.state.record("Delete", request, context)
        if request.model == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "model 'missing' not found")
        return pb.DeleteModelResponse()

    def ListLoaded(self, request: pb.ListLoadedRequest, context: Any) -> pb.ListLoadedResponse:
        self.state.record("ListLoaded", request, context)
        loaded = pb.LoadedModel(
            model="smollm2:135m",
            digest=MODEL.digest,
            backend="llama.cpp",
            device="cpu",
            pid=4242,
            rss_bytes=180_000_000,
            context_length=4096,
            active_requests=1,
            memory=pb.MemoryEstimate(total_bytes=250_000_000),
            sessions=2,
            keep_alive_s=300,
        )
        return pb.ListLoadedResponse(models=[loaded] if self.state.loaded else [])

    def Unload(self, request: pb.ModelRef, context: Any) -> pb.UnloadResponse:
        self.state.record("Unload", request, context)
        return pb.UnloadResponse()

    def Load(self, request: pb.LoadRequest, context: Any) -> pb.LoadedModel:
        self.state.record("Load", request, context)
        return pb.LoadedModel(
            model="smollm2:135m",
            backend="llama.cpp",
            device="cpu",
            pid=4242,
            context_length=request.context_length or 4096,
            memory=pb.MemoryEstimate(total_bytes=250_000_000),
            rss_bytes=180_000_000,
            keep_alive_s=request.keep_alive_s if request.HasField("keep_alive_s") else 300,
            expires_unix_ms=int(time.time() * 1000) + 300_500,
            pinned=request.pin,
        )

    def Configure(self, request: pb.ConfigureModelRequest, context: Any) -> pb.ModelSettings:
        self.state.record("Configure", request, context)
        return request.settings


class System(pbg.SystemServicer):  # type: ignore[misc]
    def __init__(self, state: FakeState) -> None:
        self.state = state

    def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        self.state.record("Version", request, context)
        return pb.VersionResponse(
            version="9.9.9", api="edged.v1", http_url="http://127.0.0.1:11435"
        )

    def Hardware(self, request: pb.HardwareRequest, context: Any) -> pb.HardwareResponse:
        self.state.record("Hardware", request, context)
        return pb.HardwareResponse(
            os="linux",
            arch="x86_64",
            cpu="Fake CPU",
            cpu_cores=2,
            cpu_threads=4,
            cpu_features=["avx2", "fma"],
            memory_total_bytes=16_000_000_000,
            memory_available_bytes=8_000_000_000,
            backends=[
                pb.BackendChoice(
                    backend="llama.cpp", device="cpu", available=True, reasons=["avx2 build"]
                ),
                pb.BackendChoice(
                    backend="onnxruntime-genai",
                    device="cpu",
                    available=False,
                    reasons=["onnxruntime-genai is not installed"],
                ),
            ],
        )


class RequireToken(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses every call (health included) without ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        metadata = dict(details.invocation_metadata)
        handler = continuation(details)
        if metadata.get("authorization") == f"Bearer {self.token}" or handler is None:
            return handler

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or missing bearer token")

        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return make(
            deny,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass
class FakeDaemon:
    state: FakeState
    server: grpc.Server
    health: health.HealthServicer
    address: str
    root: Path

    def __getattr__(self, name: str) -> Any:
        return getattr(self.state, name)

    def stop(self) -> None:
        self.server.stop(None)


def serve_fake(address: str, root: Path, interceptors: tuple[Any, ...] = ()) -> FakeDaemon:
    state = FakeState()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=interceptors)
    pbg.add_InferenceServicer_to_server(Inference(state), server)
    pbg.add_SessionsServicer_to_server(Sessions(state), server)
    pbg.add_ModelsServicer_to_server(Models(state), server)
    pbg.add_SystemServicer_to_server(System(state), server)
    checker = health.HealthServicer()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port(address)
    if address.endswith(":0"):
        address = f"{address.rsplit(':', 1)[0]}:{port}"
    server.start()
    return FakeDaemon(state, server, checker, address, root)


@pytest.fixture
def root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short directory with every EDGED_* path inside it."""
    path = Path(tempfile.mkdtemp(prefix="edged-cli-", dir="/tmp"))
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    (path / "run").mkdir(mode=0o700)
    monkeypatch.setenv("EDGED_DATA_DIR", str(path / "data"))
    monkeypatch.setenv("EDGED_CACHE_DIR", str(path / "cache"))
    monkeypatch.setenv("EDGED_LOG_DIR", str(path / "log"))
    monkeypatch.setenv("EDGED_RUNTIME_DIR", str(path / "run"))
    monkeypatch.setenv("EDGED_SOCKET", str(path / "run" / "edged.sock"))
    monkeypatch.setenv("EDGED_TOKEN_FILE", str(path / "token"))
    monkeypatch.setenv("EDGED_THREADS", "2")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(root: Path) -> Iterator[FakeDaemon]:
    """The fake daemon on the unix socket EDGED_SOCKET names."""
    daemon = serve_fake(f"unix://{root / 'run' / 'edged.sock'}", root)
    yield daemon
    daemon.stop()
