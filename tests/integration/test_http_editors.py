"""llama-server's editor endpoints as llama.vscode and llama.vim call them: the
exact request sequence (a warm-up that only fills the cache, then completions
that reuse it), plus /tokenize, /detokenize and /health."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.daemon import Daemon, clone_store, start_daemon
from tests.integration.test_http_access import call


@pytest.fixture(scope="module")
def fim(tmp_path_factory: pytest.TempPathFactory, fim_store: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("fim-editors")
    clone_store(fim_store, root / "data")
    d = start_daemon(root)
    yield d
    d.stop()


CHUNKS = [  # llama.vscode's ring buffer of context chunks: text, time, filename
    {"text": "def mul(a, b):\n    return a * b\n", "time": 1733000000, "filename": "ops.py"},
    {"text": "import math\n\nPI = math.pi\n", "time": 1733000001, "filename": "consts.py"},
]
PREFIX = "from ops import mul\n\n\ndef area(r):\n    "
SUFFIX = "\n\n\nprint(area(2))\n"


def warm_up() -> dict[str, Any]:
    """What llama.vscode sends when its extra context changes (llama-server.ts,
    createRequestPayload with noPredict)."""
    return {
        "input_prefix": "",
        "input_suffix": "",
        "input_extra": CHUNKS,
        "prompt": "",
        "n_predict": 0,
        "samplers": [],
        "cache_prompt": True,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 1,
    }


def completion(prompt: str = "") -> dict[str, Any]:
    """A completion at the cursor, as llama.vscode sends it."""
    return {
        "input_prefix": PREFIX,
        "input_suffix": SUFFIX,
        "input_extra": CHUNKS,
        "prompt": prompt,
        "n_predict": 16,
        "top_k": 40,
        "top_p": 0.99,
        "stream": False,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": True,
        "n_indent": 4,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 250,
    }


def test_llama_vscode_sequence(fim: Daemon) -> None:
    url = fim.http_url
    status, _, warm = call(url, "POST", "/infill", warm_up())
    assert status == 200, warm
    assert warm["content"] == "" and warm["stop"] is True
    status, _, first = call(url, "POST", "/infill", completion())
    assert status == 200, first
    assert isinstance(first["content"], str) and first["model"] == "smolfim:latest"
    # what llama.vscode reads back
    timings = first["timings"]
    for key in ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"):
        assert key in timings
    assert 0 < first["tokens_predicted"] <= 16
    # the warm-up filled the cache with the extra context: the completion reused it
    assert first["tokens_cached"] > 0
    # the user typed a little: the next request reuses the prefix again
    status, _, second = call(url, "POST", "/infill", completion(prompt="return"))
    assert status == 200 and second["tokens_cached"] >= first["tokens_cached"]
    assert second["tokens_evaluated"] > second["tokens_cached"]


def test_infill_stream_and_refusals(fim: Daemon) -> None:
    url = fim.http_url
    body = {**completion(), "stream": True}
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=120)
    conn.request(
        "POST", "/infill", body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/event-stream")
    events = [
        json.loads(line[6:])
        for line in resp.read().decode().splitlines()
        if line.startswith("data: ")
    ]
    conn.close()
    assert events[-1]["stop"] is True and all(not e["stop"] for e in events[:-1])
    assert "timings" in events[-1]
    # two models can infill only when one is named; smollm2 has no FIM tokens
    status, _, err = call(url, "POST", "/infill", {**completion(), "model": "smollm2"})
    assert status == 400 and "not trained for infill" in err["error"]["message"]


def test_tokenize_detokenize_health(fim: Daemon) -> None:
    url = fim.http_url
    status, _, body = call(url, "POST", "/tokenize", {"content": "Hello world", "model": "smollm2"})
    assert status == 200 and body["tokens"] and all(isinstance(t, int) for t in body["tokens"])
    ids = body["tokens"]
    status, _, pieces = call(
        url,
        "POST",
        "/tokenize",
        {"content": "Hello world", "model": "smollm2", "with_pieces": True},
    )
    assert [p["id"] for p in pieces["tokens"]] == ids
    assert "".join(p["piece"] for p in pieces["tokens"]) == "Hello world"
    status, _, text = call(url, "POST", "/detokenize", {"tokens": ids, "model": "smollm2"})
    assert status == 200 and text["content"] == "Hello world"
    assert call(url, "GET", "/health")[2] == {"status": "ok"}


def test_without_a_model_name(daemon: Daemon, fim: Daemon) -> None:
    """llama-server's clients name no model: one pulled model is used; with two
    that can both tokenize, the error says to name one; /infill picks the one
    that can infill."""
    status, _, body = call(daemon.http_url, "POST", "/tokenize", {"content": "Hello"})
    assert status == 200 and body["tokens"]
    call(fim.http_url, "POST", "/tokenize", {"content": "x", "model": "smollm2"})  # loaded
    call(fim.http_url, "POST", "/tokenize", {"content": "x", "model": "smolfim"})  # loaded
    status, _, err = call(fim.http_url, "POST", "/tokenize", {"content": "Hello"})
    assert status == 400 and '"model"' in err["error"]["message"]
    status, _, reply = call(fim.http_url, "POST", "/infill", {**completion(), "n_predict": 2})
    assert status == 200 and reply["model"] == "smolfim:latest"
    status, _, err = call(daemon.http_url, "POST", "/infill", completion())
    assert status == 400 and "no pulled model can infill" in err["error"]["message"]
