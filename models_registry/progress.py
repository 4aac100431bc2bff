"""Progress reports for pulls."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PullProgress:
    """One progress report. ``total`` is 0 when unknown."""

    status: str
    completed: int = 0
    total: int = 0


ProgressFn = Callable[[PullProgress], None]


class ThrottledProgress:
    """Forwards byte-count reports to ``progress`` at most every ``interval`` seconds.

    The first report and the final one (``done``) always go through.
    """

    def __init__(
        self,
        progress: ProgressFn | None,
        status: str,
        total: int = 0,
        interval: float = 0.1,
    ) -> None:
        self._progress = progress
        self._status = status
        self._total = total
        self._interval = interval
        self._last = -1.0

    def update(self, completed: int) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if self._last >= 0 and now - self._last < self._interval:
            return
        self._last = now
        self._progress(PullProgress(self._status, completed, self._total))

    def done(self, completed: int) -> None:
        if self._progress is not None:
            self._progress(PullProgress(self._status, completed, self._total or completed))


def report(progress: ProgressFn | None, status: str, completed: int = 0, total: int = 0) -> None:
    """Send one report if there is a callback."""
    if progress is not None:
        progress(PullProgress(status, completed, total))
