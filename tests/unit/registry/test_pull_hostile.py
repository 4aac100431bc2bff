"""Pulls against a hostile registry: a real HTTP (and HTTPS) server on loopback.

Each misbehaviour ends the way it should (an edged error, or a clean recovery),
and a failed pull leaves nothing visible in the store: no manifest, no blob, and
a partial file only where resuming it is correct (an expected digest was given).
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trustme

from edged.common.errors import (
    Cancelled,
    DigestMismatch,
    EdgedError,
    FailedPrecondition,
    InvalidArgument,
    InvalidModelHeader,
    ModelNotFound,
    Unavailable,
)
from edged.models_registry import ModelRef, PullProgress, Store, blob_name, pull
from edged.models_registry.http_client import check_redirect
from edged.models_registry.http_source import DownloadState, HttpOptions

FAST = HttpOptions(
    connect_timeout=2.0,
    stall_timeout=0.3,
    retry_backoff=0.01,
    max_retries=2,
    parallel_min_size=256 << 10,
    connections=4,
    chunk_size=16 << 10,
)
ONE_STREAM = HttpOptions(
    connect_timeout=2.0, stall_timeout=0.3, retry_backoff=0.01, max_retries=2, connections=1
)


# --- the fake registry --------------------------------------------------------------------


@dataclass
class Behavior:
    data: bytes
    etag: str = '"v1"'
    accept_ranges: bool = True  # announce "Accept-Ranges: bytes"
    honor_range: bool = True  # answer Range with 206 (else a full 200)
    length: bool = True  # send Content-Length
    declared_extra: int = 0  # Content-Length claims this many bytes more than exist
    range_overrun: int = 0  # junk bytes after each 206 body (no Content-Length then)
    reset_at: int | None = None  # RST the connection when the body reaches this offset
    resets: int = 1 << 30  # how many bodies get reset
    stall: float = 0.0  # seconds of silence before the status line, then close
    redirect: str | None = None  # answer 302 to this Location
    chunk: int = 16 << 10
    delay: float = 0.0  # seconds between chunks


@dataclass
class Body:
    """One GET body the server sent."""

    path: str
    status: int
    start: int
    end: int  # exclusive
    sent: int = 0
    complete: bool = False
    range_header: str = ""
    # Set when the handler has finished with this body: the client can read
    # the last byte before the server thread records ``complete``.
    finished: threading.Event = field(default_factory=threading.Event)


@dataclass
class Registry:
    url: str = ""
    paths: dict[str, Behavior] = field(default_factory=dict)
    bodies: list[Body] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, behavior: Behavior) -> str:
        self.paths[path] = behavior
        return self.url + path

    def served(self, path: str) -> list[Body]:
        """The bodies sent for ``path``, once their handlers are done (2 s at most)."""
        with self.lock:
            bodies = [b for b in self.bodies if b.path == path]
        deadline = time.monotonic() + 2.0
        for b in bodies:
            b.finished.wait(max(0.0, deadline - time.monotonic()))
        return bodies


class _Handler(http.server.BaseHTTPRequestHandler):
    registry: Registry

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().finish()

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def do_GET(self) -> None:
        self._handle(head=False)

    def _handle(self, head: bool) -> None:
        reg = self.registry
        path = self.path.split("?", 1)[0]
        if head:
            reg.heads.append(path)
        b = reg.paths.get(path)
        if b is None:
            self._empty(404)
            return
        if b.stall:
            reg.release.wait(b.stall)
            self.close_connection = True
            return
        if b.redirect is not None:
            self.send_response(302)
            self.send_header("Location", b.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = len(b.data) + b.declared_extra
        start, end, status = 0, size, 200
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        if m and b.honor_range and (if_range is None or if_range == b.etag):
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, size) if m.group(2) else size
            if start >= size:
                self._empty(416, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        overrun = b.range_overrun if status == 206 else 0
        if b.length and not overrun:
            self.send_header("Content-Length", str(end - start))
        self.send_header("ETag", b.etag)
        if b.accept_ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if head:
            return
        body = Body(path, status, start, end, range_header=self.headers.get("Range", ""))
        with reg.lock:
            reg.bodies.append(body)
        try:
            self._body(b, body, min(end, len(b.data)), overrun)
        finally:
            body.finished.set()

    def _body(self, b: Behavior, body: Body, stop: int, overrun: int) -> None:
        pos = body.start
        try:
            while pos < stop:
                piece = b.data[pos : min(pos + b.chunk, stop)]
                if b.reset_at is not None and pos <= b.reset_at < pos + len(piece):
                    with self.registry.lock:
                        reset = b.resets > 0
                        b.resets -= 1
                    if reset:
                        self.wfile.write(piece[: b.reset_at - pos])
                        body.sent += b.reset_at - pos
                        self._reset()
                        return
                self.wfile.write(piece)
                pos += len(piece)
                body.sent += len(piece)
                if b.delay:
                    time.sleep(b.delay)
            if overrun:
                self.wfile.write(b"X" * overrun)
            self.wfile.flush()
            body.complete = pos == body.end and not b.declared_extra
            if b.declared_extra or overrun:
                self.close_connection = True
        except OSError:
            self.close_connection = True

    def _reset(self) -> None:
        self.wfile.flush()
        time.sleep(0.2)  # let the client read what was sent: an RST drops unread data
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _empty(self, code: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets and closed sockets are the point of this server


def _serve(tls: ssl.SSLContext | None = None) -> tuple[Registry, _Server, threading.Thread]:
    reg = Registry()
    handler = type("Handler", (_Handler,), {"registry": reg})
    httpd = _Server(("127.0.0.1", 0), handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    reg.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return reg, httpd, thread


def _stop(reg: Registry, httpd: _Server, thread: threading.Thread) -> None:
    reg.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def registry() -> Iterator[Registry]:
    reg, httpd, thread = _serve()
    try:
        yield reg
    finally:
        _stop(reg, httpd, thread)


# --- helpers ------------------------------------------------------------------------------


def model(kit: Any, size: int = 1 << 20) -> bytes:
    data: bytes = kit.build_gguf(tensors=kit.default_tensors(big=size))
    return data


@dataclass
class Visible:
    manifests: list[tuple[ModelRef, Any]]
    blobs: list[str]

    @classmethod
    def of(cls, store: Store) -> Visible:
        return cls(store.list_manifests(), store.blob_digests())


def assert_nothing_visible(store: Store, before: Visible, *, partial_ok: bool = False) -> None:
    assert Visible.of(store) == before
    assert [p.name for p in store.tmp_dir.iterdir()] == []
    partial = sorted(p.name for p in store.partial_dir.iterdir())
    if not partial_ok:
        assert partial == []
    else:
        assert all(n.startswith("sha256-") for n in partial), partial


def cancel_at(fraction: float, total: int) -> tuple[threading.Event, Any]:
    cancel = threading.Event()

    def progress(p: PullProgress) -> None:
        if p.status == "downloading" and p.completed >= total * fraction:
            cancel.set()

    return cancel, progress


# --- the cases ----------------------------------------------------------------------------


@pytest.mark.parametrize("options", [FAST, ONE_STREAM], ids=["ranges", "one-stream"])
def test_wrong_digest(store: Store, registry: Registry, kit: Any, options: HttpOptions) -> None:
    url = registry.add("/m.gguf", Behavior(model(kit)))
    before = Visible.of(store)
    with pytest.raises(DigestMismatch, match="does not match the expected digest"):
        pull(store, url, digest=kit.sha256_digest(b"other"), options=options)
    assert_nothing_visible(store, before)


@pytest.mark.parametrize("digest", [True, False])
def test_short_body(store: Store, registry: Registry, kit: Any, digest: bool) -> None:
    data = model(kit)
    url = registry.add("/m.gguf", Behavior(data, declared_extra=1000))
    before = Visible.of(store)
    want = kit.sha256_digest(data) if digest else None
    with pytest.raises(Unavailable, match="gave up after"):
        pull(store, url, digest=want, options=FAST)
    # With a digest the real bytes so far may stay to resume; without, nothing does.
    assert_nothing_visible(store, before, partial_ok=digest)


def test_extra_bytes_fail_the_digest(store: Store, registry: Registry, kit: Any) -> None:
    data = model(kit)
    url = registry.add("/m.gguf", Behavior(data + b"appended junk"))
    before = Visible.of(store)
    for options in (FAST, ONE_STREAM):
        with pytest.raises(DigestMismatch):
            pull(store, url, digest=kit.sha256_digest(data), options=options)
        assert_nothing_visible(store, before)


def test_extra_bytes_in_a_range_reply_fall_back_to_one_stream(
    store: Store, registry: Registry, kit: Any
) -> None:
    data = model(kit)
    url = registry.add("/m.gguf", Behavior(data, range_overrun=4096))
    _ref, m = pull(store, url, digest=kit.sha256_digest(data), options=FAST)
    assert store.verify_blob(m.primary.digest)
    served = registry.served("/m.gguf")
    assert any(b.status == 206 for b in served)
    assert served[-1].status == 200 and served[-1].complete
    assert list(store.partial_dir.iterdir()) == []


def test_extra_bytes_without_a_digest_are_refused(
    store: Store, registry: Registry, kit: Any
) -> None:
    """No Content-Length and more bytes than the size limit: refused, nothing kept."""
    url = registry.add("/m.gguf", Behavior(model(kit), length=False))
    before = Visible.of(store)
    small = HttpOptions(max_size=100_000, connections=1, stall_timeout=1.0)
    with pytest.raises(EdgedError, match="more than the limit"):
        pull(store, url, options=small)
    assert_nothing_visible(store, before)


def test_connection_reset_mid_body(store: Store, registry: Registry, kit: Any) -> None:
    data = model(kit)
    digest = kit.sha256_digest(data)
    behavior = Behavior(data, reset_at=300_000)
    url = registry.add("/m.gguf", behavior)
    before = Visible.of(store)
    with pytest.raises(Unavailable, match="run the pull again to resume"):
        pull(store, url, digest=digest, options=ONE_STREAM)
    assert_nothing_visible(store, before, partial_ok=True)
    kept = (store.partial_dir / f"{blob_name(digest)}.part").stat().st_size
    assert 0 < kept <= 300_000  # what arrived before the reset, in whole read chunks
    behavior.reset_at = None
    _ref, m = pull(store, url, digest=digest, options=ONE_STREAM)
    assert store.verify_blob(m.primary.digest)
    assert registry.served("/m.gguf")[-1].start == kept
    assert list(store.partial_dir.iterdir()) == []


@pytest.mark.parametrize("options", [FAST, ONE_STREAM], ids=["ranges", "one-stream"])
def test_one_reset_is_retried_in_the_same_pull(
    store: Store, registry: Registry, kit: Any, options: HttpOptions
) -> None:
    data = model(kit)
    url = registry.add("/m.gguf", Behavior(data, reset_at=600_000, resets=1))
    _ref, m = pull(store, url, digest=kit.sha256_digest(data), options=options)
    assert store.verify_blob(m.primary.digest)
    served = registry.served("/m.gguf")
    cut = [b for b in served if not b.complete]
    assert len(cut) == 1
    # The retry continued where the reset cut it (give or take one read chunk).
    resumed = [b for b in served if cut[0].start < b.start < cut[0].end]
    assert len(resumed) == 1, [(b.start, b.end, b.range_header) for b in served]
    assert 600_000 - options.chunk_size <= resumed[0].start <= 600_000
    assert sum(b.sent for b in served) <= len(data) + options.chunk_size


@pytest.mark.parametrize("digest", [True, False])
def test_stall_before_the_first_byte(
    store: Store, registry: Registry, kit: Any, digest: bool
) -> None:
    data = model(kit)
    url = registry.add("/m.gguf", Behavior(data, stall=60))
    before = Visible.of(store)
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"stalled: no data for 0\.3 s.*gave up after 3 tries"):
        pull(store, url, digest=kit.sha256_digest(data) if digest else None, options=FAST)
    assert time.monotonic() - started < 10
    assert_nothing_visible(store, before)


def test_redirect_loops(store: Store, registry: Registry, kit: Any) -> None:
    registry.add("/a", Behavior(b"", redirect="/b"))
    url = registry.add("/b", Behavior(b"", redirect=registry.url + "/a"))
    for i in range(20):
        registry.add(f"/hop/{i}", Behavior(b"", redirect=f"/hop/{i + 1}"))
    before = Visible.of(store)
    with pytest.raises(FailedPrecondition, match="redirects in a loop"):
        pull(store, url, options=FAST)
    with pytest.raises(FailedPrecondition, match="redirects more than 10 times"):
        pull(store, registry.url + "/hop/0", options=FAST)
    assert_nothing_visible(store, before)


def test_a_bounded_redirect_chain_is_followed(store: Store, registry: Registry, kit: Any) -> None:
    data = model(kit)
    registry.add("/final.gguf", Behavior(data))
    for i in range(3):
        registry.add(f"/r{i}", Behavior(b"", redirect=f"/r{i + 1}"))
    registry.add("/r3", Behavior(b"", redirect="/final.gguf"))
    _ref, m = pull(store, registry.url + "/r0", digest=kit.sha256_digest(data), options=FAST)
    assert store.verify_blob(m.primary.digest)


def test_redirect_policy() -> None:
    https, http = httpx.URL("https://a.example/x"), httpx.URL("http://a.example/x")
    check_redirect(http, https)
    check_redirect(https, httpx.URL("https://b.example/y"))
    check_redirect(http, httpx.URL("http://c.example/"))
    with pytest.raises(FailedPrecondition, match="from https to plain http"):
        check_redirect(https, http)
    with pytest.raises(InvalidArgument, match="unsupported URL"):
        check_redirect(http, httpx.URL("file:///etc/passwd"))


@pytest.fixture
def tls_registry() -> Iterator[tuple[Registry, httpx.HTTPTransport]]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    reg, httpd, thread = _serve(server_ctx)
    try:
        yield reg, httpx.HTTPTransport(verify=client_ctx)
    finally:
        _stop(reg, httpd, thread)


def test_https_to_http_redirect_is_refused(
    store: Store,
    registry: Registry,
    tls_registry: tuple[Registry, httpx.HTTPTransport],
    kit: Any,
) -> None:
    tls, transport = tls_registry
    data = model(kit)
    options = HttpOptions(transport=transport, stall_timeout=2.0)
    # The control: TLS works, and an https -> https redirect is followed.
    tls.add("/real.gguf", Behavior(data))
    same = tls.add("/same", Behavior(b"", redirect=tls.url + "/real.gguf"))
    _ref, m = pull(store, same, digest=kit.sha256_digest(data), options=options, name="ok")
    assert store.verify_blob(m.primary.digest)
    # The downgrade: https -> plain http is refused before any request goes there.
    plain = registry.add("/m.gguf", Behavior(model(kit, 1 << 19)))
    url = tls.add("/down", Behavior(b"", redirect=plain))
    before = Visible.of(store)
    with pytest.raises(FailedPrecondition, match="from https to plain http"):
        pull(store, url, options=options)
    assert registry.bodies == [] and registry.heads == []
    assert_nothing_visible(store, before)


@pytest.mark.parametrize("digest", [True, False])
def test_no_content_length(store: Store, registry: Registry, kit: Any, digest: bool) -> None:
    data = model(kit)
    url = registry.add("/m.gguf", Behavior(data, length=False))
    _ref, m = pull(store, url, digest=kit.sha256_digest(data) if digest else None, options=FAST)
    assert m.primary.digest == kit.sha256_digest(data)
    assert store.verify_blob(m.primary.digest)
    assert [b.status for b in registry.served("/m.gguf")] == [200]  # one stream: no size


def test_no_content_length_and_a_wrong_digest(store: Store, registry: Registry, kit: Any) -> None:
    url = registry.add("/m.gguf", Behavior(model(kit), length=False))
    before = Visible.of(store)
    with pytest.raises(DigestMismatch):
        pull(store, url, digest=kit.sha256_digest(b"x"), options=FAST)
    assert_nothing_visible(store, before)


def test_200_instead_of_206_on_resume(store: Store, registry: Registry, kit: Any) -> None:
    data = model(kit)
    digest = kit.sha256_digest(data)
    behavior = Behavior(data, delay=0.005)
    url = registry.add("/m.gguf", behavior)
    cancel, progress = cancel_at(0.5, len(data))
    with pytest.raises(Cancelled, match="run it again to resume"):
        pull(store, url, digest=digest, options=ONE_STREAM, progress=progress, cancel=cancel)
    assert store.blob_digests() == [] and store.list_manifests() == []
    behavior.honor_range = False
    _ref, m = pull(store, url, digest=digest, options=ONE_STREAM)
    assert store.verify_blob(m.primary.digest)
    last = registry.served("/m.gguf")[-1]
    assert last.range_header.startswith("bytes=") and last.range_header != "bytes=0-"
    assert last.status == 200 and last.complete and last.start == 0
    assert list(store.partial_dir.iterdir()) == []


def test_ranges_announced_but_not_served(store: Store, registry: Registry, kit: Any) -> None:
    data = model(kit)
    url = registry.add("/m.gguf", Behavior(data, honor_range=False))
    _ref, m = pull(store, url, digest=kit.sha256_digest(data), options=FAST)
    assert store.verify_blob(m.primary.digest)
    served = registry.served("/m.gguf")
    assert served[-1].status == 200 and served[-1].complete and served[-1].range_header == ""


def test_parallel_ranges_resume_each_range_after_a_cancel(
    store: Store, registry: Registry, kit: Any
) -> None:
    data = model(kit, 2 << 20)
    digest = kit.sha256_digest(data)
    url = registry.add("/m.gguf", Behavior(data, delay=0.01))
    cancel, progress = cancel_at(0.4, len(data))
    before = Visible.of(store)
    with pytest.raises(Cancelled, match="run it again to resume"):
        pull(store, url, digest=digest, options=FAST, progress=progress, cancel=cancel)
    assert_nothing_visible(store, before, partial_ok=True)
    state_path = store.partial_dir / f"{blob_name(digest)}.json"
    state = DownloadState.from_json(state_path.read_bytes())
    assert state is not None and len(state.ranges) == 4 and state.size == len(data)
    assert all(start < pos < end for start, end, pos in state.ranges), state.ranges
    first = len(registry.bodies)

    _ref, m = pull(store, url, digest=digest, options=FAST)
    assert store.verify_blob(m.primary.digest)
    resumed = sorted(b.start for b in registry.bodies[first:])
    assert resumed == sorted(pos for _s, _e, pos in state.ranges)
    assert list(store.partial_dir.iterdir()) == []


def test_a_bad_gguf_header_is_invalid_argument(store: Store, registry: Registry, kit: Any) -> None:
    data = bytearray(model(kit))
    data[8:16] = struct.pack("<Q", 1 << 40)  # an absurd tensor count
    url = registry.add("/bad.gguf", Behavior(bytes(data)))
    before = Visible.of(store)
    with pytest.raises(InvalidModelHeader, match="tensors") as info:
        pull(store, url, digest=kit.sha256_digest(bytes(data)), options=FAST)
    assert isinstance(info.value, InvalidArgument)
    assert_nothing_visible(store, before)


def test_the_daemon_answers_a_bad_gguf_with_invalid_argument(tmp_path: Path, kit: Any) -> None:
    from edged.v1 import edged_pb2 as pb
    from harness.daemon import start_daemon

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(model(kit)[:-100])  # the last tensor runs past the end
    d = start_daemon(tmp_path / "d")
    try:
        with pytest.raises(grpc.RpcError) as info:
            for _ in d.models.Pull(pb.PullRequest(source=str(bad)), timeout=60):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "truncated" in (info.value.details() or "")
        assert str(tmp_path) not in (info.value.details() or "")
        assert list(d.models.List(pb.ListModelsRequest(), timeout=10).models) == []
    finally:
        d.stop()


# --- eight pulls of one model at once, beside delete and GC --------------------------------


def test_eight_parallel_pulls_download_once_beside_delete_and_gc(
    store: Store, registry: Registry, kit: Any
) -> None:
    data = model(kit, 2 << 20)
    digest = kit.sha256_digest(data)
    other = model(kit, 300_000)  # a second model that must survive all along
    url = registry.add("/m.gguf", Behavior(data, delay=0.01))
    keep_url = registry.add("/keep.gguf", Behavior(other))
    pull(Store(store.root), keep_url, digest=kit.sha256_digest(other), name="keep", options=FAST)
    ref = ModelRef("shared")
    start = threading.Barrier(9)
    done = threading.Event()
    results: list[str] = []
    errors: list[BaseException] = []
    lost: list[str] = []

    def puller() -> None:
        try:
            start.wait()
            _r, m = pull(Store(store.root), url, digest=digest, name="shared", options=FAST)
            results.append(m.primary.digest)
        except BaseException as exc:
            errors.append(exc)

    def deleter() -> None:
        mine = Store(store.root)
        start.wait()
        rounds = 0
        while not done.is_set() or rounds < 3:
            rounds += 1
            with contextlib.suppress(ModelNotFound):
                mine.delete(ref)
            mine.gc()
            with mine.pinned():  # no GC now: every listed manifest's blobs must be there
                for r, m in mine.list_manifests():
                    lost.extend(f"{r}:{d}" for d in m.digests if not mine.has_blob(d))
            time.sleep(0.005)

    threads = [threading.Thread(target=puller) for _ in range(8)]
    threads.append(threading.Thread(target=deleter))
    for t in threads:
        t.start()
    for t in threads[:8]:
        t.join(timeout=120)
    done.set()
    threads[8].join(timeout=60)
    assert not errors, errors
    assert results == [digest] * 8
    assert lost == []

    # Exactly one download: every byte of the model was served once, by completed bodies.
    served = registry.served("/m.gguf")
    assert all(b.complete for b in served), [(b.start, b.sent) for b in served]
    spans = sorted((b.start, b.end) for b in served)
    assert len(spans) == 4
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert len(registry.heads) == 1 + 1  # one probe per digest (this model and "keep")

    # The store is consistent: every manifest's blobs exist and hash to their names.
    final = Store(store.root)
    assert [str(r) for r, _m in final.list_manifests()][:1] == ["keep:latest"]
    for _r, m in final.list_manifests():
        for d in m.digests:
            assert final.verify_blob(d), d
    assert list(final.partial_dir.iterdir()) == []
