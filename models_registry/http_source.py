"""Download a URL into the store, resumably.

Bytes arrive in ``partial/<key>.part`` next to a small JSON state file
(:class:`DownloadState`). When an expected digest is given the key is that
digest's blob name, and an interrupted download resumes with
``Range: bytes=N-`` plus ``If-Range`` (the ETag, else Last-Modified); any reply
other than 206 for the right offset restarts from zero. The existing partial
bytes are re-hashed first, so the digest always covers every byte. Without an
expected digest there is no resume (nothing could vouch for the old bytes) and
the key is derived from the URL. A finished, verified file is renamed into
``blobs/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import BinaryIO

import httpx

from edged.daemon.errors import (
    Cancelled,
    DigestMismatch,
    EdgedError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

from . import locks
from .digest import blob_name, digest_from_hex, new_hasher, parse_digest
from .fsutil import atomic_write, remove_quietly, storage_error
from .progress import ProgressFn, ThrottledProgress, report
from .store import Store

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 8192
USER_AGENT = "edged/0.1 (model pull)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class HttpOptions:
    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    max_size: int = 256 << 30
    chunk_size: int = 256 << 10
    disk_margin: int = 64 << 20
    transport: httpx.BaseTransport | None = None


@dataclass(frozen=True)
class DownloadState:
    """What a partial download was fetched from, to decide whether it can resume."""

    url: str
    etag: str = ""
    last_modified: str = ""
    size: int = 0

    @property
    def validator(self) -> str:
        return self.etag or self.last_modified

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> DownloadState | None:
        try:
            data = json.loads(text)
            state = cls(
                url=data["url"],
                etag=data.get("etag", ""),
                last_modified=data.get("last_modified", ""),
                size=data.get("size", 0),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        fields_ok = isinstance(state.url, str) and isinstance(state.etag, str)
        fields_ok = fields_ok and isinstance(state.last_modified, str)
        if not fields_ok or not isinstance(state.size, int) or state.size < 0:
            return None
        return state


def check_url(url: str) -> httpx.URL:
    """Accept only absolute http(s) URLs with a host."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument("the URL is too long")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidArgument(f"invalid URL {url!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise InvalidArgument(f"unsupported URL scheme {parsed.scheme!r}: use http or https")
    if not parsed.host:
        raise InvalidArgument(f"invalid URL {url!r}: it has no host")
    return parsed


def partial_key(url: str, expected: str | None) -> str:
    """The name under partial/ (and locks/) for a download."""
    if expected is not None:
        return blob_name(expected)
    return "url-" + hashlib.sha256(url.encode()).hexdigest()


def download(
    store: Store,
    url: str,
    expected: str | None = None,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    options: HttpOptions | None = None,
) -> str:
    """Download ``url`` into the store's blobs and return its digest."""
    check_url(url)
    want = parse_digest(expected) if expected is not None else None
    with store.pinned():
        if want is not None and store.has_blob(want):
            return want
        key = partial_key(url, want)
        with locks.locked(
            store.locks_dir / f"{key}.lock",
            ephemeral=True,
            cancel=cancel,
            on_wait=lambda: report(progress, "waiting for another download of the same file"),
        ):
            if want is not None and store.has_blob(want):
                return want
            job = _Download(store, url, want, key, options or HttpOptions(), progress, cancel)
            return job.run()


class _Download:
    def __init__(
        self,
        store: Store,
        url: str,
        want: str | None,
        key: str,
        options: HttpOptions,
        progress: ProgressFn | None,
        cancel: threading.Event | None,
    ) -> None:
        self.store = store
        self.url = url
        self.want = want
        self.options = options
        self.progress = progress
        self.cancel = cancel
        self.part = store.partial_dir / f"{key}.part"
        self.state_path = store.partial_dir / f"{key}.json"
        self.hasher = new_hasher()
        self.offset = 0

    @property
    def resumable(self) -> bool:
        return self.want is not None

    def run(self) -> str:
        try:
            state = self._prepare()
            with _client(self.options) as client:
                self._fetch(client, state)
            return self._finish()
        except OSError as exc:
            self._discard_unless_resumable()
            raise storage_error(exc, "downloading a model") from exc
        except EdgedError:
            self._discard_unless_resumable()
            raise

    # -- steps -------------------------------------------------------------------------

    def _prepare(self) -> DownloadState | None:
        """Decide whether to resume; re-hash the bytes already there."""
        state = self._load_state() if self.resumable else None
        if state is None or state.url != self.url or not self.part.is_file():
            self._reset()
            return None
        size = self.part.stat().st_size
        report(self.progress, "verifying partial download", 0, size)
        with open(self.part, "rb") as f:
            for chunk in _chunks(f, 1 << 20):
                self._check_cancel()
                self.hasher.update(chunk)
                self.offset += len(chunk)
        log.info("resuming download of %s at byte %d", self.url, self.offset)
        return state

    def _fetch(self, client: httpx.Client, state: DownloadState | None) -> None:
        headers = {}
        if self.offset > 0 and state is not None:
            headers["Range"] = f"bytes={self.offset}-"
            if state.validator:
                headers["If-Range"] = state.validator
        with _request(client, self.url, headers) as response:
            restart = self._accepts_resume(response) is False
            if not restart:
                self._stream(response)
                return
        log.info("server did not resume %s; starting over", self.url)
        self._reset()
        with _request(client, self.url, {}) as response:
            if self._accepts_resume(response) is not None:
                raise Unavailable(f"{self.url} answered with a partial reply to a full request")
            self._stream(response)

    def _accepts_resume(self, response: httpx.Response) -> bool | None:
        """None: a full 200 reply. True: a usable 206. False: restart from zero."""
        code = response.status_code
        if self.offset > 0 and code == 206:
            start = _content_range_start(response)
            return start == self.offset
        if self.offset > 0 and code == 416:
            return False
        _raise_for_status(self.url, response)
        if code == 206:  # a 206 we did not ask for
            return False
        if self.offset > 0:
            self._reset()
        return None

    def _stream(self, response: httpx.Response) -> None:
        total = _total_size(response, self.offset)
        self._check_size(total)
        if self.resumable:
            self._save_state(response, total)
        mode = "ab" if self.offset > 0 else "wb"
        reporter = ThrottledProgress(self.progress, "downloading", total)
        reporter.update(self.offset)
        with open(self.part, mode, buffering=0) as f:
            try:
                for chunk in response.iter_raw(self.options.chunk_size):
                    self._check_cancel()
                    f.write(chunk)
                    self.hasher.update(chunk)
                    self.offset += len(chunk)
                    if self.offset > (total or self.options.max_size):
                        raise FailedPrecondition(
                            f"{self.url} sent more bytes than it announced; download discarded"
                        )
                    reporter.update(self.offset)
            finally:
                os.fsync(f.fileno())
        if total and self.offset != total:
            raise Unavailable(
                f"the download of {self.url} ended early at {self.offset} of {total} bytes; "
                "run the pull again to resume"
            )
        reporter.done(self.offset)

    def _finish(self) -> str:
        digest = digest_from_hex(self.hasher.hexdigest())
        if self.want is not None and digest != self.want:
            self._discard()
            raise DigestMismatch(
                f"{self.url} sent data that does not match the expected digest {self.want} "
                f"(it hashes to {digest}); the partial download was discarded"
            )
        report(self.progress, "verifying sha256 digest", self.offset, self.offset)
        self.store.install_blob(self.part, digest)
        remove_quietly(self.state_path)
        return digest

    # -- helpers -----------------------------------------------------------------------

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            keep = "; run it again to resume" if self.resumable else ""
            raise Cancelled(f"pull cancelled{keep}")

    def _check_size(self, total: int) -> None:
        if total > self.options.max_size:
            raise ResourceExhausted(
                f"{self.url} is {total} bytes, more than the limit of {self.options.max_size} bytes"
            )
        needed = (total - self.offset if total else 0) + self.options.disk_margin
        free = shutil.disk_usage(self.store.partial_dir).free
        if needed > free:
            raise ResourceExhausted(
                f"not enough disk space for {self.url}: it needs {needed} bytes, "
                f"{free} are free in the model store"
            )

    def _save_state(self, response: httpx.Response, total: int) -> None:
        state = DownloadState(
            url=self.url,
            etag=_strong_etag(response.headers.get("ETag", "")),
            last_modified=response.headers.get("Last-Modified", ""),
            size=total,
        )
        atomic_write(self.state_path, state.to_json().encode(), self.store.tmp_dir)

    def _load_state(self) -> DownloadState | None:
        try:
            return DownloadState.from_json(self.state_path.read_bytes()[:65536])
        except FileNotFoundError:
            return None

    def _reset(self) -> None:
        self.hasher = new_hasher()
        self.offset = 0
        remove_quietly(self.part)
        remove_quietly(self.state_path)

    def _discard(self) -> None:
        remove_quietly(self.part)
        remove_quietly(self.state_path)

    def _discard_unless_resumable(self) -> None:
        if not self.resumable:
            self._discard()


def _client(options: HttpOptions) -> httpx.Client:
    timeout = httpx.Timeout(
        connect=options.connect_timeout,
        read=options.read_timeout,
        write=options.read_timeout,
        pool=options.connect_timeout,
    )
    return httpx.Client(
        timeout=timeout,
        follow_redirects=True,
        max_redirects=10,
        transport=options.transport,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )


@contextmanager
def _request(client: httpx.Client, url: str, headers: dict[str, str]) -> Iterator[httpx.Response]:
    """Stream a GET, translating transport failures into edged errors."""
    try:
        with client.stream("GET", url, headers=headers) as response:
            yield response
    except httpx.TimeoutException as exc:
        raise Unavailable(
            f"the download of {url} timed out ({type(exc).__name__}); run the pull again to resume"
        ) from exc
    except httpx.ConnectError as exc:
        raise Unavailable(f"cannot connect to {url}: {exc}") from exc
    except httpx.TooManyRedirects as exc:
        raise FailedPrecondition(f"{url} redirects too many times") from exc
    except httpx.UnsupportedProtocol as exc:
        raise InvalidArgument(f"{url} redirected to an unsupported URL: {exc}") from exc
    except httpx.TransportError as exc:
        raise Unavailable(
            f"the connection to {url} was interrupted ({exc or type(exc).__name__}); "
            "run the pull again to resume"
        ) from exc


def _raise_for_status(url: str, response: httpx.Response) -> None:
    code = response.status_code
    if code in (200, 206):
        return
    if code in (404, 410):
        raise NotFound(f"{url} was not found (HTTP {code})")
    if code in (401, 403):
        raise FailedPrecondition(f"access to {url} was refused (HTTP {code})")
    if code == 429 or code >= 500:
        raise Unavailable(f"{url} answered HTTP {code}; try again later")
    raise FailedPrecondition(f"{url} answered HTTP {code} {response.reason_phrase}")


def _content_range_start(response: httpx.Response) -> int | None:
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    return int(match.group(1)) if match else None


def _total_size(response: httpx.Response, offset: int) -> int:
    """The full size of the file, or 0 when the server does not say."""
    if response.status_code == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match and match.group(3) != "*":
            return int(match.group(3))
    length = response.headers.get("Content-Length", "")
    if not length.isdigit():
        return 0
    return offset + int(length) if response.status_code == 206 else int(length)


def _strong_etag(etag: str) -> str:
    """If-Range needs a strong validator: weak ETags (W/...) are not used."""
    return "" if etag.startswith("W/") else etag


def _chunks(f: BinaryIO, size: int) -> Iterator[bytes]:
    while chunk := f.read(size):
        yield chunk
