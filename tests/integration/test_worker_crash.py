"""A native crash ends the worker only: streams get UNAVAILABLE, the daemon serves on."""

from __future__ import annotations

import os
import signal

import grpc
import pytest

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon
from tests.integration.helpers import chat, collect

pytestmark = pytest.mark.model


def test_sigkill_worker_mid_stream(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    call = d.inference.Generate(
        chat("smollm2", "Tell me a long story.", temperature=0.8, max_tokens=2000), timeout=120
    )
    it = iter(call)
    next(it)
    loaded = d.models.ListLoaded(pb.ListLoadedRequest(), timeout=10).models
    assert len(loaded) == 1 and loaded[0].pid > 0
    pid = loaded[0].pid
    assert pid != d.proc.pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(grpc.RpcError) as err:
        for _ in it:
            pass
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "crashed" in err.value.details() and "signal 9" in err.value.details()
    assert d.proc.poll() is None, "the daemon must survive"
    # the next request starts a fresh worker
    _, stats, _ = collect(
        d.inference.Generate(
            chat("smollm2", "Say hello.", temperature=0.0, max_tokens=8), timeout=120
        )
    )
    assert stats.completion_tokens > 0
    loaded = d.models.ListLoaded(pb.ListLoadedRequest(), timeout=10).models
    assert loaded[0].pid != pid


def test_graceful_shutdown_finishes_in_flight_stream(fresh_daemon: Daemon) -> None:
    d = fresh_daemon
    call = d.inference.Generate(
        chat("smollm2", "Count to twenty.", temperature=0.0, max_tokens=40), timeout=120
    )
    it = iter(call)
    next(it)
    d.proc.send_signal(signal.SIGTERM)
    rest = list(it)  # the in-flight stream completes within the grace period
    assert rest and rest[-1].HasField("stats")
    assert d.proc.wait(timeout=30) == 0
    assert not d.socket.exists()
