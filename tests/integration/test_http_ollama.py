"""The Ollama door, driven by the real ``ollama`` client (and, for Continue's
autocomplete, the exact requests Continue's Ollama provider sends) against a
real daemon and SmolLM2: chat and generate (streamed and not), fill-in-the-middle
with ``suffix`` on a model with FIM tokens, JSON and schema formats, tools,
``num_ctx``, the model endpoints (tags, show, ps, pull, copy, delete), loading
and unloading, and the clear refusals (images, embeddings from a chat model)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import ollama
import pytest

from edged.daemon.tokens import TokenStore
from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon

MODEL = "smollm2"
FULL = "smollm2:135m-q4_1"
QUICK = {"temperature": 0, "num_predict": 8}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
# how Continue's Ollama provider reads /api/show's "parameters", line by line
CONTINUE_PARAMETER = re.compile(r'^(\S+)\s+((?:".*")|\S+)$')


@contextlib.contextmanager
def connect(d: Daemon, token: str = "") -> Iterator[ollama.Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    c = ollama.Client(host=d.http_url, timeout=300, headers=headers)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[ollama.Client]:
    with connect(daemon) as c:
        yield c


def manager(d: Daemon) -> contextlib.AbstractContextManager[ollama.Client]:
    """A client with a token that may manage models (pull, copy, delete)."""
    store = TokenStore(Path(d.env["EDGED_TOKENS_FILE"]))
    scopes = ["models", "read", "generate"]
    return connect(d, store.create(f"manager-{len(store.list())}", scopes))


@pytest.fixture(scope="module")
def fim(tmp_path_factory: pytest.TempPathFactory, fim_store: Path) -> Iterator[Daemon]:
    """A daemon with "smolfim": SmolLM2 whose GGUF declares FIM tokens (and that
    GGUF file beside it, for pulls of a local path)."""
    root = tmp_path_factory.mktemp("fim-ollama")
    clone_store(fim_store, root / "data")
    shutil.copyfile(fim_store.parent / "smolfim.gguf", root / "smolfim.gguf")
    d = start_daemon(root)
    yield d
    d.stop()


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assert_final(r: Any, limit: int) -> None:
    """The last record: done, a reason, counts and durations in nanoseconds."""
    assert r.done is True and r.done_reason in ("stop", "length")
    assert 0 < r.eval_count <= limit and r.prompt_eval_count > 0
    assert r.eval_duration > 0 and r.prompt_eval_duration > 0
    assert r.total_duration >= r.eval_duration
    assert r.total_duration < 600 * 10**9  # nanoseconds, not some other unit
    assert r.load_duration is not None and r.load_duration >= 0


# ------------------------------------------------------------------ model endpoints


def test_version_and_tags(client: ollama.Client, daemon: Daemon) -> None:
    version = httpx.get(daemon.http_url + "/api/version", timeout=60).json()["version"]
    assert version == daemon.system.Version(pb.VersionRequest(), timeout=10).version
    listed = {m.model: m for m in client.list().models}
    m = listed[FULL]
    assert m.digest is not None and re.fullmatch(r"[0-9a-f]{64}", m.digest)
    assert m.size and m.size > 10**7 and m.modified_at is not None
    assert m.details is not None and m.details.family == "llama"
    assert m.details.format == "gguf" and m.details.quantization_level == "Q4_1"
    assert m.details.parameter_size and m.details.parameter_size.endswith("M")
    raw = httpx.get(daemon.http_url + "/api/tags", timeout=60).json()["models"]
    assert {r["name"] for r in raw} == set(listed)


def test_show(client: ollama.Client, daemon: Daemon) -> None:
    shown = client.show(MODEL)
    assert shown.template and ".Suffix" not in shown.template  # SmolLM2 cannot infill
    assert shown.capabilities is not None and "completion" in shown.capabilities
    assert "insert" not in shown.capabilities
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    assert isinstance(shown.modelinfo["llama.context_length"], int)
    assert shown.parameters is not None and shown.modelfile and f"FROM {FULL}" in shown.modelfile
    lines = shown.parameters.split("\n")
    assert all(CONTINUE_PARAMETER.match(line) for line in lines)
    assert dict(line.split(None, 1) for line in lines)["num_ctx"] == "2048"  # EDGED_CONTEXT
    # the legacy "name" field, as Continue sends it
    legacy = httpx.post(daemon.http_url + "/api/show", json={"name": MODEL}, timeout=60)
    assert legacy.status_code == 200 and legacy.json()["template"] == shown.template
    with pytest.raises(ollama.ResponseError) as err:
        client.show("nosuch")
    assert err.value.status_code == 404 and "not found" in err.value.error


# ------------------------------------------------------------------ chat


def test_chat(client: ollama.Client) -> None:
    r = client.chat(model=MODEL, messages=ask("Name a colour."), options=QUICK)
    assert r.message.role == "assistant" and r.message.content
    assert r.model == MODEL and r.created_at
    assert_final(r, 8)


def test_chat_streams_records(client: ollama.Client) -> None:
    parts = list(
        client.chat(
            model=MODEL, messages=ask("Count to five."), options={**QUICK, "seed": 1}, stream=True
        )
    )
    assert all(p.done is False for p in parts[:-1]) and parts[-1].done is True
    assert all(p.message.role == "assistant" for p in parts)
    text = "".join(p.message.content or "" for p in parts)
    assert text and parts[-1].message.content == ""
    assert_final(parts[-1], 8)


def test_chat_json_format_and_schema(client: ollama.Client) -> None:
    r = client.chat(
        model=MODEL,
        messages=ask("Reply with JSON: the name of a cat."),
        format="json",
        options={"temperature": 0, "num_predict": 64},
    )
    assert r.done_reason == "stop" and isinstance(json.loads(r.message.content or ""), dict)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = client.chat(
        model=MODEL,
        messages=ask("Invent a person."),
        format=schema,
        options={"temperature": 0, "num_predict": 64},
    )
    assert r.done_reason == "stop"
    jsonschema.validate(json.loads(r.message.content or ""), schema)


def test_tools_round_trip(client: ollama.Client) -> None:
    r = client.chat(
        model=MODEL,
        messages=ask("What is the weather in Paris? Use the tool."),
        tools=[WEATHER],
        options={"temperature": 0, "num_predict": 48},
    )
    for call in r.message.tool_calls or []:  # the model decides; when it calls, the shape
        assert call.function.name == "get_weather"
        assert isinstance(call.function.arguments, dict)
    # a history in Ollama's shape (calls without ids, arguments as an object, the
    # result naming its tool) goes back in, and the model answers
    history = [
        *ask("What is the weather in Paris?"),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "tool_name": "get_weather", "content": '{"temp_c": 21}'},
    ]
    follow = client.chat(model=MODEL, messages=history, tools=[WEATHER], options=QUICK)
    assert follow.message.role == "assistant" and follow.done is True
    assert follow.message.content or follow.message.tool_calls


def test_chat_refusals(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(
            model=MODEL, messages=[{"role": "user", "content": "hi", "images": [b"\x89PNG"]}]
        )
    assert err.value.status_code == 400 and "images are not supported" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="nosuch", messages=ask("hi"))
    assert err.value.status_code == 404 and "'nosuch' not found" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=MODEL, messages=ask("hi"), options={"mirostat": 2})
    assert err.value.status_code == 400 and "options.mirostat" in err.value.error


# ------------------------------------------------------------------ generate


def test_generate(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, prompt="Why is the sky blue?", options=QUICK)
    assert r.response and r.model == MODEL
    assert_final(r, 8)
    raw = client.generate(
        model=MODEL, prompt="The capital of France is", raw=True, options=QUICK, system="ignored"
    )
    assert raw.response and raw.done is True
    # a raw prompt is not formatted: it costs its own tokens only, far fewer than a chat turn
    assert (raw.prompt_eval_count or 0) < (r.prompt_eval_count or 0)


def test_generate_streams_and_honours_stop(client: ollama.Client) -> None:
    parts = list(
        client.generate(
            model=MODEL, prompt="One, two, three, four,", raw=True, options=QUICK, stream=True
        )
    )
    text = "".join(p.response or "" for p in parts)
    assert text and parts[-1].done is True and parts[-1].response == ""
    assert all(p.done is False for p in parts[:-1])
    assert_final(parts[-1], 8)
    word = text.split()[0] if text.split() else text
    stopped = client.generate(
        model=MODEL, prompt="One, two, three, four,", raw=True, options={**QUICK, "stop": [word]}
    )
    assert word not in (stopped.response or "") and stopped.done_reason == "stop"


def test_generate_json_format(client: ollama.Client) -> None:
    r = client.generate(
        model=MODEL,
        prompt="Reply with JSON: the name of a cat.",
        format="json",
        options={"temperature": 0, "num_predict": 64},
    )
    assert r.done_reason == "stop" and isinstance(json.loads(r.response or ""), dict)


def test_generate_refusals(client: ollama.Client, daemon: Daemon) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model=MODEL, prompt="What is this?", images=[b"\x89PNG"])
    assert err.value.status_code == 400 and "images are not supported" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model=MODEL, prompt="hi", context=[1, 2, 3])
    assert err.value.status_code == 400 and "/api/chat" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model=MODEL, prompt="hi", template="{{ .Prompt }}")
    assert err.value.status_code == 400 and "raw" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:  # SmolLM2 has no FIM tokens
        client.generate(model=MODEL, prompt="def f(", suffix="    return x\n", options=QUICK)
    assert err.value.status_code == 400 and "fill-in-the-middle" in err.value.error
    r = httpx.post(daemon.http_url + "/api/generate", json={"model": MODEL, "keep_alive": "soon"})
    assert r.status_code == 400 and "keep_alive" in r.json()["error"]


def test_num_ctx_is_honoured(client: ollama.Client) -> None:
    """A num_ctx above EDGED_CONTEXT (2048 here) gets that much context; a prompt
    longer than the context is a 400 that says so, never truncated."""
    r = client.generate(model=MODEL, prompt="Hello", options={**QUICK, "num_ctx": 4096})
    assert r.done is True
    contexts = [m.context_length for m in client.ps().models if m.model == FULL]
    assert contexts and max(c or 0 for c in contexts) >= 4096
    long_prompt = "hello " * 4500  # about 4500 tokens: over 4096, under the model's 8192
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(
            model=MODEL, prompt=long_prompt, raw=True, options={**QUICK, "num_ctx": 4096}
        )
    assert err.value.status_code == 400
    assert "context holds 4096" in err.value.error and "num_ctx" in err.value.error


def test_ps_after_a_generation(client: ollama.Client, daemon: Daemon) -> None:
    client.generate(model=MODEL, prompt="Hi", options=QUICK, keep_alive="10m")
    running = [m for m in client.ps().models if m.model == FULL]
    assert running
    m = running[0]
    assert m.digest and re.fullmatch(r"[0-9a-f]{64}", m.digest)
    assert m.size and m.size > 0 and m.size_vram == 0  # the tests run on the CPU
    assert m.expires_at is not None and m.details is not None and m.details.family == "llama"
    raw = httpx.get(daemon.http_url + "/api/ps", timeout=60).json()["models"][0]
    assert raw["expires_at"].endswith("Z") and raw["name"] == raw["model"]


def test_load_and_unload(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, keep_alive="5m")
    assert r.done is True and r.done_reason == "load" and r.response == ""
    assert any(m.model == FULL for m in client.ps().models)
    r = client.generate(model=MODEL, keep_alive=0)
    assert r.done_reason == "unload"
    assert not any(m.model == FULL for m in client.ps().models)
    c = client.chat(model=MODEL, messages=[], keep_alive=-1)
    assert c.done_reason == "load" and c.message.role == "assistant"


def test_embeddings_from_a_chat_model_are_refused_clearly(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model=MODEL, input="hello")
    assert err.value.status_code == 400
    assert f"{FULL} has no pooling for embeddings" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.embeddings(model=MODEL, prompt="hello")
    assert err.value.status_code == 400 and "no pooling for embeddings" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="nosuch", input="hello")
    assert err.value.status_code == 404


# ------------------------------------------------------------------ copy, delete, scopes


def test_copy_and_delete(client: ollama.Client, daemon: Daemon) -> None:
    with pytest.raises(ollama.ResponseError) as err:  # anonymous: read and generate only
        client.copy(MODEL, "mine")
    assert err.value.status_code == 401 and "token" in err.value.error
    with manager(daemon) as admin:
        copy_and_delete(admin)
    # the same copy over gRPC (Models.Copy): a name for the same blobs
    info = daemon.models.Copy(
        pb.CopyModelRequest(source=MODEL, destination="grpc-copy:v1"), timeout=60
    )
    original = daemon.models.Show(pb.ModelRef(model=MODEL), timeout=60).model
    assert (info.name, info.tag, info.digest) == ("grpc-copy", "v1", original.digest)
    daemon.models.Delete(pb.ModelRef(model="grpc-copy:v1"), timeout=60)


def copy_and_delete(admin: ollama.Client) -> None:
    assert admin.copy(MODEL, "mine").status == "success"
    listed = {m.model: m for m in admin.list().models}
    assert listed["mine:latest"].digest == listed[FULL].digest
    assert admin.show("mine").template == admin.show(MODEL).template
    r = admin.generate(model="mine", prompt="Hi", options=QUICK)
    assert r.response and r.model == "mine"
    # Ollama's copy replaces what the destination held; the same copy again is fine
    assert admin.copy(MODEL, "mine").status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        admin.copy("nosuch", "other")
    assert err.value.status_code == 404
    assert admin.delete("mine").status == "success"
    assert "mine:latest" not in {m.model for m in admin.list().models}
    assert FULL in {m.model for m in admin.list().models}  # the blobs it shared stay
    with pytest.raises(ollama.ResponseError) as err:
        admin.delete("mine")
    assert err.value.status_code == 404


# ------------------------------------------------------------------ infill, pull, Continue


def test_generate_with_suffix_infills(fim: Daemon) -> None:
    with connect(fim) as client:
        infill(client)


def infill(client: ollama.Client) -> None:
    shown = client.show("smolfim")
    assert shown.template and "{{ .Suffix }}" in shown.template
    assert shown.capabilities is not None and "insert" in shown.capabilities
    assert ".Suffix" not in (client.show(MODEL).template or "")
    r = client.generate(
        model="smolfim",
        prompt="def add(a, b):\n",
        suffix="\n\nprint(add(1, 2))\n",
        options={"temperature": 0, "num_predict": 12},
    )
    assert isinstance(r.response, str) and r.done is True
    assert_final(r, 12)


def test_pull_a_file_streams_progress(fim: Daemon) -> None:
    path = str(fim.root / "smolfim.gguf")
    with connect(fim) as anonymous, pytest.raises(ollama.ResponseError) as err:
        anonymous.pull(path)  # no "models" scope
    assert err.value.status_code == 401
    with manager(fim) as admin:
        pull_file(admin, path)


def pull_file(admin: ollama.Client, path: str) -> None:
    records = [p.model_dump(exclude_none=True) for p in admin.pull(path, stream=True)]
    assert records[-1] == {"status": "success"}
    assert all("status" in r for r in records)
    counted = [r for r in records if "total" in r]
    assert counted and all(0 <= r["completed"] <= r["total"] for r in counted)
    assert admin.pull(path, stream=False).status == "success"
    stored = {m.model for m in admin.list().models}
    assert any(name.startswith("smolfim") for name in stored)


def test_continue_autocomplete_requests(fim: Daemon) -> None:
    """The requests Continue's Ollama provider (core/llm/llms/Ollama.ts) sends for
    tab autocomplete, replayed as it sends them and read as it reads them."""
    url = fim.http_url
    headers = {"Content-Type": "application/json"}
    prefix, suffix = "def fibonacci(n):\n    ", "\n\nprint(fibonacci(10))\n"
    for model, fim_capable in (("smolfim", True), (MODEL, False)):
        # 1. the constructor: POST /api/show {"name": model}
        show = httpx.post(f"{url}/api/show", headers=headers, json={"name": model}, timeout=120)
        assert show.status_code == 200
        body = show.json()
        context_length = 32768  # Continue's default when "parameters" has no num_ctx
        for line in body["parameters"].split("\n"):
            parts = CONTINUE_PARAMETER.match(line)
            assert parts is not None  # Continue's loop throws on a line it cannot match
            if parts[1] == "num_ctx":
                context_length = int(parts[2])
        assert context_length == 2048
        supports_fim = ".Suffix" in (body.get("template") or "")
        assert supports_fim is fim_capable
        # 2. _streamFim (the template names .Suffix) or _streamComplete with raw: true
        options = {
            "temperature": 0.01,  # CompletionProvider's default for autocomplete
            "num_predict": 16,  # Continue's maxTokens (a small one: this is a test)
            "stop": ["<|endoftext|>", "\n\n", "/src/", "```"],
            "num_ctx": context_length,
        }
        request: dict[str, Any] = {"model": model, "prompt": prefix}
        if supports_fim:
            request["suffix"] = suffix
        else:
            request["raw"] = True
        request.update(options=options, keep_alive=60 * 30)
        completion = ""
        with httpx.stream(
            "POST", f"{url}/api/generate", headers=headers, json=request, timeout=120
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("application/x-ndjson")
            lines = [line for line in r.iter_lines() if line.strip()]
        for line in lines:
            j = json.loads(line)
            assert "error" not in j, j
            assert "response" in j  # _streamFim yields j.response
            completion += j["response"]
        final = json.loads(lines[-1])
        assert final["done"] is True and final["done_reason"] in ("stop", "length")
        assert isinstance(completion, str) and final["eval_count"] <= 16


def test_root_says_ollama_is_running(daemon: Daemon) -> None:
    with urllib.request.urlopen(daemon.http_url + "/", timeout=30) as r:
        assert r.status == 200 and r.read() == b"Ollama is running"
