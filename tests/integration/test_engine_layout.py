"""The llama.cpp engine moves sequences to keep the running ones consecutive,
and nothing moved changes an answer (real SmolLM2, in-process engine).

With one KV stream per sequence, llama.cpp decodes consecutive sequence ids
as one graph; a gap costs a second graph every step, so the engine swaps
contents instead. These tests make gaps on purpose and compare every answer
with the same conversation run alone on a fresh engine at temperature 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.backends.base import Chunk, Done, Event, Failed, Job, LoadSpec, Message, Sampling
from edged.backends.llamacpp.engine import LlamaEngine

QUESTIONS = [
    "My cat is called Biscuit. What is my cat called?",
    "I live in Lisbon. Which city do I live in?",
    "My favourite colour is teal. What is my favourite colour?",
]
FOLLOW_UP = "Say it again in one short sentence."
SAMPLING = Sampling(temperature=0.0, max_tokens=20)
# Speculation lets a stream finish steps earlier than the others (and the
# engine then moves sequences); the first turns run without it so that the
# three sessions end together and sit on sequences 0, 1 and 2, as the test
# sets up. Everything after runs with the default (speculation on).
IN_STEP = Sampling(temperature=0.0, max_tokens=20, speculative="off")


@pytest.fixture(scope="module")
def gguf(smollm2_store: Path) -> str:
    blobs = [p for p in smollm2_store.rglob("sha256-*") if p.is_file()]
    return str(max(blobs, key=lambda p: p.stat().st_size))


def new_engine(gguf: str) -> LlamaEngine:
    return LlamaEngine(LoadSpec(gguf, "test-layout", 1024, 2, max_sequences=4))


@pytest.fixture
def engine(gguf: str) -> Iterator[LlamaEngine]:
    e = new_engine(gguf)
    yield e
    e.close()


def first_turn(i: int) -> tuple[Message, ...]:
    return (Message("user", QUESTIONS[i]),)


def watch_batches(engine: LlamaEngine) -> list[list[int]]:
    """Record the sequence ids of every batch the engine decodes, in order."""
    seen: list[list[int]] = []
    decode = engine._ctx.decode

    def recording(entries: list[tuple[int, int, int, bool]]) -> None:
        seen.append([seq for _, _, seq, _ in entries])
        decode(entries)

    engine._ctx.decode = recording  # type: ignore[method-assign]
    return seen


def one_graph(batch: list[int]) -> bool:
    """llama.cpp decodes a batch as one graph per step only when its sequence
    ids come in order and are consecutive."""
    ids = sorted(set(batch))
    return batch == sorted(batch) and ids == list(range(ids[0], ids[0] + len(ids)))


def run(engine: LlamaEngine, jobs: list[Job]) -> dict[int, str]:
    """Step until done; returns each request's text."""
    for job in jobs:
        engine.submit(job)
    text = {job.request_id: "" for job in jobs}
    while engine.has_work():
        events: list[Event] = engine.step()
        for ev in events:
            if isinstance(ev, Chunk):
                text[ev.request_id] += ev.text
            elif isinstance(ev, Failed):
                raise AssertionError(f"request {ev.request_id} failed: {ev.message}")
            elif isinstance(ev, Done):
                assert ev.stats.finish_reason in {"stop", "length"}
    return text


def alone(gguf: str, *turns: tuple[Message, ...]) -> list[str]:
    """The same turns of one session, one after another, on a fresh engine:
    nothing else runs, so nothing is ever moved."""
    e = new_engine(gguf)
    try:
        return [
            run(e, [Job(n, SAMPLING, messages=conversation, session_id="only")])[n]
            for n, conversation in enumerate(turns)
        ]
    finally:
        e.close()


def test_a_gap_is_closed_and_every_answer_stays_its_own(gguf: str, engine: LlamaEngine) -> None:
    # Three sessions take sequences 0, 1 and 2.
    first = run(
        engine,
        [Job(i, IN_STEP, messages=first_turn(i), session_id=f"s{i}") for i in range(3)],
    )
    assert [s.session_id for s in engine._slots[:3]] == ["s0", "s1", "s2"]

    def second_turn(i: int) -> tuple[Message, ...]:
        return (*first_turn(i), Message("assistant", first[i]), Message("user", FOLLOW_UP))

    # Sessions 0 and 2 take their next turn together while 1 stays idle
    # between them: the engine must move one of them next to the other.
    seen = watch_batches(engine)
    second = run(
        engine,
        [Job(10 + i, SAMPLING, messages=second_turn(i), session_id=f"s{i}") for i in (0, 2)],
    )
    assert seen and all(one_graph(b) for b in seen), f"split batches: {seen}"
    resident = {s.session_id: s.seq for s in engine._slots if s.session_id}
    assert resident["s0"] != 0 or resident["s2"] != 2, "nothing moved"

    # Then session 1's next turn, and session 0's third: whatever moved, each
    # finds its own KV where it now lives.
    third = run(
        engine,
        [
            Job(21, SAMPLING, messages=second_turn(1), session_id="s1"),
            Job(
                30,
                SAMPLING,
                messages=(
                    *second_turn(0),
                    Message("assistant", second[10]),
                    Message("user", "Why?"),
                ),
                session_id="s0",
            ),
        ],
    )
    assert all(one_graph(b) for b in seen), f"split batches: {seen}"

    # Every answer is what that session gives running alone.
    for i in range(3):
        expected = alone(gguf, first_turn(i), second_turn(i))
        assert first[i] == expected[0]
        assert (second[10 + i] if i != 1 else third[21]) == expected[1]
    third_turn = (*second_turn(0), Message("assistant", second[10]), Message("user", "Why?"))
    assert third[30] == alone(gguf, first_turn(0), second_turn(0), third_turn)[2]


def test_a_request_that_ends_mid_run_leaves_no_gap(gguf: str, engine: LlamaEngine) -> None:
    short = Sampling(temperature=0.0, max_tokens=2)
    jobs = [
        Job(1, SAMPLING, prompt="The capital of France is"),
        Job(2, short, prompt="One, two, three,"),
        Job(3, SAMPLING, prompt="Water boils at"),
    ]
    seen = watch_batches(engine)
    got = run(engine, jobs)
    assert all(one_graph(b) for b in seen), f"split batches: {seen}"
    # request 2 ended first (after its two tokens), between the other two;
    # from then on they went on together
    sizes = [len(set(b)) for b in seen]
    ended = sizes.index(2)
    assert ended >= 2, sizes
    assert sizes[:ended] == [3] * ended and sizes[ended:] == [2] * (len(sizes) - ended), sizes
    for job in jobs:
        e = new_engine(gguf)
        try:
            assert got[job.request_id] == run(e, [job])[job.request_id]
        finally:
            e.close()


def test_a_short_prompt_asked_again_reuses_the_slot_that_holds_it(
    gguf: str, engine: LlamaEngine
) -> None:
    """A prompt under MIN_SHARED_PREFIX tokens, asked again with other slots
    free: the slot that holds it whole is taken, so its first token needs one
    row (the time to first token of a repeated short prompt is one step)."""
    job = Job(1, SAMPLING, prompt="Once upon a time")
    first = run(engine, [job])
    seen = watch_batches(engine)
    again = run(engine, [Job(2, SAMPLING, prompt="Once upon a time")])
    assert again[2] == first[1]
    assert len(seen[0]) == 1, seen[0]
