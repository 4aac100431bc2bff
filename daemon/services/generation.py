"""Shared streaming of one generation to the wire (used by Inference and Sessions)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from edged.backends.base import Chunk, Done, Job
from edged.daemon.app import App
from edged.daemon.convert import stats_to
from edged.daemon.scheduler import ResolvedModel
from edged.v1 import edged_pb2 as pb


def deadline_of(context: Any) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.time() + float(remaining)


@dataclass
class Outcome:
    """What a finished generation produced (sessions record it as the turn)."""

    text: list[str] = field(default_factory=list)
    done: Done | None = None


async def stream_generation(
    app: App, model: ResolvedModel, job: Job, outcome: Outcome | None = None
) -> AsyncIterator[pb.GenerateChunk]:
    accepted = time.perf_counter()
    first: float | None = None
    async for event in app.scheduler.generate(model, job):
        if isinstance(event, Chunk):
            if first is None:
                first = time.perf_counter()
            if outcome is not None:
                outcome.text.append(event.text)
            yield pb.GenerateChunk(text=event.text, tokens=event.tokens)
            continue
        stats = stats_to(event.stats, **_backend_device(app, model))
        if first is not None:
            # measured here: from the daemon accepting the request to the first text
            stats.time_to_first_token_ms = (first - accepted) * 1000.0
        stats.total_ms = (time.perf_counter() - accepted) * 1000.0
        if outcome is not None:
            outcome.done = event
        yield pb.GenerateChunk(stats=stats)


def _backend_device(app: App, model: ResolvedModel) -> dict[str, str]:
    desc = app.scheduler.describe(model)
    if desc is None:
        return {"backend": "", "device": ""}
    return {"backend": desc.capabilities.backend, "device": desc.capabilities.device}
