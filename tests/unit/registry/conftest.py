"""Fixtures for the registry tests: a store, a GGUF writer, a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edged.models_registry import Store

# --- a tiny GGUF writer -----------------------------------------------------------------

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL = range(8)
STRING, ARRAY, UINT64, INT64, FLOAT64 = range(8, 13)
_FMT = {
    UINT8: "<B",
    INT8: "<b",
    UINT16: "<H",
    INT16: "<h",
    UINT32: "<I",
    INT32: "<i",
    FLOAT32: "<f",
    BOOL: "<B",
    UINT64: "<Q",
    INT64: "<q",
    FLOAT64: "<d",
}
F32, Q4_1 = 0, 3


def gguf_string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def gguf_value(vtype: int, value: Any) -> bytes:
    if vtype == STRING:
        return gguf_string(value)
    if vtype == ARRAY:
        etype, items = value
        out = struct.pack("<IQ", etype, len(items))
        return out + b"".join(gguf_value(etype, item) for item in items)
    return struct.pack(_FMT[vtype], value)


@dataclass
class Tensor:
    name: str
    dims: tuple[int, ...]
    ggml_type: int
    data: bytes


def default_kv() -> list[tuple[str, int, Any]]:
    return [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "Tiny Test Model"),
        ("general.file_type", UINT32, 3),
        ("llama.context_length", UINT32, 256),
        ("llama.rope.freq_base", FLOAT32, 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", FLOAT32, 1e-5),
        ("general.some_flag", BOOL, 1),
        ("general.big", INT64, -(2**40)),
        ("general.long_text", STRING, "x" * 3000),
        ("tokenizer.chat_template", STRING, "{% for m in messages %}{{ m.content }}{% endfor %}"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<s>", "</s>", "hi"])),
        ("tokenizer.ggml.scores", ARRAY, (FLOAT32, [0.0, 0.5, 1.0])),
        ("general.nested", ARRAY, (ARRAY, [(INT32, [1, 2]), (INT32, [3])])),
    ]


def default_tensors(big: int = 0) -> list[Tensor]:
    tensors = [
        Tensor("token_embd.weight", (4, 3), F32, bytes(range(48))),
        Tensor("blk.0.attn_q.weight", (32, 2), Q4_1, bytes(40)),
    ]
    if big:
        data = bytes((i * 7 + 3) % 251 for i in range(251)) * (big // 251 + 1)
        tensors.append(Tensor("output.weight", (big // 4,), F32, data[: big // 4 * 4]))
    return tensors


def build_gguf(
    kv: list[tuple[str, int, Any]] | None = None,
    tensors: list[Tensor] | None = None,
    *,
    version: int = 3,
    alignment: int = 32,
) -> bytes:
    kv = default_kv() if kv is None else kv
    tensors = default_tensors() if tensors is None else tensors
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kv)))
    for key, vtype, value in kv:
        out += gguf_string(key) + struct.pack("<I", vtype) + gguf_value(vtype, value)
    offset = 0
    offsets = []
    for t in tensors:
        offsets.append(offset)
        offset += (len(t.data) + alignment - 1) // alignment * alignment
    for t, off in zip(tensors, offsets, strict=True):
        out += gguf_string(t.name) + struct.pack("<I", len(t.dims))
        out += b"".join(struct.pack("<Q", d) for d in t.dims)
        out += struct.pack("<IQ", t.ggml_type, off)
    out += bytes(-len(out) % alignment)
    for i, t in enumerate(tensors):
        out += t.data
        if i < len(tensors) - 1:
            out += bytes(-len(t.data) % alignment)
    return bytes(out)


@pytest.fixture
def tiny_gguf() -> bytes:
    return build_gguf()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with its kind and, for files, mode and content hash."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = Path(dirpath, d)
            out[str(p.relative_to(root))] = "dir"
        for f in filenames:
            p = Path(dirpath, f)
            st = p.lstat()
            out[str(p.relative_to(root))] = (
                f"file {oct(st.st_mode)} {hashlib.sha256(p.read_bytes()).hexdigest()}"
            )
    return out


# --- a local HTTP server ---------------------------------------------------------------


@dataclass
class ServedFile:
    data: bytes
    etag: str = ""
    last_modified: str = "Wed, 01 Jan 2025 00:00:00 GMT"
    honor_range: bool = True
    status: int = 200
    chunk: int = 64 << 10
    delay: float = 0.0  # seconds between chunks
    cut_after: int | None = None  # close the connection after this many body bytes

    def __post_init__(self) -> None:
        if not self.etag:
            self.etag = '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'


@dataclass
class Server:
    url: str
    files: dict[str, ServedFile] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def add(self, path: str, served: ServedFile) -> str:
        self.files[path] = served
        return self.url + path

    def ranges(self, path: str) -> list[int]:
        """The start offsets of every Range request seen for ``path``."""
        starts = []
        for p, headers in self.requests:
            m = re.fullmatch(r"bytes=(\d+)-", headers.get("range", ""))
            if p == path and m:
                starts.append(int(m.group(1)))
        return starts


class _Handler(http.server.BaseHTTPRequestHandler):
    server_state: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server_state
        headers = {k.lower(): v for k, v in self.headers.items()}
        state.requests.append((self.path, headers))
        served = state.files.get(self.path.split("?", 1)[0])
        if served is None:
            self._empty(404)
            return
        if served.status != 200:
            self._empty(served.status)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", headers.get("range", ""))
        if_range = headers.get("if-range")
        validators = (served.etag, served.last_modified)
        if m and served.honor_range and (if_range is None or if_range in validators):
            start = int(m.group(1))
        size = len(served.data)
        if start >= size and start > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.send_header("ETag", served.etag)
        self.send_header("Last-Modified", served.last_modified)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._body(served, start)

    def _body(self, served: ServedFile, start: int) -> None:
        sent = 0
        try:
            for pos in range(start, len(served.data), served.chunk):
                piece = served.data[pos : pos + served.chunk]
                if served.cut_after is not None and sent + len(piece) > served.cut_after:
                    piece = piece[: served.cut_after - sent]
                    self.wfile.write(piece)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(piece)
                self.wfile.flush()
                sent += len(piece)
                if served.delay:
                    time.sleep(served.delay)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _empty(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def http_server() -> Iterator[Server]:
    state = Server(url="")
    handler = type("Handler", (_Handler,), {"server_state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
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


_THIS_MODULE = sys.modules[__name__]


@pytest.fixture
def kit() -> Any:
    """This module: the GGUF writer, ``sha256_digest``, ``snapshot``, ``ServedFile``."""
    return _THIS_MODULE


# --- the real model (the run's one pull, tests/conftest.py) ------------------------------


@pytest.fixture(scope="session")
def smollm2_pulled(smollm2_seed: Any) -> tuple[Store, Any, Any, tuple[str, ...]]:
    """The store the run's one pull of SmolLM2 made (read it, never change it: other
    tests' stores are hard-linked from it), its ref, manifest and pull statuses."""
    store = Store(smollm2_seed.data_dir / "models")
    ref, manifest = store.resolve("smollm2")
    return store, ref, manifest, smollm2_seed.statuses


@pytest.fixture
def smollm2_blob(smollm2_pulled: tuple[Store, Any, Any, tuple[str, ...]]) -> Path:
    store, _ref, manifest, _events = smollm2_pulled
    return store.blob_path(manifest.primary.digest)


# the files another program keeps, for the importer tests (import_layouts.py)
@pytest.fixture(scope="module")
def real_gguf(
    smollm2_pulled: tuple[Store, Any, Any, Any], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of the real SmolLM2 file outside any store."""
    from tests.unit.registry.import_layouts import copy_real

    return copy_real(smollm2_pulled, tmp_path_factory.mktemp("other-program"))


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A tiny valid GGUF file outside any store."""
    from tests.unit.registry.import_layouts import write_tiny

    return write_tiny(tmp_path)
