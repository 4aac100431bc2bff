"""llama.cpp RPC workers end to end: two `edged rpc-worker` processes on
loopback and a daemon with EDGED_RPC naming them. A model split over this
machine and both workers answers token for token what the local-only daemon
answers (greedy); killing a worker mid-stream ends that stream with
UNAVAILABLE naming the worker, and the next request gets a clear error (or an
answer once the worker is back); a non-loopback listen address is refused
without --allow-network.

The split tests need llama-cpp-python built with -DGGML_RPC=ON (libggml-rpc
next to its libllama), which install.sh builds unless EDGED_LLAMA_RPC=0; only
that explicit opt-out skips them (saying so), and a default build without the
library fails here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon
from tests.integration.helpers import collect

PROMPTS = ("The capital of France is", "def fibonacci(n):")
SPLIT_LAYERS = "20"  # of SmolLM2's 30: 10 stay on this machine, 20 go to the workers


def rpc_built() -> bool:
    try:
        import llama_cpp
    except ImportError:
        return False
    libdir = Path(llama_cpp.__file__).parent / "lib"
    return any(libdir.glob("libggml-rpc.*"))


OPTED_OUT = os.environ.get("EDGED_LLAMA_RPC", "").strip() == "0"
needs_rpc = pytest.mark.skipif(
    OPTED_OUT, reason="EDGED_LLAMA_RPC=0: llama-cpp-python built without -DGGML_RPC=ON"
)


@needs_rpc
def test_the_default_build_has_the_rpc_backend() -> None:
    assert rpc_built(), "install.sh builds llama.cpp with -DGGML_RPC=ON unless EDGED_LLAMA_RPC=0"


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged.daemon.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RpcWorker:
    endpoint: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edged.daemon.cli.main",
                    "rpc-worker",
                    "--listen",
                    self.endpoint,
                    "--threads",
                    "1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        host, port = self.endpoint.split(":")
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((host, int(port)), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"rpc-worker did not start: {self.log.read_text()}"
                    ) from None
                time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def test_rpc_worker_refuses_a_network_address_without_allow_network() -> None:
    out = cli("rpc-worker", "--listen", f"0.0.0.0:{free_port()}")
    assert out.returncode == 1
    assert "refusing to listen on 0.0.0.0" in out.stderr
    assert "no authentication" in out.stderr and "SSH tunnel" in out.stderr


def test_allow_network_says_why_it_is_dangerous() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edged.daemon.cli.main",
            "rpc-worker",
            "--allow-network",
            "--listen",
            f"0.0.0.0:{free_port()}",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # it serves (an RPC build): stop it
        proc.kill()
        _, err = proc.communicate()
    assert "NO authentication and NO encryption" in err
    assert "CVE-2026-34159" in err and "WireGuard" in err


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RpcWorker]]:
    logs = tmp_path_factory.mktemp("rpc-workers")
    found = [RpcWorker(f"127.0.0.1:{free_port()}", logs / f"worker{i}.log") for i in range(2)]
    for w in found:
        w.start()
    yield found
    for w in found:
        w.kill()


@pytest.fixture(scope="module")
def split(
    tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path, workers: list[RpcWorker]
) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("split")
    clone_store(smollm2_store, root / "data")
    d = start_daemon(
        root,
        EDGED_RPC=",".join(w.endpoint for w in workers),
        EDGED_RPC_LAYERS=SPLIT_LAYERS,
        EDGED_BACKEND="llama.cpp",  # the backend with RPC, whatever a calibration finds
    )
    yield d
    d.stop()


def greedy(d: Daemon, prompt: str, tokens: int = 32) -> tuple[str, pb.GenerationStats]:
    req = pb.GenerateRequest(
        model="smollm2", prompt=prompt, sampling=pb.SamplingParams(max_tokens=tokens, temperature=0)
    )
    text, stats, _ = collect(d.inference.Generate(req, timeout=300))
    return text, stats


@needs_rpc
@pytest.mark.model
def test_split_model_answers_token_for_token_like_local_only(
    daemon: Daemon, split: Daemon, workers: list[RpcWorker]
) -> None:
    for prompt in PROMPTS:
        local, local_stats = greedy(daemon, prompt)
        remote, split_stats = greedy(split, prompt)
        assert remote == local, prompt
        assert split_stats.completion_tokens == local_stats.completion_tokens
    loaded = split.models.ListLoaded(pb.ListLoadedRequest(), timeout=30).models
    (smol,) = [m for m in loaded if m.model.startswith("smollm2")]
    assert smol.device == "cpu+rpc:" + ",".join(w.endpoint for w in workers)
    assert smol.gpu_layers == int(SPLIT_LAYERS)
    servers = ",".join(w.endpoint for w in workers)
    # (`edged hw --model` would also calibrate: `show` ranks the same way)
    for args in (["show", "smollm2"],):
        shown = subprocess.run(
            [sys.executable, "-m", "edged.daemon.cli.main", "--no-autostart", *args],
            env=split.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert shown.returncode == 0, shown.stderr
        assert f"split: {SPLIT_LAYERS} layers on the RPC workers {servers} (EDGED_RPC)" in (
            shown.stdout
        ), shown.stdout


@needs_rpc
@pytest.mark.model
def test_killing_a_worker_mid_stream_is_unavailable_naming_it(
    split: Daemon, workers: list[RpcWorker]
) -> None:
    greedy(split, PROMPTS[0], 4)  # loaded, split over both workers
    victim = workers[1]
    req = pb.GenerateRequest(
        model="smollm2", prompt="1, 2, 3, 4,", sampling=pb.SamplingParams(max_tokens=1500)
    )
    stream = split.inference.Generate(req, timeout=300)
    with pytest.raises(grpc.RpcError) as err:
        for i, _ in enumerate(stream):
            if i == 2:
                victim.kill()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert victim.endpoint in str(err.value.details())
    # the next request: a clear error naming the worker that is gone
    with pytest.raises(grpc.RpcError) as again:
        greedy(split, PROMPTS[0], 4)
    assert again.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"the RPC worker {victim.endpoint} is not reachable" in str(again.value.details())
    # the worker comes back: the daemon serves the split model again
    victim.start()
    text, _ = greedy(split, PROMPTS[0], 8)
    assert text


@needs_rpc
@pytest.mark.model
def test_a_models_rpc_setting_overrides_edged_rpc(
    daemon: Daemon, split: Daemon, workers: list[RpcWorker]
) -> None:
    def configure(rpc: str) -> None:
        split.models.Configure(
            pb.ConfigureModelRequest(model="smollm2", settings=pb.ModelSettings(rpc=rpc)),
            timeout=30,
        )

    def device() -> str:
        loaded = split.models.ListLoaded(pb.ListLoadedRequest(), timeout=30).models
        return next(m.device for m in loaded if m.model.startswith("smollm2"))

    local, _ = greedy(daemon, PROMPTS[1])
    try:
        configure("local")  # this model only: no RPC workers, whatever EDGED_RPC says
        assert greedy(split, PROMPTS[1])[0] == local
        assert device() == "cpu"
        configure(workers[0].endpoint)  # one worker instead of EDGED_RPC's two
        assert greedy(split, PROMPTS[1])[0] == local
        assert device() == "cpu+rpc:" + workers[0].endpoint
        with pytest.raises(grpc.RpcError) as err:
            configure("not-an-endpoint")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        configure("")
