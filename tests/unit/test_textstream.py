from __future__ import annotations

import pytest

from edged.backends.textstream import TextStream


def feed_all(ts: TextStream, pieces: list[bytes]) -> str:
    return "".join(ts.feed(p) for p in pieces) + ts.finish()


def test_plain_text_passes_through() -> None:
    assert feed_all(TextStream(), [b"Hel", b"lo", b" world"]) == "Hello world"


def test_utf8_split_across_tokens_is_held_until_complete() -> None:
    ts = TextStream()
    e = "é".encode()
    assert ts.feed(e[:1]) == ""
    assert ts.feed(e[1:]) == "é"


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert feed_all(TextStream(), [b"\xff", b"ok"]) == "\ufffdok"


@pytest.mark.parametrize(
    ("pieces", "stop", "expect", "matched"),
    [
        ([b"a", b"b", b"STOP", b"c"], ["STOP"], "ab", "STOP"),
        ([b"a", b"ST", b"OP"], ["STOP"], "a", "STOP"),
        ([b"a", b"ST", b"x"], ["STOP"], "aSTx", None),
        ([b"xy", b"z"], ["yz", "z"], "x", "yz"),
        ([b"ab", b"c"], ["bc", "abc"], "", "abc"),
        ([b"hello ST"], ["STOP"], "hello ST", None),
    ],
)
def test_stop_strings(
    pieces: list[bytes], stop: list[str], expect: str, matched: str | None
) -> None:
    ts = TextStream(stop)
    assert feed_all(ts, pieces) == expect
    assert ts.matched == matched


def test_stop_prefix_is_held_back_then_released() -> None:
    ts = TextStream(["STOP"])
    assert ts.feed(b"hi S") == "hi "
    assert ts.feed(b"x") == "Sx"
