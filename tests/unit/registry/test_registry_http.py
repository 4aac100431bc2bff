from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edged.common.errors import (
    Cancelled,
    DigestMismatch,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from edged.models_registry import ModelRef, PullProgress, Store, blob_name, pull
from edged.models_registry.http_source import HttpOptions, download


def partial_of(store: Store, digest: str) -> Path:
    return store.partial_dir / f"{blob_name(digest)}.part"


def cancel_at_half(total: int) -> tuple[threading.Event, Any]:
    cancel = threading.Event()

    def progress(p: PullProgress) -> None:
        if p.status == "downloading" and p.completed >= total // 2:
            cancel.set()

    return cancel, progress


def test_pull_a_url(store: Store, http_server: Any, tiny_gguf: bytes, kit: Any) -> None:
    url = http_server.add("/files/Tiny.Q4_1.gguf", kit.ServedFile(tiny_gguf))
    events: list[PullProgress] = []
    ref, m = pull(
        store, url + "?token=secret", digest=kit.sha256_digest(tiny_gguf), progress=events.append
    )
    assert ref == ModelRef("tiny.q4_1")
    assert m.source == url
    assert m.primary.filename == "Tiny.Q4_1.gguf"
    assert store.has_blob(m.primary.digest)
    assert list(store.partial_dir.iterdir()) == []
    assert list(store.locks_dir.iterdir()) == [store.locks_dir / "gc.lock"]
    downloads = [e for e in events if e.status == "downloading"]
    assert downloads[-1] == PullProgress("downloading", len(tiny_gguf), len(tiny_gguf))
    assert [e.completed for e in downloads] == sorted(e.completed for e in downloads)
    assert http_server.requests[0][1]["accept-encoding"] == "identity"


def test_pull_a_url_without_a_digest(
    store: Store, http_server: Any, tiny_gguf: bytes, kit: Any
) -> None:
    url = http_server.add("/m.gguf", kit.ServedFile(tiny_gguf))
    ref, m = pull(store, url, name="web")
    assert ref == ModelRef("web")
    assert m.primary.digest == kit.sha256_digest(tiny_gguf)
    assert list(store.partial_dir.iterdir()) == []


def test_http_errors(store: Store, http_server: Any, kit: Any) -> None:
    with pytest.raises(NotFound, match=r"http://127\.0\.0\.1:\d+/missing was not found \(HTTP 404"):
        download(store, http_server.url + "/missing")
    url = http_server.add("/boom", kit.ServedFile(b"", status=503))
    with pytest.raises(Unavailable, match="HTTP 503; try again later"):
        download(store, url)
    url = http_server.add("/private", kit.ServedFile(b"", status=403))
    with pytest.raises(Exception, match="refused"):
        download(store, url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable, match=f"cannot connect to http://127.0.0.1:{port}/x"):
        download(store, f"http://127.0.0.1:{port}/x")
    assert list(store.partial_dir.iterdir()) == []
    assert list(store.blobs_dir.iterdir()) == []


def test_wrong_digest_discards_everything(
    store: Store, http_server: Any, tiny_gguf: bytes, kit: Any
) -> None:
    url = http_server.add("/m.gguf", kit.ServedFile(tiny_gguf))
    before = kit.snapshot(store.root)
    with pytest.raises(DigestMismatch, match="the partial download was discarded"):
        pull(store, url, digest=kit.sha256_digest(b"not this"))
    assert kit.snapshot(store.root) == before


def test_invalid_gguf_from_a_url_leaves_the_store_as_it_was(
    store: Store, http_server: Any, tiny_gguf: bytes, kit: Any
) -> None:
    broken = tiny_gguf[:-10]
    url = http_server.add("/broken.gguf", kit.ServedFile(broken))
    before = kit.snapshot(store.root)
    with pytest.raises(Exception, match="truncated"):
        pull(store, url, digest=kit.sha256_digest(broken))
    assert kit.snapshot(store.root) == before


def test_size_limit(store: Store, http_server: Any, tiny_gguf: bytes, kit: Any) -> None:
    url = http_server.add("/m.gguf", kit.ServedFile(tiny_gguf))
    with pytest.raises(ResourceExhausted, match="more than the limit"):
        download(store, url, options=HttpOptions(max_size=100))


def big(kit: Any, size: int = 1 << 20) -> bytes:
    data: bytes = kit.build_gguf(tensors=kit.default_tensors(big=size))
    return data


def test_cancel_keeps_the_partial_and_the_next_pull_resumes(
    store: Store, http_server: Any, kit: Any
) -> None:
    data = big(kit)
    digest = kit.sha256_digest(data)
    served = kit.ServedFile(data, chunk=16 << 10, delay=0.01)
    url = http_server.add("/big.gguf", served)
    cancel, progress = cancel_at_half(len(data))
    with pytest.raises(Cancelled, match="run it again to resume"):
        pull(store, url, digest=digest, progress=progress, cancel=cancel)
    part = partial_of(store, digest)
    kept = part.stat().st_size
    assert 0 < kept < len(data)
    assert store.blob_digests() == [] and store.list_manifests() == []

    _ref, m = pull(store, url, digest=digest)
    assert m.primary.digest == digest
    headers = http_server.requests[-1][1]
    assert headers["range"] == f"bytes={kept}-"
    assert headers["if-range"] == served.etag
    assert store.verify_blob(digest)
    assert list(store.partial_dir.iterdir()) == []


@pytest.mark.parametrize("change", ["ignore_range", "new_etag", "complete_partial"])
def test_resume_restarts_when_the_server_will_not_continue(
    store: Store, http_server: Any, kit: Any, change: str
) -> None:
    data = big(kit)
    digest = kit.sha256_digest(data)
    served = kit.ServedFile(data, chunk=16 << 10, delay=0.01)
    url = http_server.add("/big.gguf", served)
    cancel, progress = cancel_at_half(len(data))
    with pytest.raises(Cancelled):
        download(store, url, digest, progress=progress, cancel=cancel)
    if change == "ignore_range":
        served.honor_range = False
    elif change == "new_etag":
        served.etag = '"changed"'
    else:  # all bytes arrived but the process died before moving them into blobs/
        partial_of(store, digest).write_bytes(data)
    assert download(store, url, digest) == digest
    assert http_server.ranges("/big.gguf")[-1] > 0
    # The complete partial gets a 416 and a second, plain request; the others a 200.
    assert len(http_server.requests) == (3 if change == "complete_partial" else 2)
    assert ("range" in http_server.requests[-1][1]) == (change != "complete_partial")
    assert store.verify_blob(digest)
    assert list(store.partial_dir.iterdir()) == []


def test_without_a_digest_nothing_is_kept_for_resume(
    store: Store, http_server: Any, kit: Any
) -> None:
    data = big(kit)
    url = http_server.add("/big.gguf", kit.ServedFile(data, chunk=16 << 10, delay=0.01))
    cancel, progress = cancel_at_half(len(data))
    with pytest.raises(Cancelled):
        download(store, url, progress=progress, cancel=cancel)
    assert list(store.partial_dir.iterdir()) == []
    assert download(store, url) == kit.sha256_digest(data)
    assert http_server.ranges("/big.gguf") == []


def test_a_dropped_connection_resumes(store: Store, http_server: Any, kit: Any) -> None:
    data = big(kit)
    digest = kit.sha256_digest(data)
    served = kit.ServedFile(data, chunk=16 << 10, cut_after=300_000)
    url = http_server.add("/big.gguf", served)
    no_retry = HttpOptions(max_retries=0)
    with pytest.raises(Unavailable, match="run the pull again to resume"):
        download(store, url, digest, options=no_retry)
    kept = partial_of(store, digest).stat().st_size
    assert 0 < kept <= 300_000
    served.cut_after = None
    assert download(store, url, digest) == digest
    assert http_server.ranges("/big.gguf") == [kept]


def test_concurrent_downloads_of_one_file_fetch_it_once(
    store: Store, http_server: Any, kit: Any
) -> None:
    data = big(kit, 256 << 10)
    digest = kit.sha256_digest(data)
    url = http_server.add("/big.gguf", kit.ServedFile(data, chunk=16 << 10, delay=0.005))
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(download(Store(store.root), url, digest))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [digest] * 3
    assert len(http_server.requests) == 1


_CHILD = """
import sys
from pathlib import Path
from edged.models_registry import Store, pull
pull(Store(Path(sys.argv[1])), sys.argv[2], digest=sys.argv[3], name="killed")
"""


def test_a_killed_pull_leaves_nothing_visible_and_resumes(
    store: Store, http_server: Any, kit: Any
) -> None:
    data = big(kit, 4 << 20)
    digest = kit.sha256_digest(data)
    url = http_server.add("/big.gguf", kit.ServedFile(data, chunk=64 << 10, delay=0.03))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(store.root), url, digest],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    part = partial_of(store, digest)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if part.exists() and part.stat().st_size >= len(data) // 2:
                break
            time.sleep(0.01)
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    kept = part.stat().st_size
    assert len(data) // 2 <= kept < len(data)
    assert store.blob_digests() == []
    assert store.list_manifests() == []
    assert list(store.manifests_dir.iterdir()) == []

    ref, m = pull(store, url, digest=digest, name="killed")
    assert ref == ModelRef("killed")
    assert m.primary.digest == digest
    starts = http_server.ranges("/big.gguf")
    assert len(starts) == 1 and starts[0] >= kept
    assert store.verify_blob(digest)
    assert list(store.partial_dir.iterdir()) == []
