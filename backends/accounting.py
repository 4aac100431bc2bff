"""Per-request bookkeeping shared by the engines: the wait queue and final stats."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edged.backends.base import Done, Event, Failed, Job, Stats

log = logging.getLogger(__name__)


def expired(job: Job) -> Failed | None:
    """The failure for a queued job whose deadline passed (it never starts)."""
    if job.deadline is None or time.time() <= job.deadline:
        return None
    log.info("request %d passed its deadline while queued: never started", job.request_id)
    return Failed(job.request_id, "DeadlineExceeded", "the deadline passed while queued")


@dataclass(eq=False)
class Waiting:
    """A job in the queue, with its prompt once encoded (a job that waits for
    room is tokenized once, not at every step)."""

    job: Job
    prompt: list[int] | None = None
    prepared: object = None  # what the engine's _prepare made of the job (a grammar)


class WaitQueue:
    """Jobs submitted but not started: FIFO, cancellable, deadlines honoured.

    ``admit`` offers each waiting job to the engine's ``start`` callback, which
    returns False to leave it waiting (no room yet); jobs whose deadline has
    passed are failed instead and never offered.
    """

    def __init__(self) -> None:
        self._jobs: deque[Waiting] = deque()
        self._cancelled: list[Job] = []

    def __bool__(self) -> bool:
        return bool(self._jobs or self._cancelled)

    def __len__(self) -> int:
        return len(self._jobs)

    def submit(self, job: Job) -> None:
        self._jobs.append(Waiting(job))

    def cancel(self, request_id: int) -> None:
        for w in list(self._jobs):
            if w.job.request_id == request_id:
                log.info("request %d cancelled while queued: never started", request_id)
                self._jobs.remove(w)
                self._cancelled.append(w.job)

    def admit(self, start: Callable[[Waiting], bool], events: list[Event]) -> None:
        for job in self._cancelled:
            events.append(Done(job.request_id, Stats(finish_reason="cancelled")))
        self._cancelled.clear()
        waiting: deque[Waiting] = deque()
        while self._jobs:
            w = self._jobs.popleft()
            late = expired(w.job)
            if late is not None:
                events.append(late)
            elif not start(w):
                waiting.append(w)
        self._jobs = waiting


@dataclass
class Timing:
    """What a running request has done so far (perf_counter times)."""

    prompt_tokens: int
    cached: int
    kv_source: str
    t_start: float
    t_first: float = 0.0
    t_prefilled: float = 0.0
    completion: int = 0
    unsent: int = 0
    drafted: int = 0
    accepted: int = 0

    def stats(self, reason: str, stop_sequence: str = "") -> Stats:
        """The request's final statistics, as of now."""
        now = time.perf_counter()
        first = self.t_first or now
        decode_s = now - first
        prefill_s = (self.t_prefilled or now) - self.t_start
        evaluated = self.prompt_tokens - self.cached
        return Stats(
            prompt_tokens=self.prompt_tokens,
            cached_prompt_tokens=self.cached,
            completion_tokens=self.completion,
            time_to_first_token_ms=(first - self.t_start) * 1000.0 if self.completion else 0.0,
            decode_tokens_per_second=(self.completion - 1) / decode_s
            if self.completion > 1 and decode_s > 0
            else 0.0,
            prefill_tokens_per_second=evaluated / prefill_s if prefill_s > 0 else 0.0,
            total_ms=(now - self.t_start) * 1000.0,
            finish_reason=reason,
            kv_source=self.kv_source,
            stop_sequence=stop_sequence,
            drafted_tokens=self.drafted,
            accepted_tokens=self.accepted,
        )
