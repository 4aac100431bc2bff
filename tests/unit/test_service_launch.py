"""The Windows task's launcher: restarts a crashing daemon with back-off, stops
when it exits cleanly, gives up after too many failures (real child processes)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edged.installer import launch


def child(counter: Path, fail_times: int) -> list[str]:
    """A process that fails (exit 3) ``fail_times`` times, then exits 0."""
    code = (
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) if p.exists() else 0\n"
        "p.write_text(str(n + 1))\n"
        "print(f'run {n}', flush=True)\n"
        f"sys.exit(3 if n < {fail_times} else 0)\n"
    )
    return [sys.executable, "-c", code]


def test_restarts_with_doubling_delay_until_a_clean_exit(tmp_path: Path) -> None:
    delays: list[float] = []
    log = tmp_path / "service.out"
    with log.open("a") as out:
        code = launch.supervise(child(tmp_path / "n", 3), out, sleep=delays.append)
    assert code == 0
    assert delays == [2.0, 4.0, 8.0]
    text = log.read_text()
    assert "run 0" in text and "run 3" in text  # the child's output lands in the log
    assert text.count("daemon exited with 3; restart in") == 3


def test_gives_up_after_too_many_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "MAX_FAILURES", 4)
    delays: list[float] = []
    log = tmp_path / "service.out"
    with log.open("a") as out:
        code = launch.supervise(child(tmp_path / "n", 100), out, sleep=delays.append)
    assert code == 3
    assert delays == [2.0, 4.0, 8.0]
    assert (tmp_path / "n").read_text() == "4"
    assert "4 failures in 10 min; giving up" in log.read_text()


def test_a_long_healthy_run_resets_the_backoff(tmp_path: Path) -> None:
    now = [0.0]
    delays: list[float] = []

    def sleep(s: float) -> None:
        delays.append(s)

    def clock() -> float:
        # every run looks 70 s long: each failure is after a healthy run
        now[0] += 70.0
        return now[0]

    with (tmp_path / "out").open("a") as out:
        launch.supervise(child(tmp_path / "n", 3), out, sleep=sleep, clock=clock)
    assert delays == [2.0, 2.0, 2.0]
