"""Download a URL into the store, resumably.

Bytes arrive in ``partial/<key>.part`` next to a small JSON state file
(:class:`DownloadState`). When an expected digest is given the key is that
digest's blob name, and an interrupted download resumes after a restart; any
reply other than 206 for the right offset restarts from zero. Without an
expected digest nothing is kept across runs (nothing could vouch for the old
bytes) and the key is derived from the URL. A finished, verified file is
renamed into ``blobs/``; nothing else ever appears there.

Two ways to fetch:

- one stream (small files, servers without ranges): ``Range: bytes=N-`` plus
  ``If-Range`` (the ETag, else Last-Modified) to resume; the existing partial
  bytes are re-hashed first, so the digest covers every byte;
- parallel byte ranges (http_ranges) for files of at least
  ``HttpOptions.parallel_min_size`` whose server announces ``Accept-Ranges:
  bytes`` on a HEAD request: the partial is pre-sized, each range resumes on
  its own, and the digest is computed once all bytes are in.

A stall (no byte for ``stall_timeout`` seconds), a reset or a short body is
retried with back-off from where the download got to, at most ``max_retries``
times in a row without progress. Redirects follow http_client's policy (bounded,
no loops, never https to http). The lock per key (``locks/<key>.lock``) makes
two pulls of one blob download it once: the second waits, then finds the blob.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import BinaryIO

import httpx

from edged.common.errors import (
    Cancelled,
    DigestMismatch,
    EdgedError,
    FailedPrecondition,
    ResourceExhausted,
)

from . import http_ranges, locks
from .digest import blob_name, digest_from_hex, new_hasher, parse_digest
from .fsutil import atomic_write, remove_quietly, storage_error
from .http_client import (
    MAX_URL_LENGTH,
    USER_AGENT,
    HttpOptions,
    Interrupted,
    RetryBudget,
    check_redirect,
    check_url,
    make_client,
    open_url,
    raise_for_status,
    shown,
)
from .progress import ProgressFn, ThrottledProgress, report
from .store import Store

__all__ = [
    "MAX_URL_LENGTH",
    "USER_AGENT",
    "DownloadState",
    "HttpOptions",
    "check_redirect",
    "check_url",
    "download",
    "partial_key",
]

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
Ranges = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class DownloadState:
    """What a partial download was fetched from, to decide whether it can resume.

    ``ranges`` is empty for a one-stream download; for a parallel one it lists
    ``(start, end, written_up_to)`` of each range, covering ``[0, size)``.
    """

    url: str
    etag: str = ""
    last_modified: str = ""
    size: int = 0
    ranges: Ranges = ()

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
                ranges=tuple(tuple(r) for r in data.get("ranges", ())),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        fields_ok = isinstance(state.url, str) and isinstance(state.etag, str)
        fields_ok = fields_ok and isinstance(state.last_modified, str)
        if not fields_ok or not isinstance(state.size, int) or state.size < 0:
            return None
        return state if _ranges_ok(state.ranges, state.size) else None


def _ranges_ok(ranges: Ranges, size: int) -> bool:
    """Empty, or contiguous ranges covering ``[0, size)`` with sane positions."""
    if not ranges:
        return True
    expect = 0
    for r in ranges:
        if len(r) != 3 or not all(type(v) is int for v in r):
            return False
        start, end, pos = r
        if start != expect or not start < end or not start <= pos <= end:
            return False
        expect = end
    return expect == size


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
    check: Callable[[Path], None] | None = None,
) -> str:
    """Download ``url`` into the store's blobs and return its digest.

    ``check`` runs on the finished, digest-checked partial file before it becomes
    a blob (a GGUF header check); when it raises, the partial file is discarded.
    """
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
            job.check = check
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
        self.state: DownloadState | None = None  # of the last reply (one stream)
        self.check: Callable[[Path], None] | None = None

    @property
    def resumable(self) -> bool:
        return self.want is not None

    def run(self) -> str:
        try:
            with make_client(self.options) as client:
                self._download(client)
            return self._finish()
        except OSError as exc:
            self._discard_unless_resumable()
            raise storage_error(exc, "downloading a model") from exc
        except EdgedError:
            self._discard_unless_resumable()
            raise
        except BaseException:  # KeyboardInterrupt: keep what can resume
            self._discard_unless_resumable()
            raise

    # -- steps -------------------------------------------------------------------------

    def _download(self, client: httpx.Client) -> None:
        state = self._load_state() if self.resumable else None
        usable = state is not None and state.url == self.url and self.part.is_file()
        if usable and state is not None and state.ranges:
            if self.part.stat().st_size == state.size and self._parallel(client, state):
                return
        elif usable and state is not None:
            self._rehash_partial()
            self._single(client, state)
            return
        self._reset()
        plan = self._probe(client)
        if plan is not None and self._parallel(client, plan):
            return
        self._reset()
        self._single(client, None)

    def _rehash_partial(self) -> None:
        """Hash the bytes already there, so the digest covers every byte."""
        size = self.part.stat().st_size
        report(self.progress, "verifying partial download", 0, size)
        with open(self.part, "rb") as f:
            for chunk in _chunks(f, 1 << 20):
                self._check_cancel()
                self.hasher.update(chunk)
                self.offset += len(chunk)
        log.info("resuming download of %s at byte %d", shown(self.url), self.offset)

    # -- parallel ranges ---------------------------------------------------------------

    def _probe(self, client: httpx.Client) -> DownloadState | None:
        """A plan for a parallel download, when a HEAD request says it is worth it."""
        opts = self.options
        if opts.connections < 2 or opts.parallel_min_size <= 0:
            return None
        try:
            with open_url(client, self.url, {}, opts, method="HEAD") as response:
                headers = response.headers
                ok = response.status_code == 200
        except Interrupted:
            return None
        length = headers.get("Content-Length", "")
        ranges = "bytes" in headers.get("Accept-Ranges", "").lower()
        if not (ok and ranges and length.isdigit() and int(length) >= opts.parallel_min_size):
            return None
        etag = _strong_etag(headers.get("ETag", ""))
        modified = headers.get("Last-Modified", "")
        if not self.resumable and not (etag or modified):
            return None  # nothing would tell ranges of two versions of the file apart
        size = int(length)
        parts = http_ranges.split(size, opts.connections)
        return DownloadState(self.url, etag, modified, size, tuple(r.as_tuple() for r in parts))

    def _parallel(self, client: httpx.Client, state: DownloadState) -> bool:
        """Fetch ``state``'s ranges; False when the server will not serve them."""
        size = state.size
        ranges = [http_ranges.ByteRange(*r) for r in state.ranges]
        done = sum(r.pos - r.start for r in ranges)
        self._check_size(size, done)
        if done == 0:
            with open(self.part, "wb") as f:
                f.truncate(size)
        else:
            log.info("resuming the ranges of %s at %d of %d bytes", shown(self.url), done, size)
        reporter = ThrottledProgress(self.progress, "downloading", size)
        reporter.update(done)
        lock = threading.Lock()
        completed = [done]

        def on_bytes(n: int) -> None:
            with lock:
                completed[0] += n
                reporter.update(completed[0])

        job = http_ranges.RangeJob(
            client,
            self.url,
            self.part,
            size,
            state.validator,
            self.options,
            self._check_cancel,
            on_bytes,
        )
        with open(self.part, "rb") as sync:

            def save() -> None:
                positions = tuple(r.as_tuple() for r in ranges)
                os.fsync(sync.fileno())
                if self.resumable:
                    self._write_state(replace(state, ranges=positions))

            save()
            try:
                http_ranges.fetch_ranges(job, ranges, save)
            except http_ranges.RestartDownload as exc:
                log.warning("%s; downloading %s again in one stream", exc, shown(self.url))
                return False
        reporter.done(size)
        self._hash_whole(size)
        return True

    def _hash_whole(self, size: int) -> None:
        reporter = ThrottledProgress(self.progress, "verifying sha256 digest", size)
        self.hasher = new_hasher()
        self.offset = 0
        with open(self.part, "rb") as f:
            for chunk in _chunks(f, 1 << 20):
                self._check_cancel()
                self.hasher.update(chunk)
                self.offset += len(chunk)
                reporter.update(self.offset)
        if self.offset != size:
            raise FailedPrecondition(f"the partial download of {shown(self.url)} changed size")

    # -- one stream --------------------------------------------------------------------

    def _single(self, client: httpx.Client, state: DownloadState | None) -> None:
        """Stream the file, retrying stalls and resets from where it got to."""
        budget = RetryBudget(self.options, self._check_cancel)
        while True:
            before = self.offset
            try:
                self._fetch(client, state)
                return
            except Interrupted as exc:
                progressed = self.offset > before
                state = self.state or state
                if self.offset and (state is None or not (self.resumable or state.validator)):
                    self._reset()  # nothing would vouch that a resumed reply continues it
                budget.failed(exc, progressed, resume_hint=self.resumable)

    def _fetch(self, client: httpx.Client, state: DownloadState | None) -> None:
        headers = {}
        if self.offset > 0 and state is not None:
            headers["Range"] = f"bytes={self.offset}-"
            if state.validator:
                headers["If-Range"] = state.validator
        with open_url(client, self.url, headers, self.options) as response:
            restart = self._accepts_resume(response) is False
            if not restart:
                self._stream(response)
                return
        log.info("server did not resume %s; starting over", shown(self.url))
        self._reset()
        with open_url(client, self.url, {}, self.options) as response:
            if self._accepts_resume(response) is not None:
                raise FailedPrecondition(
                    f"{shown(self.url)} answered with a partial reply to a full request"
                )
            self._stream(response)

    def _accepts_resume(self, response: httpx.Response) -> bool | None:
        """None: a full 200 reply. True: a usable 206. False: restart from zero."""
        code = response.status_code
        if self.offset > 0 and code == 206:
            start = _content_range_start(response)
            return start == self.offset
        if self.offset > 0 and code == 416:
            return False
        raise_for_status(self.url, response)
        if code == 206:  # a 206 we did not ask for
            return False
        if self.offset > 0:
            self._reset()
        return None

    def _stream(self, response: httpx.Response) -> None:
        total = _total_size(response, self.offset)
        self._check_size(total, self.offset)
        self.state = DownloadState(
            url=self.url,
            etag=_strong_etag(response.headers.get("ETag", "")),
            last_modified=response.headers.get("Last-Modified", ""),
            size=total,
        )
        if self.resumable:
            self._write_state(self.state)
        mode = "a" if self.offset > 0 else "w"
        reporter = ThrottledProgress(self.progress, "downloading", total)
        reporter.update(self.offset)
        with io.FileIO(self.part, mode) as f:
            try:
                for chunk in response.iter_raw(self.options.chunk_size):
                    self._check_cancel()
                    self._check_overrun(total, len(chunk))
                    http_ranges.write_all(f, chunk)
                    self.hasher.update(chunk)
                    self.offset += len(chunk)
                    reporter.update(self.offset)
            finally:
                os.fsync(f.fileno())
        if total and self.offset != total:
            raise Interrupted(
                f"the download of {shown(self.url)} ended early at {self.offset} of {total} bytes"
            )
        reporter.done(self.offset)

    def _check_overrun(self, total: int, n: int) -> None:
        if total and self.offset + n > total:
            self._discard()
            raise FailedPrecondition(
                f"{shown(self.url)} sent more bytes than it announced ({total}); "
                "the download was discarded"
            )
        if self.offset + n > self.options.max_size:
            self._discard()
            raise ResourceExhausted(
                f"{shown(self.url)} sent more than the limit of {self.options.max_size} bytes; "
                "the download was discarded"
            )

    def _finish(self) -> str:
        digest = digest_from_hex(self.hasher.hexdigest())
        if self.want is not None and digest != self.want:
            self._discard()
            raise DigestMismatch(
                f"{shown(self.url)} sent data that does not match the expected digest "
                f"{self.want} (it hashes to {digest}); the partial download was discarded"
            )
        report(self.progress, "verifying sha256 digest", self.offset, self.offset)
        if self.check is not None:
            try:
                self.check(self.part)
            except EdgedError:
                self._discard()  # verified bytes that fail the check never will pass it
                raise
        self.store.install_blob(self.part, digest)
        remove_quietly(self.state_path)
        return digest

    # -- helpers -----------------------------------------------------------------------

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            keep = "; run it again to resume" if self.resumable else ""
            raise Cancelled(f"pull cancelled{keep}")

    def _check_size(self, total: int, have: int) -> None:
        if total > self.options.max_size:
            raise ResourceExhausted(
                f"{shown(self.url)} is {total} bytes, more than the limit of "
                f"{self.options.max_size} bytes"
            )
        needed = (total - have if total else 0) + self.options.disk_margin
        free = shutil.disk_usage(self.store.partial_dir).free
        if needed > free:
            raise ResourceExhausted(
                f"not enough disk space for {shown(self.url)}: it needs {needed} bytes, "
                f"{free} are free in the model store"
            )

    def _write_state(self, state: DownloadState) -> None:
        atomic_write(self.state_path, state.to_json().encode(), self.store.tmp_dir)

    def _load_state(self) -> DownloadState | None:
        try:
            return DownloadState.from_json(self.state_path.read_bytes()[: 1 << 20])
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
