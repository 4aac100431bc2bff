"""The SIGKILL loop behind tests/integration/test_store_crash.py (a few iterations,
in CI) and scripts/kill_loop.py (hundreds): a real daemon pulls a GGUF file
from a throttled loopback HTTP server, deletes models and garbage-collects, and
is SIGKILLed at a random moment; after each restart `edged verify` must find no
problem, and an interrupted pull must complete when run again.

Also here: a tiny valid GGUF writer and the loopback file server (Range, HEAD,
ETag, throttling, an optional missing Content-Length), shared with
tests/integration/test_store_full_disk.py.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from edged.models_registry.store import Store
from edged.models_registry.verify import verify
from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, daemon_env, start_daemon

MODEL = "crash"

# -- a tiny, valid GGUF file ------------------------------------------------------------


def _gguf_str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def tiny_gguf(size: int, salt: str = "") -> bytes:
    """A valid GGUF v3 of about ``size`` bytes: llama metadata and one F32 tensor of
    varied bytes. ``salt`` changes its content (and so its digest)."""
    kv = [
        (_gguf_str("general.architecture"), 8, _gguf_str("llama")),
        (_gguf_str("general.name"), 8, _gguf_str(f"crash test {salt}")),
        (_gguf_str("llama.context_length"), 4, struct.pack("<I", 256)),
    ]
    n = max(1, size // 4)
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kv))
    for key, vtype, value in kv:
        header += key + struct.pack("<I", vtype) + value
    header += _gguf_str("output.weight") + struct.pack("<I", 1) + struct.pack("<Q", n)
    header += struct.pack("<IQ", 0, 0)  # F32, offset 0
    header += bytes(-len(header) % 32)
    seed = hashlib.sha256(salt.encode()).digest()
    block = hashlib.sha256(seed).digest() * 128  # 4 KiB, cheap to repeat
    data = (block * (n * 4 // len(block) + 1))[: n * 4]
    return header + data


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- a loopback file server -------------------------------------------------------------


@dataclass
class Served:
    data: bytes
    delay: float = 0.0  # seconds between chunks
    chunk: int = 64 << 10
    content_length: bool = True

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'


@dataclass
class FileServer:
    url: str = ""
    files: dict[str, Served] = field(default_factory=dict)
    gets: list[tuple[str, str]] = field(default_factory=list)  # (path, Range header)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, served: Served) -> str:
        with self._lock:
            self.files[path] = served
        return self.url + path

    def requests_for(self, path: str) -> list[str]:
        with self._lock:
            return [r for p, r in self.gets if p == path]


class _Handler(http.server.BaseHTTPRequestHandler):
    state: FileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._reply(body=False)

    def do_GET(self) -> None:
        self._reply(body=True)

    def _reply(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        served = self.state.files.get(path)
        rng = self.headers.get("Range", "")
        if body:
            with self.state._lock:
                self.state.gets.append((path, rng))
        if served is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = len(served.data)
        start, end = 0, size
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
        if_range = self.headers.get("If-Range")
        if m and served.content_length and if_range in (None, served.etag):
            start = int(m.group(1))
            end = int(m.group(2)) + 1 if m.group(2) else size
        if start >= size > 0 and m:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if m and (start, end) != (0, size) else 200)
        if (start, end) != (0, size):
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        if served.content_length:
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", served.etag)
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self._body(served, start, end)

    def _body(self, served: Served, start: int, end: int) -> None:
        try:
            for pos in range(start, end, served.chunk):
                self.wfile.write(served.data[pos : min(pos + served.chunk, end)])
                self.wfile.flush()
                if served.delay:
                    time.sleep(served.delay)
        except OSError:  # the daemon was killed mid-body
            self.close_connection = True


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client killed mid-request: expected here


@contextmanager
def file_server() -> Iterator[FileServer]:
    state = FileServer()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# -- the loop ---------------------------------------------------------------------------


class CrashFailure(AssertionError):
    """An iteration found the store damaged after a restart (details in the message)."""


@dataclass
class LoopResult:
    iterations: int = 0
    seconds: float = 0.0
    kills: dict[str, int] = field(default_factory=dict)  # op -> daemon/process kills
    phases: dict[str, int] = field(default_factory=dict)  # where the kill landed
    resumed: int = 0  # re-pulls that continued a partial file (a Range request)
    reused: int = 0  # re-pulls that found the blob already stored
    cli_verifies: int = 0
    log: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.iterations} iterations in {self.seconds / 60:.1f} min; kills by op "
            f"{dict(sorted(self.kills.items()))}; landed {dict(sorted(self.phases.items()))}; "
            f"re-pulls resumed {self.resumed}, found stored {self.reused}; "
            f"CLI verify runs {self.cli_verifies}; failures 0"
        )


class CrashLoop:
    """Drives one daemon through kill/restart cycles in ``root``."""

    def __init__(
        self,
        root: Path,
        server: FileServer,
        *,
        seed: int = 0,
        size: tuple[int, int] = (1 << 20, 3 << 20),
        seconds_per_pull: float = 0.5,
        cli_verify_every: int = 25,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.root = root
        self.server = server
        self.rng = random.Random(seed)
        self.size = size
        self.seconds_per_pull = seconds_per_pull
        self.cli_verify_every = cli_verify_every
        self.echo = echo
        self.result = LoopResult()
        self.daemon: Daemon | None = None
        self.store = Store(root / "data" / "models")
        self.served: tuple[str, str, bool] | None = None  # url, digest, digest given
        self.pull_time = seconds_per_pull
        self.delete_time = 0.02
        self.gc_cli_time = 1.0
        self._kill_lock = threading.Lock()

    # -- the daemon ------------------------------------------------------------------

    def start(self) -> Daemon:
        if self.daemon is None or self.daemon.proc.poll() is not None:
            self.daemon = start_daemon(self.root)
        return self.daemon

    def kill(self) -> None:
        with self._kill_lock:
            if self.daemon is not None:
                self.daemon.proc.send_signal(signal.SIGKILL)
                self.daemon.proc.wait(timeout=30)
                self.daemon.channel.close()
                self.daemon = None

    def close(self) -> None:
        if self.daemon is not None and self.daemon.proc.poll() is None:
            self.daemon.stop()
        self.daemon = None

    # -- one iteration ---------------------------------------------------------------

    def run(self, iterations: int) -> LoopResult:
        started = time.monotonic()
        try:
            self.start()
            self._calibrate()
            for i in range(iterations):
                op = self._choose()
                getattr(self, f"_op_{op}")(i)
                self.result.kills[op] = self.result.kills.get(op, 0) + 1
                self.start()
                self._check(i, op)
                if self.cli_verify_every and (i + 1) % self.cli_verify_every == 0:
                    self._cli_verify()
                self.result.iterations = i + 1
                if self.echo is not None and (i + 1) % 10 == 0:
                    elapsed = time.monotonic() - started
                    self.echo(f"{i + 1}/{iterations} iterations, {elapsed:.0f} s")
            self._cli_verify()
        finally:
            self.result.seconds = time.monotonic() - started
            self.close()
        return self.result

    def _choose(self) -> str:
        if not self._has_model():
            return "pull"
        return self.rng.choice(["pull", "pull", "pull", "delete", "delete", "gc"])

    def _has_model(self) -> bool:
        return any(ref.name == MODEL for ref, _ in self.store.list_manifests())

    def _calibrate(self) -> None:
        """Time one whole pull and one delete, unkilled, to aim the kills."""
        url, digest, _ = self._new_file("calibrate", with_digest=True)
        t = time.monotonic()
        self._pull(url, digest)
        self.pull_time = time.monotonic() - t
        t = time.monotonic()
        self._daemon().models.Delete(pb.ModelRef(model=MODEL), timeout=30)
        self.delete_time = time.monotonic() - t
        t = time.monotonic()
        self._gc_process("--dry-run").communicate(timeout=120)
        self.gc_cli_time = time.monotonic() - t
        self.store.collect(grace_s=0)

    def _gc_process(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "edged.daemon.cli.main", "gc", "--json", *args],
            env=daemon_env(self.root, EDGED_GC_GRACE_S="0"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def _daemon(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    def _new_file(self, salt: str, *, with_digest: bool) -> tuple[str, str, bool]:
        size = self.rng.randint(*self.size)
        data = tiny_gguf(size, salt)
        chunks = max(1, size // (64 << 10))
        url = self.server.add(f"/m/{salt}.gguf", Served(data, self.seconds_per_pull / chunks))
        self.served = (url, sha256(data), with_digest)
        return self.served

    def _pull(self, url: str, digest: str | None, timeout: float = 120) -> pb.ModelInfo:
        last = None
        request = pb.PullRequest(source=url, name=MODEL, digest=digest or "")
        for p in self._daemon().models.Pull(request, timeout=timeout):
            last = p
        assert last is not None and last.status == "success", last
        return last.model

    def _kill_at(self, delay: float, work: Callable[[], None]) -> None:
        """Run ``work`` in a thread and SIGKILL the daemon ``delay`` seconds in, unless
        ``work`` killed it already."""
        errors: list[BaseException] = []

        def run() -> None:
            try:
                work()
            except grpc.RpcError:
                pass  # the daemon died under it: expected
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(delay)
        self.kill()
        t.join(30)
        if errors:
            raise errors[0]

    # -- operations --------------------------------------------------------------------

    # Where a pull is killed: the daemon's progress stream says where it is.
    # (status it has reported, fraction of the bytes or None, extra delay in s)
    _PULL_TARGETS = (
        ("downloading", None, 0.0),  # at a random fraction of the bytes
        ("verifying sha256 digest", 0.0, 0.03),  # hashing, renaming into blobs/
        ("reading the GGUF header", 0.0, 0.03),  # the blob is stored, no manifest yet
        ("writing manifest", 0.0, 0.02),  # the manifest's temp file and rename
    )

    def _op_pull(self, i: int) -> None:
        url, digest, given = self._new_file(f"i{i}", with_digest=self.rng.random() < 0.7)
        status, fraction, extra = self.rng.choice(self._PULL_TARGETS)
        if fraction is None:
            fraction = self.rng.uniform(0.0, 1.0)
        delay = self.rng.uniform(0.0, extra)
        finished = threading.Event()
        request = pb.PullRequest(source=url, name=MODEL, digest=digest if given else "")

        def work() -> None:
            for p in self._daemon().models.Pull(request, timeout=120):
                at = p.total_bytes * fraction
                if p.status == status and p.completed_bytes >= at:
                    time.sleep(delay)
                    self.kill()
                    return
            finished.set()

        self._kill_at(self.pull_time * 3, work)
        self._landed(f"pull@{status.split()[0]}", finished.is_set(), digest)

    def _op_delete(self, i: int) -> None:
        delay = self.delete_time * self.rng.uniform(0.0, 2.0)
        finished = threading.Event()

        def work() -> None:
            self._daemon().models.Delete(pb.ModelRef(model=MODEL), timeout=30)
            finished.set()

        self._kill_at(delay, work)
        phase = "after" if finished.is_set() else "during"
        self.result.phases[f"delete:{phase}"] = self.result.phases.get(f"delete:{phase}", 0) + 1
        self.served = None

    def _op_gc(self, i: int) -> None:
        """Make garbage (orphan blobs, a stale partial and temp folder), then SIGKILL an
        `edged gc` process at a random moment (the daemon's own collection, after a
        delete, is killed by the delete operation)."""
        self._make_garbage(i)
        proc = self._gc_process()
        delay = self.gc_cli_time * self.rng.uniform(0.6, 1.1)
        try:
            proc.communicate(timeout=delay)
            phase = "after" if proc.returncode == 0 else "skipped"
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            phase = "during"
        self.result.phases[f"gc:{phase}"] = self.result.phases.get(f"gc:{phase}", 0) + 1

    def _make_garbage(self, i: int) -> None:
        old = time.time() - 7200
        for k in range(8):
            digest = self.store.write_blob([f"garbage {i} {k} ".encode() * 4096])
            os.utime(self.store.blob_path(digest), (old, old))
        key = "sha256-" + hashlib.sha256(f"partial {i}".encode()).hexdigest()
        part = self.store.partial_dir / f"{key}.part"
        part.write_bytes(b"p" * 100_000)
        os.utime(part, (old, old))
        folder = self.store.tmp_dir / f"catalog-garbage-{i}"
        (folder / "wheel").mkdir(parents=True)
        (folder / "wheel" / "x.whl").write_bytes(b"w" * 10_000)
        for p in (folder / "wheel" / "x.whl", folder / "wheel", folder):
            os.utime(p, (old, old))

    def _landed(self, op: str, finished: bool, digest: str) -> None:
        """Count what the kill left: the pull finished, its manifest written but no
        answer sent, its blob stored without a manifest, or nothing stored."""
        manifests = [m for ref, m in self.store.list_manifests() if ref.name == MODEL]
        if finished:
            phase = "finished"
        elif any(m.primary.digest == digest for m in manifests):
            phase = "manifest-written"
        elif self.store.has_blob(digest):
            phase = "blob-only"
        else:
            phase = "not-stored"
        key = f"{op}:{phase}"
        self.result.phases[key] = self.result.phases.get(key, 0) + 1

    # -- checks ------------------------------------------------------------------------

    def _check(self, i: int, op: str) -> None:
        report = verify(self.store)
        if not report.ok:
            raise CrashFailure(self._failure(i, op, report.problems))
        if op != "pull" or self.served is None:
            return
        url, digest, given = self.served
        path = url.removeprefix(self.server.url)
        before = len(self.server.requests_for(path))
        had_blob = self.store.has_blob(digest)
        model = self._pull(url, digest if given else None)
        if model.digest != digest:
            raise CrashFailure(self._failure(i, op, f"re-pull gave {model.digest}, not {digest}"))
        after = self.server.requests_for(path)[before:]
        if had_blob and not after:
            self.result.reused += 1
        elif any(r.startswith("bytes=") and not r.startswith("bytes=0-") for r in after):
            self.result.resumed += 1
        again = verify(self.store)
        if not again.ok:
            raise CrashFailure(self._failure(i, op, again.problems))

    def _cli_verify(self) -> None:
        env = daemon_env(self.root)
        out = subprocess.run(
            [sys.executable, "-m", "edged.daemon.cli.main", "verify", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.result.cli_verifies += 1
        if out.returncode != 0 or not json.loads(out.stdout)["ok"]:
            raise CrashFailure(f"`edged verify` failed: {out.stdout}{out.stderr}")

    def _failure(self, i: int, op: str, what: object) -> str:
        keep = self.root.parent / f"{self.root.name}-failed-{i}"
        shutil.copytree(self.root / "data", keep, symlinks=True, dirs_exist_ok=True)
        log = (self.root / "log" / "edged.log").read_text()[-3000:] if self.root.exists() else ""
        return (
            f"iteration {i} ({op}): the store is damaged after a SIGKILL and restart: "
            f"{what}\n(store copied to {keep})\ndaemon log tail:\n{log}"
        )
