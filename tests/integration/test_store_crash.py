"""SIGKILL the daemon at random points of pull, commit, delete and GC; after each
restart `edged verify` finds no problem and an interrupted pull completes when run
again. A short run here (CI); scripts/kill_loop.py runs hundreds of iterations."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.store_crash_kit import CrashLoop, file_server

ITERATIONS = 10


@pytest.mark.slow
def test_sigkill_loop_leaves_a_sound_store(tmp_path: Path) -> None:
    with file_server() as server:
        loop = CrashLoop(tmp_path / "d", server, seed=6, seconds_per_pull=0.4, cli_verify_every=5)
        result = loop.run(ITERATIONS)
    assert result.iterations == ITERATIONS
    assert sum(result.kills.values()) == ITERATIONS
    assert result.kills.get("pull", 0) >= 3  # every run has pulls killed part-way
    assert result.cli_verifies >= 2
    print(result.summary())
