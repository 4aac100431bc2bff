"""Fetch one large file as parallel byte ranges into a pre-sized partial file.

Each unfinished range gets a thread that asks for ``Range: bytes=pos-end``
(with ``If-Range`` when there is a validator) and writes the reply in place
through its own file handle. The caller's ``save`` runs about once a second
(and once at the end, whatever happened), so a restart resumes every range
where it stopped. A stall, a reset or a short reply is retried from where the
range got to, with back-off, a bounded number of times in a row.

A range reply must be a 206 starting exactly where it was asked and ending no
later than asked, for a file of the announced size, and it must not carry more
bytes than its Content-Range says. Anything else means the server cannot be
trusted with ranges (or the file changed): :class:`RestartDownload` tells the
caller to start over. The digest is computed by the caller once all ranges are
in, by reading the file.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from .http_client import HttpOptions, Interrupted, RetryBudget, open_url, raise_for_status, shown

log = logging.getLogger(__name__)

SAVE_INTERVAL_SECONDS = 1.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass
class ByteRange:
    """``[start, end)`` of the file; ``pos`` is how far it has been written."""

    start: int
    end: int
    pos: int

    @property
    def done(self) -> bool:
        return self.pos >= self.end

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.start, self.end, self.pos)


class RestartDownload(Exception):
    """The server will not (or can no longer) serve these ranges: start the file over."""


def split(size: int, parts: int) -> list[ByteRange]:
    """``parts`` contiguous ranges covering ``[0, size)``."""
    parts = max(1, min(parts, size))
    step = -(-size // parts)
    return [ByteRange(a, min(a + step, size), a) for a in range(0, size, step)]


@dataclass(frozen=True)
class RangeJob:
    client: httpx.Client
    url: str
    part: Path
    size: int
    validator: str
    options: HttpOptions
    check_cancel: Callable[[], None]
    on_bytes: Callable[[int], None]  # called from the range threads


def fetch_ranges(job: RangeJob, ranges: list[ByteRange], save: Callable[[], None]) -> None:
    """Fetch every unfinished range; raise the first failure once all threads stopped."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(r: ByteRange) -> None:
        try:
            _fetch_range(job, r, stop)
        except BaseException as exc:  # handed to the caller's thread below
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=work, args=(r,), name="edged-range", daemon=True)
        for r in ranges
        if not r.done
    ]
    for t in threads:
        t.start()
    try:
        last = time.monotonic()
        while any(t.is_alive() for t in threads):
            time.sleep(0.05)
            if time.monotonic() - last >= SAVE_INTERVAL_SECONDS:
                save()
                last = time.monotonic()
    finally:
        stop.set()
        for t in threads:
            t.join()
        save()
    if errors:
        raise errors[0]


def _fetch_range(job: RangeJob, r: ByteRange, stop: threading.Event) -> None:
    budget = RetryBudget(job.options, job.check_cancel, stop)
    with io.FileIO(job.part, "r+") as f:
        while not r.done and not stop.is_set():
            job.check_cancel()
            before = r.pos
            try:
                _fetch_once(job, r, f, stop)
            except Interrupted as exc:
                budget.failed(exc, progressed=r.pos > before, resume_hint=True)


def _fetch_once(job: RangeJob, r: ByteRange, f: io.FileIO, stop: threading.Event) -> None:
    headers = {"Range": f"bytes={r.pos}-{r.end - 1}"}
    if job.validator:
        headers["If-Range"] = job.validator
    with open_url(job.client, job.url, headers, job.options) as response:
        if response.status_code in (200, 416):
            raise RestartDownload(
                f"{shown(job.url)} answered a range request with HTTP {response.status_code}"
            )
        raise_for_status(job.url, response)
        if response.status_code != 206:
            raise RestartDownload(f"{shown(job.url)} answered HTTP {response.status_code}")
        stop_at = _check_reply(job, r, response)
        f.seek(r.pos)
        for chunk in response.iter_raw(job.options.chunk_size):
            job.check_cancel()
            if stop.is_set():
                return
            if r.pos + len(chunk) > stop_at:
                raise RestartDownload(
                    f"{shown(job.url)} sent more bytes than its Content-Range announced"
                )
            write_all(f, chunk)
            r.pos += len(chunk)
            job.on_bytes(len(chunk))
        if r.pos < stop_at:
            raise Interrupted(
                f"a range of {shown(job.url)} ended early at byte {r.pos} of {stop_at}"
            )


def _check_reply(job: RangeJob, r: ByteRange, response: httpx.Response) -> int:
    """Where the reply's bytes end (exclusive), after checking it is the range asked for."""
    text = response.headers.get("Content-Range", "").strip()
    match = _CONTENT_RANGE.fullmatch(text)
    if match is None:
        raise RestartDownload(f"{shown(job.url)} sent a 206 without a valid Content-Range")
    start, last, total = int(match.group(1)), int(match.group(2)), match.group(3)
    wrong = start != r.pos or last < start or last >= r.end
    wrong = wrong or (total != "*" and int(total) != job.size)
    length = response.headers.get("Content-Length", "")
    wrong = wrong or (length.isdigit() and int(length) != last - start + 1)
    if wrong:
        raise RestartDownload(
            f"{shown(job.url)} answered bytes {r.pos}-{r.end - 1} of {job.size} with {text!r}"
        )
    return last + 1


def write_all(f: io.FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError("a write to the partial download made no progress")
        view = view[n:]
