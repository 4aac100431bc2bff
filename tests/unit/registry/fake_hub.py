"""A fake Hugging Face hub (and a plain file server) on 127.0.0.1.

It answers what huggingface_hub and edged ask: ``GET /api/models/{repo}[/revision/{rev}]``
(model_info), ``POST /api/models/{repo}/paths-info/{rev}`` (get_paths_info), and
``GET|HEAD /{repo}/resolve/{rev}/{path}`` with byte ranges. Every file is an LFS
file (its sha256 in paths-info) unless listed in ``not_lfs``. Knobs: revisions,
a gated repo with its token, a redirect of resolve to a "CDN" on another origin
(``localhost``), claimed hashes that lie, bodies cut part-way.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

SHA = "0123456789abcdef0123456789abcdef01234567"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()


@dataclass
class FakeServer:
    base: str = ""
    cdn_base: str = ""  # the same server under another origin: a CDN
    # hub: repo_id -> {listed name -> bytes, or None for listed but not served}
    repos: dict[str, dict[str, bytes | None]] = field(default_factory=dict)
    # plain: URL path -> bytes
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    # (request line, lower-cased headers) of every request
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    revisions: dict[str, str] = field(default_factory=lambda: {"main": SHA})
    not_lfs: set[str] = field(default_factory=set)  # "repo_id/path" kept in git
    claimed_sha256: dict[str, str] = field(default_factory=dict)  # "repo_id/path" -> hex
    claimed_git_sha1: dict[str, str] = field(default_factory=dict)  # "repo_id/path" -> hex
    gated: dict[str, str] = field(default_factory=dict)  # repo_id -> the token that opens it
    redirect_to_cdn: bool = False
    cut_after: int = 0  # when > 0, GET bodies of resolve/CDN end after this many bytes...
    cuts_left: int = 0  # ...this many times
    body_bytes: int = 0  # body bytes sent for resolve/CDN GETs
    lock: threading.Lock = field(default_factory=threading.Lock)

    def commit(self, revision: str) -> str | None:
        if revision in self.revisions:
            return self.revisions[revision]
        return revision if revision in self.revisions.values() else None


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "fake/1"
    protocol_version = "HTTP/1.1"
    state: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_POST(self) -> None:
        st = self.state
        path = unquote(urlsplit(self.path).path)
        self._record(path)
        length = int(self.headers.get("Content-Length", "0"))
        form = parse_qs(self.rfile.read(length).decode())
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/paths-info/(.+)", path)
        if m is None:
            return self._error(404, "", "not found")
        repo = st.repos.get(m.group(1))
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if st.commit(m.group(2)) is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        out = []
        for p in form.get("paths", []):
            data = repo.get(p)
            if p not in repo or data is None:
                continue
            key = f"{m.group(1)}/{p}"
            entry: dict[str, Any] = {
                "type": "file",
                "path": p,
                "size": len(data),
                "oid": st.claimed_git_sha1.get(key, git_blob_sha1(data)),
            }
            if key not in st.not_lfs:
                sha = st.claimed_sha256.get(key, hashlib.sha256(data).hexdigest())
                entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
            out.append(entry)
        return self._reply(200, json.dumps(out).encode(), True, "application/json")

    def _record(self, path: str) -> None:
        with self.state.lock:
            self.state.requests.append(f"{self.command} {path}")
            self.state.seen.append(
                (f"{self.command} {path}", {k.lower(): v for k, v in self.headers.items()})
            )

    def _serve(self, body: bool) -> None:
        st = self.state
        path = unquote(urlsplit(self.path).path)
        self._record(path)
        if path.startswith("/api/models/"):
            repo_id, _, revision = path[len("/api/models/") :].partition("/revision/")
            repo = st.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            commit = st.commit(revision or "main")
            if commit is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            info = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "siblings": [{"rfilename": name} for name in repo],
            }
            return self._reply(200, json.dumps(info).encode(), body, "application/json")
        cdn = path.startswith("/cdn/")
        parts = path.lstrip("/").split("/", 4)
        if cdn:
            parts = path[len("/cdn/") :].split("/", 2)
            parts = [parts[0], parts[1], "resolve", SHA, parts[2]] if len(parts) == 3 else []
        if len(parts) == 5 and parts[2] == "resolve":
            repo_id = f"{parts[0]}/{parts[1]}"
            repo = st.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            if not cdn and st.commit(parts[3]) is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            if not cdn and repo_id in st.gated:
                sent = self.headers.get("Authorization")
                if sent is None:
                    return self._error(401, "GatedRepo", "Access to this repo is restricted")
                if sent != f"Bearer {st.gated[repo_id]}":
                    return self._error(403, "GatedRepo", "Access to this repo is restricted")
            data = repo.get(parts[4])
            if data is None:
                return self._error(404, "EntryNotFound", "Entry not found")
            if not cdn and st.redirect_to_cdn:
                return self._redirect(f"{st.cdn_base}/cdn/{repo_id}/{parts[4]}?sig=secret")
            return self._reply(200, data, body, "application/octet-stream", ranges=True)
        data = st.files.get(path)
        if data is None:
            return self._error(404, "", "not found")
        return self._reply(200, data, body, "application/octet-stream")

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("X-Repo-Commit", SHA)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _reply(
        self, code: int, data: bytes, body: bool, ctype: str, *, ranges: bool = False
    ) -> None:
        etag = '"' + hashlib.sha256(data).hexdigest() + '"'
        start, end = 0, len(data)
        m = _RANGE.fullmatch(self.headers.get("Range", "")) if ranges else None
        if_range = self.headers.get("If-Range")
        if m is not None and (if_range is None or if_range == etag):
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, len(data)) if m.group(2) else len(data)
            code = 206
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(end - start))
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        if ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("X-Repo-Commit", SHA)
        self.end_headers()
        if not body:
            return
        if not ranges:
            self.wfile.write(data)
            return
        self._body(data[start:end])

    def _body(self, data: bytes) -> None:
        st = self.state
        with st.lock:
            cut = st.cut_after if st.cuts_left > 0 and st.cut_after < len(data) else 0
            if cut:
                st.cuts_left -= 1
        try:
            view = memoryview(data[:cut] if cut else data)
            for pos in range(0, len(view), 1 << 16):
                piece = view[pos : pos + (1 << 16)]
                self.wfile.write(piece)
                with st.lock:
                    st.body_bytes += len(piece)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        if cut:
            self.close_connection = True

    def _error(self, code: int, error_code: str, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(code)
        if error_code:
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


@contextmanager
def serve() -> Iterator[FakeServer]:
    state = FakeServer()
    handler = type("Handler", (_Handler,), {"state": state})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    port = server.server_address[1]
    state.base = f"http://127.0.0.1:{port}"
    state.cdn_base = f"http://localhost:{port}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
