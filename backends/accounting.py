"""Per-request bookkeeping shared by the engines: queue expiry and final stats."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from edged.backends.base import Chunk, Done, Event, Failed, Job, Stats
from edged.backends.textstream import TextStream

log = logging.getLogger(__name__)


def expired(job: Job) -> Failed | None:
    """The failure for a queued job whose deadline passed (it never starts)."""
    if job.deadline is None or time.time() <= job.deadline:
        return None
    log.info("request %d passed its deadline while queued: never started", job.request_id)
    return Failed(job.request_id, "DeadlineExceeded", "the deadline passed while queued")


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

    def final_events(self, job: Job, stream: TextStream, reason: str) -> list[Event]:
        """The held-back text (if any) and the Done with the request's stats."""
        out: list[Event] = []
        tail = stream.finish() if reason != "stop_sequence" else ""
        if tail:
            out.append(Chunk(job.request_id, tail, self.unsent))
        now = time.perf_counter()
        first = self.t_first or now
        decode_s = now - first
        prefill_s = (self.t_prefilled or now) - self.t_start
        evaluated = self.prompt_tokens - self.cached
        stats = Stats(
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
            stop_sequence=stream.matched or "",
        )
        out.append(Done(job.request_id, stats))
        return out
