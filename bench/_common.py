"""Shared bench helpers: a private daemon with smollm2, timing a stream."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, start_daemon


@contextmanager
def private_daemon(threads: int, **env: str) -> Iterator[tuple[Daemon, Path]]:
    """A daemon in a temporary home with smollm2 pulled; yields it and the GGUF path."""
    with tempfile.TemporaryDirectory(prefix="edged-bench-") as tmp:
        os.environ["EDGED_TEST_THREADS"] = str(threads)
        d = start_daemon(Path(tmp), EDGED_THREADS=str(threads), **env)
        try:
            final = None
            for p in d.models.Pull(pb.PullRequest(source="smollm2"), timeout=900):
                final = p
            assert final is not None
            hexd = final.model.digest.split(":", 1)[1]
            yield d, Path(tmp) / "data" / "models" / "blobs" / f"sha256-{hexd}"
        finally:
            d.stop()


@dataclass
class Timed:
    ttft_ms: float
    decode_tps: float
    tokens: int
    wall_s: float
    stats: Any


def timed(stream: Any) -> Timed:
    t0 = time.perf_counter()
    first = None
    stats = None
    for chunk in stream:
        if chunk.HasField("stats"):
            stats = chunk.stats
        elif first is None:
            first = time.perf_counter()
    return _timing(t0, first, time.perf_counter(), stats)


async def timed_async(stream: Any) -> Timed:
    """:func:`timed` for a grpc.aio stream."""
    t0 = time.perf_counter()
    first = None
    stats = None
    async for chunk in stream:
        if chunk.HasField("stats"):
            stats = chunk.stats
        elif first is None:
            first = time.perf_counter()
    return _timing(t0, first, time.perf_counter(), stats)


def _timing(t0: float, first: float | None, end: float, stats: Any) -> Timed:
    assert stats is not None
    first = first or end
    n = stats.completion_tokens
    tps = (n - 1) / (end - first) if n > 1 and end > first else 0.0
    return Timed((first - t0) * 1000, tps, n, end - t0, stats)
