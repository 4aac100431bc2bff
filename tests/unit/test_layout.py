"""Keeping running sequences on consecutive ids (backends/llamacpp/layout.py)."""

from __future__ import annotations

import itertools

import pytest

from edged.backends.llamacpp.layout import compaction_swaps, keeps_one_run, runs

T, F = True, False


def apply(busy: list[bool], swaps: list[tuple[int, int]]) -> list[bool]:
    out = list(busy)
    for a, b in swaps:
        out[a], out[b] = out[b], out[a]
    return out


@pytest.mark.parametrize(
    ("busy", "expected"),
    [([], 0), ([F, F], 0), ([T, T, F], 1), ([T, F, T], 2), ([F, T, F, T, F, T], 3)],
)
def test_runs_counts_separate_groups(busy: list[bool], expected: int) -> None:
    assert runs(busy) == expected


def test_one_run_needs_no_swaps() -> None:
    assert compaction_swaps([F, T, T, F], [0, 5, 5, 0]) == []
    assert compaction_swaps([F, F, F], [1, 2, 3]) == []


def test_a_gap_is_filled_by_moving_the_lighter_side() -> None:
    # 0 and 1 run, 3 runs alone; 2 is a hole holding 100 cached tokens.
    busy = [T, T, F, T]
    # Moving the heavy sequence 3 (900 tokens) costs more than moving 0 (10)
    # and the hole's 100 tokens... window [1, 3] moves 0 (10) and 2 (100).
    swaps = compaction_swaps(busy, [10, 500, 100, 900])
    assert swaps == [(0, 2)]
    assert runs(apply(busy, swaps)) == 1
    # With a light sequence 3 and a heavy 0, 3 moves into the hole instead.
    assert compaction_swaps(busy, [900, 500, 100, 10]) == [(3, 2)]


def test_ties_take_the_fewest_swaps() -> None:
    # Everything weighs nothing: one swap, not two.
    assert len(compaction_swaps([T, F, F, T, T], [0] * 5)) == 1


def test_every_layout_ends_as_one_run_with_the_least_weight_moved() -> None:
    weights = [3, 1, 4, 1, 5, 9]
    for busy in itertools.product([T, F], repeat=6):
        swaps = compaction_swaps(list(busy), weights)
        after = apply(list(busy), swaps)
        assert runs(after) <= 1
        assert sum(after) == sum(busy)
        for a, b in swaps:  # each swap moves a busy slot into an idle one
            assert busy[a] and not busy[b]
        moved = sum(weights[a] + weights[b] for a, b in swaps)
        k = sum(busy)
        cheapest = min(
            (
                sum(weights[i] for i in range(6) if busy[i] and not s <= i < s + k)
                + sum(weights[i] for i in range(s, s + k) if not busy[i])
                for s in range(6 - k + 1)
            ),
            default=0,
        )
        assert moved == (cheapest if swaps else 0)


def test_keeps_one_run_prefers_neighbours_and_holes() -> None:
    assert keeps_one_run([F, F, F, F], 3)
    busy = [F, T, F, T, F, F]
    assert [keeps_one_run(busy, i) for i in range(6)] == [T, T, T, T, T, F]
