"""The HTTP side of pulls: options, the client, a redirect policy, error translation.

Redirects are followed here, not by httpx, so that each hop is checked: at most
``max_redirects`` of them, no loops, only http(s) targets, and never from https
down to http. Transport failures become edged errors; the ones that happen
part-way through a transfer (a stall, a reset, a body that ends early) are
:class:`Interrupted`, which the download loops retry with back-off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from edged.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)

MAX_URL_LENGTH = 8192
USER_AGENT = "edged/0.1 (model pull)"
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class HttpOptions:
    """How a pull talks HTTP. Every limit has a safe default; tests shrink them."""

    connect_timeout: float = 15.0
    # A stall: no byte for this many seconds (before the headers or in the body).
    stall_timeout: float = 30.0
    max_size: int = 256 << 30
    chunk_size: int = 256 << 10
    disk_margin: int = 64 << 20
    max_redirects: int = 10
    # Retries in a row without a new byte before a download gives up (0: none);
    # a failed try that brought bytes starts the count again.
    max_retries: int = 5
    retry_backoff: float = 1.0  # the first wait; it doubles up to MAX_BACKOFF_SECONDS
    # Files at least this large download in ``connections`` parallel byte ranges
    # when the server supports ranges; smaller ones in one stream.
    parallel_min_size: int = 64 << 20
    connections: int = 4
    # Extra request headers (a hub token): never in a repr, so never in a log line.
    # httpx drops Authorization on a redirect to another host.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    transport: httpx.BaseTransport | None = None


class Interrupted(Unavailable):
    """A transfer stopped part-way (a stall, a reset, a short body): worth a retry."""


class AccessRefused(FailedPrecondition):
    """The server answered 401 or 403 (``status``); a source with credentials
    (the hub) turns it into Unauthenticated or PermissionDenied."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def check_url(url: str) -> httpx.URL:
    """Accept only absolute http(s) URLs with a host."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidArgument("the URL is too long")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidArgument(f"invalid URL {url[:200]!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise InvalidArgument(f"unsupported URL scheme {parsed.scheme!r}: use http or https")
    if not parsed.host:
        raise InvalidArgument(f"invalid URL {url[:200]!r}: it has no host")
    return parsed


def shown(url: str | httpx.URL) -> str:
    """A URL fit for messages and logs: no credentials, no query (it may hold a token)."""
    try:
        parsed = httpx.URL(str(url))
    except (httpx.InvalidURL, TypeError):
        return "the URL"
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


def check_redirect(source: httpx.URL, target: httpx.URL) -> None:
    """The redirect policy for one hop: http(s) only, never https to http."""
    if target.scheme not in ("http", "https") or not target.host:
        raise InvalidArgument(
            f"{shown(source)} redirected to an unsupported URL (scheme {target.scheme!r})"
        )
    if source.scheme == "https" and target.scheme == "http":
        raise FailedPrecondition(
            f"{shown(source)} redirected from https to plain http ({shown(target)}); "
            "refusing to download over an unencrypted connection"
        )


def make_client(options: HttpOptions) -> httpx.Client:
    timeout = httpx.Timeout(
        connect=options.connect_timeout,
        read=options.stall_timeout,
        write=options.stall_timeout,
        pool=options.connect_timeout,
    )
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    headers.update(dict(options.headers))
    return httpx.Client(
        timeout=timeout,
        follow_redirects=False,
        transport=options.transport,
        headers=headers,
    )


@contextmanager
def open_url(
    client: httpx.Client,
    url: str,
    headers: dict[str, str],
    options: HttpOptions,
    *,
    method: str = "GET",
) -> Iterator[httpx.Response]:
    """Stream a request, following redirects by the policy; translate failures.

    Failures raised while the caller reads the body are translated too.
    """
    request = client.build_request(method, url, headers=headers)
    seen = {str(request.url)}
    try:
        response = client.send(request, stream=True)
        try:
            hops = 0
            while response.next_request is not None:
                target = response.next_request
                response.close()
                check_redirect(request.url, target.url)
                hops += 1
                if hops > options.max_redirects:
                    raise FailedPrecondition(
                        f"{shown(url)} redirects more than {options.max_redirects} times"
                    )
                if str(target.url) in seen:
                    raise FailedPrecondition(f"{shown(url)} redirects in a loop")
                seen.add(str(target.url))
                request = target
                response = client.send(request, stream=True)
            yield response
        finally:
            response.close()
    except httpx.ConnectTimeout as exc:
        raise Unavailable(f"cannot connect to {shown(url)}: the connection timed out") from exc
    except httpx.TimeoutException as exc:
        raise Interrupted(
            f"the download of {shown(url)} stalled: no data for "
            f"{options.stall_timeout:g} s ({type(exc).__name__})"
        ) from exc
    except httpx.ConnectError as exc:
        raise Unavailable(f"cannot connect to {shown(url)}: {exc}") from exc
    except httpx.UnsupportedProtocol as exc:
        raise InvalidArgument(f"{shown(url)} redirected to an unsupported URL") from exc
    except httpx.TransportError as exc:
        raise Interrupted(
            f"the connection to {shown(url)} was interrupted ({exc or type(exc).__name__})"
        ) from exc


def raise_for_status(url: str, response: httpx.Response) -> None:
    code = response.status_code
    if code in (200, 206):
        return
    if code in (404, 410):
        raise NotFound(f"{shown(url)} was not found (HTTP {code})")
    if code in (401, 403):
        raise AccessRefused(f"access to {shown(url)} was refused (HTTP {code})", code)
    if code == 429 or code >= 500:
        raise Unavailable(f"{shown(url)} answered HTTP {code}; try again later")
    if 300 <= code < 400:
        raise FailedPrecondition(f"{shown(url)} answered HTTP {code} without a usable Location")
    raise FailedPrecondition(f"{shown(url)} answered HTTP {code} {response.reason_phrase}")


class RetryBudget:
    """Counts failed tries in a row without a new byte; waits with back-off between them.

    Also capped at ``20 * (max_retries + 1)`` failures in all, so a server that
    drips a few bytes per connection cannot keep a pull retrying for ever.
    """

    def __init__(
        self,
        options: HttpOptions,
        check_cancel: Callable[[], None],
        stop: threading.Event | None = None,
    ) -> None:
        self._options = options
        self._check_cancel = check_cancel
        self._stop = stop
        self.failures = 0
        self.total = 0

    def failed(self, exc: Interrupted, progressed: bool, resume_hint: bool) -> None:
        """Wait before the next try, or raise when the budget is spent."""
        self.failures = 1 if progressed else self.failures + 1
        self.total += 1
        limit = self._options.max_retries
        if self.failures > limit or self.total > 20 * (limit + 1):
            hint = "; run the pull again to resume" if resume_hint else "; try again later"
            raise Interrupted(f"{exc} (gave up after {self.total} tries){hint}") from exc
        delay = min(self._options.retry_backoff * 2 ** (self.failures - 1), MAX_BACKOFF_SECONDS)
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            self._check_cancel()
            if self._stop is not None and self._stop.is_set():
                return
            time.sleep(min(left, 0.05))
