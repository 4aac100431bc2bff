"""Where sequences sit: keeping the running ones on consecutive sequence ids.

With one KV stream per sequence, llama.cpp splits a batch into micro-batches
of *consecutive* sequence ids (``split_equal``): running sequences 0, 1, 2
decode as one graph, running sequences 0 and 2 as two, and each extra graph
reads every weight again. The engine therefore keeps the busy sequences in
one run, choosing new slots next to it and swapping contents when a gap
opens. These functions decide where; the engine does the moving.
"""

from __future__ import annotations

from collections.abc import Sequence


def runs(busy: Sequence[bool]) -> int:
    """How many separate runs of busy positions there are (graphs per step)."""
    count = 0
    previous = False
    for b in busy:
        if b and not previous:
            count += 1
        previous = b
    return count


def keeps_one_run(busy: Sequence[bool], pos: int) -> bool:
    """Whether making ``pos`` busy leaves (or brings) the busy positions
    closer to one run: no busy position yet, next to the run's ends, or
    inside a gap between them."""
    taken = [i for i, b in enumerate(busy) if b]
    if not taken:
        return True
    return taken[0] - 1 <= pos <= taken[-1] + 1


def compaction_swaps(busy: Sequence[bool], weight: Sequence[int]) -> list[tuple[int, int]]:
    """Position swaps that make the busy positions one run, moving the least.

    ``weight[i]`` is what moving position ``i``'s contents costs (its cached
    tokens). Every window of ``k`` positions (``k`` busy in all) is a
    candidate; the chosen one moves the least weight in, and out of its way
    (then the fewest swaps).
    Each swap pairs a busy position outside the window with an idle one
    inside. Returns [] when the busy positions already form one run.
    """
    n = len(busy)
    k = sum(1 for b in busy if b)
    if runs(busy) <= 1:
        return []
    best: tuple[int, int, int] | None = None  # (weight moved, swaps, start)
    for start in range(n - k + 1):
        inside = range(start, start + k)
        holes = [i for i in inside if not busy[i]]
        cost = sum(weight[i] for i in range(n) if busy[i] and i not in inside)
        cost += sum(weight[i] for i in holes)
        if best is None or (cost, len(holes)) < best[:2]:
            best = (cost, len(holes), start)
    assert best is not None
    start = best[2]
    outside = [i for i in range(n) if busy[i] and not start <= i < start + k]
    holes = [i for i in range(start, start + k) if not busy[i]]
    return list(zip(outside, holes, strict=True))
