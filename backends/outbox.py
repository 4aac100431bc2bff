"""When the worker sends a request's text to the daemon.

Every message costs the daemon and the client CPU (a pipe read, a gRPC write,
several thread wake-ups on each side). When decoding uses every core, each of
those wake-ups preempts a decode thread, and ggml's threads wait for each other
at every barrier: measured here (2 cores, SmolLM2, one stream), sending text
every 50 ms made decoding 6% slower than in-process, every 200 ms about 1.5%.
So a request's text may be held for up to its ``Job.stream_interval_s`` and
sent with what follows; a request's first text and its end always go at once
(time to first token and completion are never delayed).
"""

from __future__ import annotations

from edged.backends.base import Chunk, Event, Job


def merge_chunks(events: list[Event]) -> list[Event]:
    """Join each request's chunks up to its end into one (its text in order;
    different requests' events are independent streams)."""
    out: list[Event] = []
    last_chunk: dict[int, int] = {}
    for ev in events:
        if isinstance(ev, Chunk) and ev.request_id in last_chunk:
            i = last_chunk[ev.request_id]
            prev = out[i]
            assert isinstance(prev, Chunk)
            out[i] = Chunk(
                ev.request_id,
                prev.text + ev.text,
                prev.tokens + ev.tokens,
                tool_calls=prev.tool_calls + ev.tool_calls,
                logprobs=prev.logprobs + ev.logprobs,
            )
            continue
        if isinstance(ev, Chunk):
            last_chunk[ev.request_id] = len(out)
        else:
            last_chunk.pop(ev.request_id, None)
        out.append(ev)
    return out


class Outbox:
    """Events held for the daemon, and when they must be sent.

    ``due(now)`` is true once any held event has waited as long as its request
    allows; everything held then goes in one message (other requests' text
    goes early, never late).
    """

    def __init__(self) -> None:
        self._held: list[Event] = []
        self._interval: dict[int, float] = {}  # request id -> seconds its text may wait
        self._streaming: set[int] = set()  # requests whose first text was sent
        self._due: float | None = None

    def expect(self, job: Job) -> None:
        self._interval[job.request_id] = max(0.0, job.stream_interval_s)

    def add(self, events: list[Event], now: float) -> None:
        for ev in events:
            self._held.append(ev)
            rid = ev.request_id
            if isinstance(ev, Chunk) and rid in self._streaming:
                due = now + self._interval.get(rid, 0.0)
            elif isinstance(ev, Chunk):
                self._streaming.add(rid)
                due = now
            else:  # the request ended (Done or Failed)
                self._streaming.discard(rid)
                self._interval.pop(rid, None)
                due = now
            self._due = due if self._due is None else min(self._due, due)

    def __bool__(self) -> bool:
        return bool(self._held)

    def due(self, now: float) -> bool:
        return self._due is not None and now >= self._due

    def take(self) -> list[Event]:
        """Everything held, each request's chunks merged (:func:`merge_chunks`)."""
        out = merge_chunks(self._held)
        self._held = []
        self._due = None
        return out
