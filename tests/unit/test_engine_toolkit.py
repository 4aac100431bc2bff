"""The engine toolkit (backends/toolkit.py), tested once with a fake library.

``FakeEngine`` is what a new engine looks like: a tokenizer, ``_start`` (room or
not), ``_advance`` (one step) and ``_release``. Its "library" generates a
scripted reply one token (character) per step, and counts what it was asked.
The real engines run the same toolkit in tests/conformance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from edged.backends.base import (
    Capabilities,
    Chunk,
    Done,
    Event,
    Failed,
    Job,
    Message,
    Sampling,
    Tool,
)
from edged.backends.toolkit import (
    MAX_SEED,
    EngineCore,
    PromptFormat,
    Running,
    check_prompt,
    common_prefix,
    kv_source,
    request_seed,
)
from edged.common.errors import ContextOverflow, InvalidArgument

EOG = 0  # the fake vocabulary: 0 ends generation, other ids are characters


@dataclass(eq=False, kw_only=True)
class FakeRequest(Running):
    reply: list[int]
    steps: int = 0


class FakeEngine(EngineCore[FakeRequest]):
    """Two sequences; replies are scripted per prompt text (``replies``)."""

    def __init__(
        self, *, sampling: tuple[str, ...] = ("max_tokens", "temperature", "seed"), ctx: int = 32
    ):
        super().__init__(
            Capabilities(
                backend="fake",
                device="cpu",
                formats=("fake",),
                context_length=ctx,
                max_sequences=2,
                batching=True,
                session_kv=False,
                sampling=sampling,
                tools=True,
            ),
            PromptFormat(chat_template="", bos_token="<s>", eos_token="</s>", metadata={"k": "v"}),
        )
        self.replies: dict[str, str] = {}
        self.tokenized: list[str] = []
        self.released: list[tuple[int, str]] = []
        self.fail_start = False

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        self.tokenized.append(text)
        return [ord(c) for c in text]

    def _start(self, job: Job, prompt: list[int], prepared: object) -> FakeRequest | None:
        if self.fail_start:
            raise RuntimeError("the library broke")
        if len(self._active) >= self._caps.max_sequences:
            return None
        text = "".join(map(chr, prompt))
        reply = [ord(c) for c in self.replies.get(text, "ok")] + [EOG]
        return FakeRequest.begin(
            job, prompt, cached=0, source=kv_source(job, resident=False), reply=reply
        )

    def _advance(self, events: list[Event]) -> None:
        for r in list(self._active):
            token = r.reply[r.steps]
            r.steps += 1
            if r.t.completion == 0:
                r.t.t_first = time.perf_counter()
            if token == EOG:
                self._finish(r, "stop", events)
            else:
                self._on_text_token(r, chr(token).encode(), events)

    def _release(self, r: FakeRequest, reason: str) -> None:
        self.released.append((r.job.request_id, reason))


def job(rid: int, prompt: str | None = "hi", **sampling: object) -> Job:
    return Job(rid, Sampling(**sampling), prompt=prompt)  # type: ignore[arg-type]


def run(eng: FakeEngine, steps: int = 50) -> list[Event]:
    out: list[Event] = []
    for _ in range(steps):
        if not eng.has_work():
            break
        out += eng.step()
    return out


def text_of(events: list[Event], rid: int) -> str:
    return "".join(e.text for e in events if isinstance(e, Chunk) and e.request_id == rid)


def done_of(events: list[Event], rid: int) -> Done:
    return next(e for e in events if isinstance(e, Done) and e.request_id == rid)


def test_a_request_streams_its_reply_and_ends_with_stats() -> None:
    eng = FakeEngine()
    eng.replies["hi"] = "hello"
    eng.submit(job(1))
    events = run(eng)
    assert text_of(events, 1) == "hello"
    stats = done_of(events, 1).stats
    assert (stats.finish_reason, stats.prompt_tokens, stats.completion_tokens) == ("stop", 2, 5)
    assert sum(e.tokens for e in events if isinstance(e, Chunk)) == 5
    assert eng.released == [(1, "stop")] and not eng.has_work()


def test_stop_strings_and_max_tokens_end_a_request() -> None:
    eng = FakeEngine()
    eng.replies["a"] = "one. two"
    eng.replies["b"] = "abcdefgh"
    eng.submit(job(1, "a", stop=(". ",)))
    eng.submit(job(2, "b", max_tokens=3))
    events = run(eng)
    assert text_of(events, 1) == "one"  # the stop string never reaches the client
    assert done_of(events, 1).stats.finish_reason == "stop_sequence"
    assert done_of(events, 1).stats.stop_sequence == ". "
    assert text_of(events, 2) == "abc"
    assert done_of(events, 2).stats.finish_reason == "length"


def test_jobs_wait_for_room_and_are_encoded_once() -> None:
    eng = FakeEngine()
    for rid in (1, 2, 3):
        eng.replies[f"p{rid}"] = "xyz"
        eng.submit(job(rid, f"p{rid}"))
    first = eng.step()
    assert not any(isinstance(e, Done) for e in first)
    assert len(eng._active) == 2  # the third waits for a sequence
    events = first + run(eng)
    assert [text_of(events, r) for r in (1, 2, 3)] == ["xyz"] * 3
    assert eng.tokenized.count("p3") == 1  # waiting did not re-tokenize it


def test_cancel_while_queued_and_while_running() -> None:
    eng = FakeEngine()
    eng.replies["long"] = "x" * 20
    for rid in (1, 2, 3):
        eng.submit(job(rid, "long"))
    eng.step()
    eng.cancel(3)  # queued: never starts
    eng.cancel(1)  # running: ends at the next step
    events = run(eng)
    assert done_of(events, 3).stats.finish_reason == "cancelled"
    assert done_of(events, 1).stats.finish_reason == "cancelled"
    assert done_of(events, 2).stats.finish_reason == "stop"
    assert (1, "cancelled") in eng.released and all(rid != 3 for rid, _ in eng.released)


def test_bad_prompts_fail_at_once_even_when_full() -> None:
    eng = FakeEngine()
    eng.replies["long"] = "x" * 20
    eng.submit(job(1, "long"))
    eng.submit(job(2, "long"))
    eng.submit(job(3, "   "))
    eng.submit(job(4, "y" * 40))  # the context holds 32
    events = eng.step()
    failed = {e.request_id: e for e in events if isinstance(e, Failed)}
    assert failed[3].error == "InvalidArgument" and "empty" in failed[3].message
    assert failed[4].error == "ContextOverflow" and "holds 32" in failed[4].message


def test_chat_goes_through_the_template_and_bos_is_not_doubled() -> None:
    eng = FakeEngine()
    chat = Job(1, Sampling(), messages=(Message("user", "hey"),))
    eng.submit(chat)
    run(eng)
    assert eng.tokenized == ["<|im_start|>user\nhey<|im_end|>\n<|im_start|>assistant\n"]
    assert eng.describe().chat_template == ""  # the model ships none: ChatML is used
    assert eng.describe().metadata == {"k": "v"}


def test_unsupported_sampling_is_refused_naming_the_backend() -> None:
    eng = FakeEngine(sampling=("max_tokens", "temperature"))
    eng.submit(job(1, min_p=0.1))
    eng.submit(job(2, top_k=40))  # the default value: nothing asked for
    events = run(eng)
    failed = [e for e in events if isinstance(e, Failed)]
    assert [f.request_id for f in failed] == [1]
    assert "min_p is not supported by the fake backend" in failed[0].message
    assert done_of(events, 2).stats.finish_reason == "stop"


def test_an_expired_deadline_never_starts() -> None:
    eng = FakeEngine()
    eng.submit(Job(1, Sampling(), prompt="hi", deadline=time.time() - 1))
    events = run(eng)
    assert [(type(e).__name__, getattr(e, "error", "")) for e in events] == [
        ("Failed", "DeadlineExceeded")
    ]


def test_a_library_failure_at_start_fails_that_request_only() -> None:
    eng = FakeEngine()
    eng.fail_start = True
    eng.submit(job(1))
    events = eng.step()
    assert isinstance(events[0], Failed) and events[0].error == "Internal"
    assert "the library broke" in events[0].message
    eng.fail_start = False
    eng.submit(job(2))
    assert done_of(run(eng), 2).stats.finish_reason == "stop"


def test_fail_all_and_close_release_every_request() -> None:
    eng = FakeEngine()
    eng.replies["long"] = "x" * 20
    eng.submit(job(1, "long"))
    eng.submit(job(2, "long"))
    eng.step()
    events: list[Event] = []
    eng._fail_all(InvalidArgument("boom"), events)
    assert {(e.request_id, e.error) for e in events if isinstance(e, Failed)} == {
        (1, "InvalidArgument"),
        (2, "InvalidArgument"),
    }
    assert sorted(eng.released) == [(1, "failed"), (2, "failed")]
    eng.submit(job(3, "long"))
    eng.step()
    eng.close()
    assert (3, "cancelled") in eng.released and not eng._active


# ---------------------------------------------------------------- the shared rules


def test_the_seed_rule() -> None:
    assert request_seed(Sampling(seed=7)) == 7
    assert request_seed(Sampling(seed=MAX_SEED)) == MAX_SEED
    drawn = {request_seed(Sampling()) for _ in range(64)}
    assert len(drawn) > 1 and all(0 <= s <= MAX_SEED for s in drawn)
    assert MAX_SEED == 0xFFFFFFFE  # 0xFFFFFFFF is llama.cpp's "pick a random seed"
    with pytest.raises(InvalidArgument):
        Sampling(seed=MAX_SEED + 1)  # never a seed a request may name


@pytest.mark.parametrize(
    ("session", "history", "resident", "restored", "cached", "expected"),
    [
        (True, True, True, "", 10, "resident"),
        (True, True, False, "disk", 10, "disk"),
        (True, True, False, "", 3, "rebuilt"),
        (True, False, False, "", 3, "prefix"),
        (False, False, False, "", 3, "prefix"),
        (False, False, False, "", 0, "none"),
    ],
)
def test_the_kv_source_rule(
    session: bool, history: bool, resident: bool, restored: str, cached: int, expected: str
) -> None:
    messages = (Message("user", "a"), Message("assistant", "b"), Message("user", "c"))
    j = Job(
        1,
        Sampling(),
        messages=messages if history else messages[:1],
        session_id="s" if session else None,
    )
    assert kv_source(j, resident=resident, restored=restored, cached=cached) == expected


def test_common_prefix_and_prompt_checks() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2
    check_prompt([1, 2], 3)
    with pytest.raises(InvalidArgument, match="empty"):
        check_prompt([], 3)
    with pytest.raises(ContextOverflow, match="is 3 tokens but the context holds 3"):
        check_prompt([1, 2, 3], 3)


def test_tool_calls_in_a_reply_leave_as_structured_deltas() -> None:
    eng = FakeEngine(ctx=4096)
    eng.replies[CHATML_HI] = '{"tool_calls": [{"name": "now", "arguments": {}}]}'
    eng.submit(Job(1, Sampling(), messages=(Message("user", "hi"),), tools=(Tool("now"),)))
    events = run(eng, steps=500)
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert "".join(c.text for c in chunks) == ""
    (delta,) = [d for c in chunks for d in c.tool_calls]
    assert (delta.index, delta.name, delta.arguments) == (0, "now", "{}")
    assert sum(c.tokens for c in chunks) == done_of(events, 1).stats.completion_tokens
    assert done_of(events, 1).stats.finish_reason == "tool_calls"


def test_a_call_to_a_tool_not_offered_stays_text() -> None:
    eng = FakeEngine(ctx=4096)
    reply = '{"tool_calls": [{"name": "rm", "arguments": {}}]}'
    eng.replies[CHATML_HI] = reply
    eng.submit(Job(1, Sampling(), messages=(Message("user", "hi"),), tools=(Tool("now"),)))
    events = run(eng, steps=500)
    assert text_of(events, 1) == reply and done_of(events, 1).stats.finish_reason == "stop"


CHATML_HI = (
    "<|im_start|>system\nYou can call these tools. Each has a name, a description and the JSON "
    'schema of its arguments:\n[{"name": "now", "description": "", "parameters": {"type": '
    '"object", "properties": {}}}]\nTo call tools, reply with only this JSON and nothing else:\n'
    '{"tool_calls": [{"name": "<tool name>", "arguments": {<the arguments>}}]}\nIf no tool is '
    "needed, answer in plain text instead.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    "<|im_start|>assistant\n"
)
