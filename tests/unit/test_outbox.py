"""The worker's outbox: when a request's text is sent, and how it is merged."""

from __future__ import annotations

import pytest

from edged.backends.base import (
    Chunk,
    Done,
    Event,
    Failed,
    Job,
    Sampling,
    Stats,
    TokenLogprob,
    ToolCallDelta,
)
from edged.backends.outbox import Outbox, merge_chunks
from edged.daemon.config import load_engine


def job(rid: int, interval: float) -> Job:
    return Job(rid, Sampling(), prompt="hi", stream_interval_s=interval)


def done(rid: int) -> Done:
    return Done(rid, Stats(finish_reason="stop"))


def test_first_text_goes_at_once_then_waits_for_the_interval() -> None:
    box = Outbox()
    box.expect(job(1, 0.1))
    box.add([Chunk(1, "Once", 1)], now=10.0)
    assert box.due(10.0)
    assert box.take() == [Chunk(1, "Once", 1)]
    box.add([Chunk(1, " upon", 1)], now=10.02)
    box.add([Chunk(1, " a", 1)], now=10.05)
    assert not box.due(10.05)
    assert not box.due(10.119)
    assert box.due(10.12)  # the oldest held text has waited its 100 ms
    assert box.take() == [Chunk(1, " upon a", 2)]
    assert not box and not box.due(11.0)


def test_the_end_goes_at_once_with_the_text_before_it() -> None:
    box = Outbox()
    box.expect(job(1, 5.0))
    box.add([Chunk(1, "a", 1)], now=0.0)
    box.take()
    box.add([Chunk(1, "b", 1)], now=0.01)
    assert not box.due(0.02)
    box.add([Chunk(1, "c", 1), done(1)], now=0.02)
    assert box.due(0.02)
    assert box.take() == [Chunk(1, "bc", 2), done(1)]


def test_interval_zero_sends_every_token() -> None:
    box = Outbox()
    box.expect(job(1, 0.0))
    for i in range(3):
        box.add([Chunk(1, str(i), 1)], now=float(i))
        assert box.due(float(i))
        assert box.take() == [Chunk(1, str(i), 1)]


def test_a_request_never_announced_is_not_held() -> None:
    box = Outbox()
    box.add([Chunk(7, "x", 1)], now=0.0)
    box.take()
    box.add([Chunk(7, "y", 1)], now=0.5)
    assert box.due(0.5)


def test_text_goes_early_with_another_request_never_late() -> None:
    box = Outbox()
    box.expect(job(1, 10.0))
    box.expect(job(2, 0.05))
    box.add([Chunk(1, "a", 1), Chunk(2, "x", 1)], now=0.0)
    box.take()
    box.add([Chunk(1, "b", 1), Chunk(2, "y", 1)], now=0.01)
    assert not box.due(0.05)
    assert box.due(0.061)  # request 2's interval; request 1's text goes along
    assert box.take() == [Chunk(1, "b", 1), Chunk(2, "y", 1)]


def test_a_failure_ends_the_request_and_forgets_its_interval() -> None:
    box = Outbox()
    box.expect(job(1, 10.0))
    box.add([Chunk(1, "a", 1)], now=0.0)
    box.add([Failed(1, "Internal", "boom")], now=0.0)
    assert box.due(0.0)
    box.take()
    # the same id again (never happens in practice): not held, not streaming
    box.add([Chunk(1, "b", 1)], now=1.0)
    box.take()
    box.add([Chunk(1, "c", 1)], now=1.0)
    assert box.due(1.0)


def test_merge_joins_each_request_s_chunks_up_to_its_end_keeping_its_order() -> None:
    events = [
        Chunk(1, "a", 1),
        Chunk(2, "x", 1),
        Chunk(1, "b", 2),
        done(1),
        Chunk(2, "y", 1),
    ]
    assert merge_chunks(events) == [
        Chunk(1, "ab", 3),
        Chunk(2, "xy", 2),
        done(1),
    ]


def test_merge_never_joins_text_across_a_request_s_end() -> None:
    events = [Chunk(1, "a", 1), done(1), Chunk(1, "b", 1)]
    assert merge_chunks(events) == events


def test_the_daemon_default_comes_from_the_environment() -> None:
    assert load_engine({}).stream_interval_ms == 100
    assert load_engine({"EDGED_STREAM_INTERVAL_MS": "0"}).stream_interval_ms == 0
    with pytest.raises(ValueError, match="EDGED_STREAM_INTERVAL_MS"):
        load_engine({"EDGED_STREAM_INTERVAL_MS": "20000"})


def test_merge_keeps_tool_call_parts_and_logprobs_in_order() -> None:
    lp = [TokenLogprob(i, b"x", -0.1 * i) for i in range(3)]
    events: list[Event] = [
        Chunk(1, "a", 1, logprobs=(lp[0],)),
        Chunk(1, "", 1, tool_calls=(ToolCallDelta(0, "call_1", "t", '{"a"'),), logprobs=(lp[1],)),
        Chunk(1, "", 1, tool_calls=(ToolCallDelta(0, arguments=": 1}"),), logprobs=(lp[2],)),
    ]
    (merged,) = merge_chunks(events)
    assert isinstance(merged, Chunk) and merged.tokens == 3 and merged.logprobs == tuple(lp)
    assert "".join(d.arguments for d in merged.tool_calls) == '{"a": 1}'
