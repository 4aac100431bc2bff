"""``GET /metrics`` after real traffic parses with Prometheus' own text parser and
says what happened; a client that hangs up mid-stream cancels its generation."""

from __future__ import annotations

import http.client
import json
import socket
import time
from urllib.parse import urlsplit

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from harness.daemon import Daemon

MODEL = "smollm2:135m-q4_1"  # metrics name the model as stored


def scrape(url: str) -> dict[str, list[Sample]]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/plain")
    text = resp.read().decode()
    conn.close()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_after_traffic(daemon: Daemon) -> None:
    with openai.OpenAI(base_url=daemon.http_url + "/v1", api_key="x", max_retries=0) as client:
        before = scrape(daemon.http_url)
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=5,
            temperature=0,
        )
        stored = client.responses.create(model=MODEL, input="Remember: 7.", max_output_tokens=4)
        try:
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(
                    model="nosuch", messages=[{"role": "user", "content": "x"}], max_tokens=1
                )
            m = scrape(daemon.http_url)
        finally:
            client.responses.delete(stored.id)
        requests = m["edged_http_requests"]
        assert (
            value(
                requests,
                "edged_http_requests_total",
                api="openai",
                endpoint="/v1/chat/completions",
                status="200",
            )
            >= 1
        )
        assert (
            value(
                requests,
                "edged_http_requests_total",
                api="openai",
                endpoint="/v1/chat/completions",
                status="404",
            )
            >= 1
        )
        generated = value(m["edged_generated_tokens"], "edged_generated_tokens_total", model=MODEL)
        old = value(
            before.get("edged_generated_tokens", []), "edged_generated_tokens_total", model=MODEL
        )
        assert generated - old >= 5
        assert value(m["edged_prompt_tokens"], "edged_prompt_tokens_total", model=MODEL) > 0
        assert "edged_cached_prompt_tokens" in m
        assert (
            value(
                m["edged_time_to_first_token_seconds"],
                "edged_time_to_first_token_seconds_count",
                model=MODEL,
            )
            >= 2
        )
        assert (
            value(
                m["edged_time_per_output_token_seconds"],
                "edged_time_per_output_token_seconds_count",
                model=MODEL,
            )
            >= 1
        )
        assert value(m["edged_loaded_models"], "edged_loaded_models") == 1
        assert (
            value(
                m["edged_model_memory_bytes"],
                "edged_model_memory_bytes",
                model=MODEL,
                part="weights",
            )
            > 0
        )
        # the stored response's session is resident in the worker
        assert (
            value(
                m["edged_session_kv_bytes"], "edged_session_kv_bytes", model=MODEL, tier="resident"
            )
            > 0
        )
        assert value(m["edged_sessions"], "edged_sessions") >= 1
        assert value(m["edged_queue_depth"], "edged_queue_depth", model=MODEL) == 0
        assert value(m["edged_worker_restarts"], "edged_worker_restarts") == 0


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_cancels_its_generation(daemon: Daemon, stream: bool) -> None:
    """Streaming or not, a client that disconnects stops its generation (the
    generated-token count stays far below max_tokens; the stream slot is freed)."""
    url = daemon.http_url
    before = scrape(url)
    cancelled0 = value(
        before.get("edged_generations", []), "edged_generations_total", finish_reason="cancelled"
    )
    tokens0 = value(before.get("edged_generated_tokens", []), "edged_generated_tokens_total")
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=120)
    body = {
        "model": "smollm2",
        "stream": stream,
        "max_tokens": 1000,
        "temperature": 0.7,
        "messages": [{"role": "user", "content": "Write a very long story about ships."}],
    }
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    if stream:
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline().startswith(b"data: ")
    else:  # wait until it is generating
        deadline = time.monotonic() + 60
        while not value(scrape(url)["edged_streams_active"], "edged_streams_active"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)
    conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]  # hang up
    conn.close()
    deadline = time.monotonic() + 30
    while True:
        m = scrape(url)
        cancelled = value(
            m["edged_generations"], "edged_generations_total", finish_reason="cancelled"
        )
        if cancelled > cancelled0 and value(m["edged_streams_active"], "edged_streams_active") == 0:
            break
        assert time.monotonic() < deadline, "the generation ran on after its client left"
        time.sleep(0.2)
    produced = value(m["edged_generated_tokens"], "edged_generated_tokens_total") - tokens0
    assert produced < 500
