"""Hostile bytes on the HTTP listener: each gets a clear 4xx in the endpoint's
own error shape (never a 500 or a dropped daemon), and the daemon keeps serving."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

from harness.daemon import Daemon
from tests.integration.test_http_access import call

CHAT = "/v1/chat/completions"
BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    (CHAT, b"{not json", 400, "not valid JSON"),
    (CHAT, b"[1, 2]", 400, "JSON object"),
    (CHAT, b"\xff\xfe\x00garbage", 400, "not valid JSON"),
    (CHAT, b"[" * 100000 + b"]" * 100000, 400, "not valid JSON"),
    (CHAT, b'{"model": "smollm2", "messages": "hi"}', 400, "messages must be an array"),
    (CHAT, b'{"model": "smollm2", "messages": [{"role": "wizard", "content": "x"}]}', 400, "role"),
    (
        CHAT,
        b'{"model": "smollm2", "messages": [{"role": "user", "content": "\\ud800"}]}',
        400,
        "not valid Unicode",
    ),
    (
        CHAT,
        b'{"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        400,
        "temperature",
    ),
    (
        CHAT,
        b'{"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}',
        400,
        "max_tokens",
    ),
    (
        CHAT,
        b'{"model": "smollm2", "messages": [{"role": "user", "content": "x"}], '
        b'"tools": [{"type": "function", "function": {"name": "a b"}}]}',
        400,
        "tool name",
    ),
    (
        CHAT,
        b'{"model": "smollm2", "messages": [{"role": "user", "content": "x"}], '
        b'"response_format": {"type": "json_schema", "json_schema": {"schema": 5}}}',
        400,
        "schema",
    ),
    ("/v1/completions", b'{"model": "smollm2", "prompt": [1, 2, 3]}', 400, "prompt"),
    ("/v1/responses", b'{"model": "smollm2", "input": [{"type": "reasoning"}]}', 400, "reasoning"),
    (
        "/v1/responses",
        b'{"model": "smollm2", "input": "x", "previous_response_id": "resp_no"}',
        404,
        "no stored response",
    ),
    ("/infill", b'{"model": "smollm2", "input_extra": "nope"}', 400, "input_extra"),
    ("/detokenize", b'{"tokens": [-1, "x"]}', 400, "token ids"),
]


def raw(url: str, data: bytes) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=30) as s:
        chunks = []
        try:
            s.sendall(data)
            while got := s.recv(65536):
                chunks.append(got)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server hung up on it
    return b"".join(chunks)


@pytest.mark.parametrize(("path", "body", "status", "says"), BAD_BODIES)
def test_bad_bodies_get_a_clear_error(
    daemon: Daemon, path: str, body: bytes, status: int, says: str
) -> None:
    parts = urlsplit(daemon.http_url)
    import http.client

    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode(errors="replace")
    conn.close()
    assert resp.status == status, text
    assert says.lower() in text.lower()


def test_broken_http_and_oversized_requests(daemon: Daemon) -> None:
    url = daemon.http_url
    host = f"Host: localhost:{urlsplit(url).port}\r\n"
    # not HTTP at all, a header too large, a body larger than it says and than allowed
    assert raw(url, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    # a megabyte of header is dropped before it is buffered whole (h11's limit)
    huge_header = "GET /health HTTP/1.1\r\n" + host + "X-Big: " + "a" * 1_000_000 + "\r\n\r\n"
    assert not raw(url, huge_header.encode()).startswith(b"HTTP/1.1 200")
    too_big = (
        f"POST {CHAT} HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
        f"Content-Length: {64 << 20}\r\nConnection: close\r\n\r\n{{"
    )
    assert b" 413 " in raw(url, too_big.encode()).split(b"\r\n")[0] + b" "
    # the daemon still answers
    status, _, body = call(url, "GET", "/health")
    assert status == 200 and body == {"status": "ok"}
    status, _, body = call(
        url,
        "POST",
        CHAT,
        {"model": "smollm2", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert status == 200 and body["choices"][0]["message"]["content"]


def test_unknown_paths_and_methods(daemon: Daemon) -> None:
    status, _, body = call(daemon.http_url, "GET", "/v1/nothing")
    assert status == 404 and "no endpoint" in body["error"]["message"]
    status, _, body = call(daemon.http_url, "GET", "/api/nothing")
    assert status == 404 and "no endpoint" in body["error"]
    status, _, body = call(daemon.http_url, "GET", CHAT)
    assert status == 405 and "not allowed" in body["error"]["message"]
