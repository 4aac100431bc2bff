"""Who may use the HTTP listener: Host and Origin checks (DNS rebinding, web
pages), scoped tokens, anonymous access only for this user's own processes, and
no anonymous access on a non-loopback address. Real daemon, real sockets."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from edged.daemon.tokens import TokenStore
from harness.daemon import Daemon, clone_store, start_daemon


def call(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request with exactly these headers (http.client sends Host itself
    unless it is given)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=120)
    data = None if body is None else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    try:
        conn.request(method, path, body=data, headers=all_headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def tokens(daemon: Daemon) -> TokenStore:
    return TokenStore(Path(daemon.env["EDGED_TOKENS_FILE"]))


def test_host_header_must_name_the_listener(daemon: Daemon) -> None:
    url = daemon.http_url
    port = urlsplit(url).port
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.nip.io:{port}", ""):
        status, _, body = call(url, "GET", "/api/tags", headers={"Host": host})
        assert status == 403, host
        assert "does not serve the host" in body["error"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST"):
        assert call(url, "GET", "/api/tags", headers={"Host": host})[0] == 200, host


def test_web_page_origins_are_refused(daemon: Daemon) -> None:
    url = daemon.http_url
    for method, path in (
        ("GET", "/v1/models"),
        ("OPTIONS", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions"),
    ):
        status, headers, body = call(
            url,
            method,
            path,
            CHAT if method == "POST" else None,
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert status == 403 and "EDGED_ORIGINS" in body["error"]["message"]
        assert "access-control-allow-origin" not in headers


@pytest.fixture(scope="module")
def with_origin(tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("origins")
    clone_store(smollm2_store, root / "data")
    d = start_daemon(root, EDGED_ORIGINS="http://localhost:3000")
    yield d
    d.stop()


def test_configured_origin_gets_cors(with_origin: Daemon) -> None:
    url = with_origin.http_url
    status, headers, _ = call(
        url,
        "OPTIONS",
        "/v1/chat/completions",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert status == 204
    assert headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "authorization" in headers["access-control-allow-headers"].lower()
    status, headers, _ = call(url, "GET", "/api/tags", headers={"Origin": "http://localhost:3000"})
    assert status == 200 and headers["access-control-allow-origin"] == "http://localhost:3000"
    assert call(url, "GET", "/api/tags", headers={"Origin": "http://localhost:3001"})[0] == 403


def test_anonymous_requests_read_and_generate_only(daemon: Daemon) -> None:
    url = daemon.http_url
    assert call(url, "GET", "/v1/models")[0] == 200
    assert call(url, "POST", "/v1/chat/completions", CHAT)[0] == 200
    for method, path, body in (
        ("DELETE", "/api/delete", {"model": "smollm2"}),
        ("POST", "/api/pull", {"model": "smollm2"}),
    ):
        status, _, reply = call(url, method, path, body)
        assert status == 401, path
        assert "a token is needed" in reply["error"] and "edged token create" in reply["error"]
    # nothing was deleted
    assert any(m["name"].startswith("smollm2") for m in call(url, "GET", "/api/tags")[2]["models"])


def test_scoped_tokens(daemon: Daemon, tokens: TokenStore) -> None:
    url = daemon.http_url
    gen = tokens.create("http-gen", ["generate"])
    models = tokens.create("http-models", ["models", "read"])
    # a generate token may chat, not pull or delete
    assert call(url, "POST", "/v1/chat/completions", CHAT, bearer(gen))[0] == 200
    status, _, body = call(url, "POST", "/api/pull", {"model": "smollm2"}, bearer(gen))
    assert status == 403 and "'models' scope" in body["error"] and "http-gen" in body["error"]
    # Anthropic clients send x-api-key; the OpenAI SDK sends its api_key as a bearer
    assert call(url, "DELETE", "/api/delete", {"model": "nosuch"}, {"x-api-key": models})[0] == 404
    with openai.OpenAI(base_url=url + "/v1", api_key=gen, max_retries=0) as sdk:
        assert sdk.chat.completions.create(model="smollm2", messages=CHAT["messages"], max_tokens=2)
        # a revoked or made-up token is refused, never treated as anonymous
        assert tokens.revoke("http-gen")
        status, _, body = call(url, "POST", "/v1/chat/completions", CHAT, bearer(gen))
        assert status == 401 and "revoked" in body["error"]["message"]
        with pytest.raises(openai.AuthenticationError):
            sdk.chat.completions.create(model="smollm2", messages=CHAT["messages"], max_tokens=2)
        assert call(url, "GET", "/v1/models", headers=bearer("edt_" + "x" * 43))[0] == 401
        tokens.revoke("http-models")


def test_non_loopback_address_needs_tokens(tmp_path: Path, smollm2_store: Path) -> None:
    with pytest.raises(RuntimeError, match="non-loopback address"):
        start_daemon(tmp_path / "a", EDGED_HTTP="0.0.0.0:0")
    root = tmp_path / "b"
    clone_store(smollm2_store, root / "data")
    d = start_daemon(root, EDGED_HTTP="0.0.0.0:0", EDGED_HTTP_ANON="none")
    try:
        url = d.http_url.replace("0.0.0.0", "127.0.0.1")
        status, _, body = call(url, "GET", "/v1/models")
        assert status == 401 and "EDGED_HTTP_ANON is none" in body["error"]["message"]
        token = TokenStore(Path(d.env["EDGED_TOKENS_FILE"])).create("remote", ["read"])
        assert call(url, "GET", "/v1/models", headers=bearer(token))[0] == 200
    finally:
        d.stop()


_AS_OTHER_USER = """
import json, sys, urllib.request, urllib.error
url, token = sys.argv[1], sys.argv[2]
out = []
chat = {"model": "smollm2", "stream": False, "options": {"num_predict": 2},
        "messages": [{"role": "user", "content": "hi"}]}
for path, body in (("/v1/models", None), ("/api/chat", chat)):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            out.append(r.status)
    except urllib.error.HTTPError as e:
        out.append(e.code)
print(json.dumps(out))
"""


def test_another_users_process_needs_a_token(daemon: Daemon, tokens: TokenStore) -> None:
    """Loopback TCP lets every account in; anonymous access is for the daemon's
    own user only. A process running as ``nobody`` is refused without a token
    and served with one."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to run a client as another user")
    python = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"

    def as_nobody(token: str) -> list[int]:
        done = subprocess.run(
            ["runuser", "-u", "nobody", "--", python, "-c", _AS_OTHER_USER, daemon.http_url, token],
            capture_output=True,
            text=True,
            timeout=300,
            cwd="/",
        )
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))

    assert as_nobody("") == [401, 401]
    token = tokens.create("nobody", ["read", "generate"])
    try:
        assert as_nobody(token) == [200, 200]
    finally:
        tokens.revoke("nobody")
    # this user's own processes are still anonymous-allowed
    assert call(daemon.http_url, "GET", "/v1/models")[0] == 200
