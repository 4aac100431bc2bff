"""Remote models end to end: a second edged daemon (its OpenAI door) is the
upstream; the first daemon serves it by name through gRPC and the OpenAI door
(the real ``openai`` SDK), sessions reuse the upstream's prefix cache, a
client that leaves closes the upstream stream, a bad token is UNAUTHENTICATED
without the token anywhere, an unreachable upstream is UNAVAILABLE while local
models keep working. When the llama-server built for the benchmarks is on this
machine, the core tests run against it as the upstream too."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import openai
import pytest

from edged.models_registry import remote
from edged.models_registry.names import parse_model_ref
from edged.models_registry.store import Store
from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon
from tests.integration.helpers import collect

pytestmark = pytest.mark.model

UPSTREAM_MODEL = "smollm2:135m-q4_1"
LLAMA_SERVER = Path.home() / ".cache" / "edged" / "llama.cpp-bench" / "llama-server"
# what an edged token looks like (a bad one: the upstream refuses it with 401)
BAD_TOKEN = "edt_" + "Zq9" * 14


@dataclass
class Upstream:
    url: str  # its OpenAI base URL
    model: str  # the id it serves the model as
    kind: str  # "edged" | "llama-server"
    metrics: str = ""  # its Prometheus endpoint ("" when it has none)


def edged_cli(front: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged.daemon.cli.main", "--no-autostart", *args],
        env=front.env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def add_remote(front: Daemon, name: str, up: Upstream, *extra: str) -> dict[str, object]:
    out = edged_cli(front, "remote", "add", name, up.url, "--model", up.model, "--json", *extra)
    assert out.returncode == 0, out.stderr
    added: dict[str, object] = json.loads(out.stdout)
    return added


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def edged_upstream(
    tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path
) -> Iterator[tuple[Daemon, Upstream]]:
    root = tmp_path_factory.mktemp("upstream")
    clone_store(smollm2_store, root / "data")
    d = start_daemon(root)
    url = d.http_url
    yield d, Upstream(url + "/v1", UPSTREAM_MODEL, "edged", url + "/metrics")
    d.stop()


@pytest.fixture(scope="module")
def llama_server_upstream(
    tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path
) -> Iterator[Upstream]:
    if not os.access(LLAMA_SERVER, os.X_OK):
        pytest.skip(f"no llama-server at {LLAMA_SERVER} (built by the benchmarks)")
    gguf = next((smollm2_store / "models" / "blobs").glob("sha256-*"))
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(LLAMA_SERVER),
                "-m",
                str(gguf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "-c",
                "2048",
                "-t",
                "2",
                "--alias",
                "smol",
                "--metrics",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LD_LIBRARY_PATH": str(LLAMA_SERVER.parent)},  # its libraries
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"llama-server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    yield Upstream(base + "/v1", "smol", "llama-server", base + "/metrics")
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("front")
    clone_store(smollm2_store, root / "data")  # a local model beside the remote ones
    d = start_daemon(root)
    yield d
    d.stop()


@pytest.fixture(scope="module", params=["edged", "llama-server"])
def upstream(request: pytest.FixtureRequest) -> Upstream:
    if request.param == "edged":
        up: Upstream = request.getfixturevalue("edged_upstream")[1]
        return up
    srv: Upstream = request.getfixturevalue("llama_server_upstream")
    return srv


@pytest.fixture(scope="module")
def remote_name(front: Daemon, upstream: Upstream) -> str:
    name = f"far-{upstream.kind}"
    added = add_remote(front, name, upstream)
    assert added["url"] == upstream.url and added["upstream_model"] == upstream.model
    return name


@pytest.fixture(scope="module")
def sdk(front: Daemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=front.http_url + "/v1", api_key="sk-no-key", max_retries=0) as c:
        yield c


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def direct(up: Upstream, messages: list[dict[str, str]], max_tokens: int) -> str:
    with openai.OpenAI(base_url=up.url, api_key="sk-no-key", max_retries=0) as c:
        reply = c.chat.completions.create(
            model=up.model, messages=messages, max_tokens=max_tokens, temperature=0, seed=1
        )
    return reply.choices[0].message.content or ""


def test_streamed_chat_through_the_openai_door(
    sdk: openai.OpenAI, remote_name: str, upstream: Upstream
) -> None:
    messages = ask("What is the capital of France?")
    stream = sdk.chat.completions.create(
        model=remote_name,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=24,
        temperature=0,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for event in stream:
        if event.choices and event.choices[0].delta.content:
            parts.append(event.choices[0].delta.content)
        if event.usage is not None:
            usage = event.usage
    assert len(parts) > 1, "the text must stream in several chunks"
    assert "".join(parts) == direct(upstream, messages, 24), "greedy text must be the upstream's"
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 5


def test_streamed_chat_through_grpc(front: Daemon, remote_name: str) -> None:
    req = pb.GenerateRequest(
        model=remote_name,
        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Name a color.")]),
        sampling=pb.SamplingParams(max_tokens=16, temperature=0.0),
    )
    text, stats, n = collect(front.inference.Generate(req, timeout=120))
    assert text and n > 1
    assert stats.backend == "remote"
    assert 0 < stats.completion_tokens <= 16
    assert stats.time_to_first_token_ms > 0


def test_session_second_turn_reports_the_upstreams_cached_tokens(
    front: Daemon, remote_name: str
) -> None:
    s = front.sessions.Create(pb.CreateSessionRequest(model=remote_name), timeout=30)

    def send(text: str) -> tuple[str, pb.GenerationStats]:
        req = pb.SendRequest(
            session_id=s.id, content=text, sampling=pb.SamplingParams(temperature=0, max_tokens=16)
        )
        out, stats, _ = collect(front.sessions.Send(req, timeout=120))
        return out, stats

    _, st1 = send("The secret word is volcano. Remember it, and reply with OK only.")
    _, st2 = send("What is the secret word?")
    # the second turn sent the whole history: the upstream found the first turn cached
    assert st2.prompt_tokens > st1.prompt_tokens
    assert st2.cached_prompt_tokens >= st1.prompt_tokens * 0.8, (st1, st2)
    assert st2.cached_prompt_tokens < st2.prompt_tokens


def _metrics(up: Upstream) -> dict[str, float]:
    """The upstream's Prometheus samples, summed over labels: name -> value
    (edged's own names; llama-server's ``llamacpp:...``); ``cancelled`` counts
    edged generations that ended because the client left."""
    with urllib.request.urlopen(up.metrics, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        key = name.split("{", 1)[0]
        out[key] = out.get(key, 0.0) + float(value)
        if key == "edged_generations_total" and 'finish_reason="cancelled"' in name:
            out["cancelled"] = out.get("cancelled", 0.0) + float(value)
    return out


def _generating(up: Upstream) -> float:
    m = _metrics(up)
    return m.get("edged_requests_in_flight", 0.0) + m.get("llamacpp:requests_processing", 0.0)


def test_client_disconnect_cancels_the_upstream_stream(
    front: Daemon, remote_name: str, upstream: Upstream
) -> None:
    before = _metrics(upstream).get("cancelled", 0.0)
    with openai.OpenAI(base_url=front.http_url + "/v1", api_key="x", max_retries=0) as c:
        # a raw prompt the model continues for its whole budget (~1900 tokens: many
        # seconds here), so only a cancellation ends it within the deadline below
        stream = c.completions.create(
            model=remote_name, prompt="1, 2, 3, 4, 5,", max_tokens=1900, temperature=0, stream=True
        )
        for i, _ in enumerate(stream):
            if i == 3:
                break
        assert _generating(upstream) == 1, "precondition: the upstream is generating"
        stream.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 5
    while _generating(upstream) > 0:
        assert time.monotonic() < deadline, f"the upstream kept generating: {_metrics(upstream)}"
        time.sleep(0.1)
    if upstream.kind == "edged":  # edged also counts why it ended
        assert _metrics(upstream).get("cancelled", 0.0) == before + 1


def test_bad_token_is_unauthenticated_and_never_shown(
    front: Daemon, edged_upstream: tuple[Daemon, Upstream], sdk: openai.OpenAI, tmp_path: Path
) -> None:
    _, up = edged_upstream
    token_file = tmp_path / "token"
    token_file.write_text(BAD_TOKEN + "\n")
    token_file.chmod(0o644)
    refused = edged_cli(front, "remote", "add", "far-bad", up.url, "--model", up.model,
                        "--token-file", str(token_file))  # fmt: skip
    assert refused.returncode == 1 and "chmod 600" in refused.stderr
    token_file.chmod(0o600)
    probed = edged_cli(front, "remote", "add", "far-bad", up.url, "--model", up.model,
                       "--token-file", str(token_file))  # fmt: skip
    assert probed.returncode == 1 and "401" in probed.stderr
    assert BAD_TOKEN not in probed.stderr + probed.stdout
    req = pb.GenerateRequest(
        model="far-bad", prompt="Hello", sampling=pb.SamplingParams(max_tokens=4)
    )
    with pytest.raises(grpc.RpcError) as err:
        collect(front.inference.Generate(req, timeout=60))
    # the probe refused to add it: nothing by that name
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # the upstream's token changes after the remote was added: requests get UNAUTHENTICATED
    good = tmp_path / "good"
    good.write_text("sk-anything\n")  # not an edged token: the upstream serves it anonymously
    good.chmod(0o600)
    add_remote(front, "far-rotated", up, "--token-file", str(good))
    good.write_text(BAD_TOKEN + "\n")
    req.model = "far-rotated"
    with pytest.raises(grpc.RpcError) as err:
        collect(front.inference.Generate(req, timeout=60))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "401" in str(err.value.details()) and BAD_TOKEN not in str(err.value.details())
    with pytest.raises(openai.AuthenticationError) as http_err:
        sdk.chat.completions.create(model="far-rotated", messages=ask("Hi"), max_tokens=4)  # type: ignore[arg-type]
    assert BAD_TOKEN not in str(http_err.value)
    logs = [p for p in front.root.rglob("*") if p.is_file() and p.suffix in (".log", ".out")]
    assert logs
    for path in logs:
        assert BAD_TOKEN not in path.read_text(errors="replace"), path


def test_unreachable_upstream_is_unavailable_and_local_models_still_serve(
    front: Daemon, sdk: openai.OpenAI
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens there
    refused = edged_cli(front, "remote", "add", "far-gone", dead, "--model", UPSTREAM_MODEL)
    assert refused.returncode == 1 and f"cannot reach the upstream {dead[7:-3]}" in refused.stderr
    # an upstream that was reachable when added and has gone away since: stored as
    # `remote add` stores it, without the probe
    store = Store(front.root / "data" / "models")
    remote.put_remote(store, parse_model_ref("far-gone"), remote.RemoteSpec(dead, UPSTREAM_MODEL))
    req = pb.GenerateRequest(
        model="far-gone", prompt="Hi", sampling=pb.SamplingParams(max_tokens=2)
    )
    with pytest.raises(grpc.RpcError) as err:
        collect(front.inference.Generate(req, timeout=60))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dead[7:-3] in str(err.value.details())
    with pytest.raises(openai.APIStatusError) as http_err:
        sdk.chat.completions.create(model="far-gone", messages=ask("Hi"), max_tokens=2)  # type: ignore[arg-type]
    assert http_err.value.status_code == 503
    local = pb.GenerateRequest(
        model="smollm2", prompt="Hi", sampling=pb.SamplingParams(max_tokens=4)
    )
    _, stats, _ = collect(front.inference.Generate(local, timeout=120))
    assert stats.completion_tokens > 0


def test_show_and_hw_say_where_a_remote_model_runs(
    front: Daemon, remote_name: str, upstream: Upstream
) -> None:
    where = f"served by {upstream.url} as {upstream.model!r}"
    shown = edged_cli(front, "show", remote_name)
    assert shown.returncode == 0, shown.stderr
    assert where in shown.stdout and "TLS off" in shown.stdout
    assert re.search(r"remote\s+remote\s+-\s+\d+ B\s+remote", shown.stdout), shown.stdout
    hw = edged_cli(front, "hw", "--model", remote_name)
    assert hw.returncode == 0, hw.stderr
    assert f"* remote on {upstream.url.split('/')[2]}" in hw.stdout and where in hw.stdout
    ran = edged_cli(front, "run", remote_name, "Name a color.", "--max-tokens", "8")
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr
    listed = json.loads(edged_cli(front, "remote", "list", "--json").stdout)
    mine = next(r for r in listed if r["name"] == f"{remote_name}:latest")
    assert mine["url"] == upstream.url and mine["upstream_model"] == upstream.model
    assert "/v1/models lists" in mine["evidence"][0]


def test_the_ollama_and_anthropic_doors_serve_a_remote_model(
    front: Daemon, remote_name: str
) -> None:
    import anthropic
    import ollama

    door = ollama.Client(host=front.http_url, timeout=300)
    try:
        reply = door.chat(
            model=remote_name,
            messages=[{"role": "user", "content": "Name a colour."}],
            options={"temperature": 0, "num_predict": 8},
        )
    finally:
        door.close()
    assert reply.message.content and reply.eval_count and reply.eval_count <= 8
    with anthropic.Anthropic(base_url=front.http_url, api_key="sk-ant-none", max_retries=0) as c:
        m = c.messages.create(
            model=remote_name,
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=8,
            extra_body={"temperature": 0},
        )
    assert m.content and m.content[0].type == "text" and m.usage.output_tokens <= 8
