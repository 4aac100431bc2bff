"""llama-server's editor stop rules for infill replies, as edged streams them."""

from __future__ import annotations

from edged.backends.infill_rules import InfillRules


def feed_all(rules: InfillRules, pieces: list[str], gen_ms: float = 0.0) -> tuple[str, str | None]:
    out = []
    for p in pieces:
        text, why = rules.feed(p, gen_ms)
        out.append(text)
        if why:
            return "".join(out), why
    return "".join(out) + rules.finish(), None


def test_a_less_indented_line_ends_the_block_and_is_cut() -> None:
    rules = InfillRules(n_indent=4)
    pieces = ["x = 1", "\n", "    ", "y = 2\n", "  ", "z", " = 3\n"]
    assert feed_all(rules, pieces) == ("x = 1\n    y = 2\n  ", "stop")
    assert rules.feed("more\n", 0.0) == ("", None)  # nothing after the cut


def test_the_first_line_is_never_checked_and_indentation_is_held_until_known() -> None:
    rules = InfillRules(n_indent=4)
    assert rules.feed("x", 0.0) == ("x", None)  # the first line, however indented
    assert rules.feed("\n  ", 0.0) == ("\n", None)  # the next line's indentation waits
    assert rules.feed("  ok", 0.0) == ("    ok", None)  # 4 spaces: the block goes on
    assert feed_all(rules, ["\n", "\t\t\t\tdeep\n"]) == ("\n\t\t\t\tdeep\n", None)  # a tab is one


def test_without_n_indent_nothing_is_held() -> None:
    rules = InfillRules()
    assert feed_all(rules, ["a\n", "b\n", "c"]) == ("a\nb\nc", None)


def test_time_limit_stops_on_a_newline_once_the_time_is_up() -> None:
    rules = InfillRules(t_max_predict_ms=100)
    assert rules.feed("a\n", 50.0) == ("a\n", None)  # in time
    assert rules.feed("b", 500.0) == ("b", None)  # late, but no newline yet
    assert rules.feed("c\n", 500.0) == ("c\n", "time_limit")  # the newline is kept
    assert rules.feed("d", 500.0) == ("", None)
