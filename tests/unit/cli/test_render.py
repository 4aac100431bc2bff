"""Formatting helpers."""

from __future__ import annotations

import io
import time

from edged.daemon.cli import render
from edged.v1 import edged_pb2 as pb


def test_human_bytes() -> None:
    assert render.human_bytes(0) == "0 B"
    assert render.human_bytes(999) == "999 B"
    assert render.human_bytes(91_000_000) == "91 MB"
    assert render.human_bytes(4_700_000_000) == "4.7 GB"
    assert render.human_bytes(10**18) == "1000 PB"


def test_human_count() -> None:
    assert render.human_count(135_000_000) == "135M"
    assert render.human_count(1_700_000_000) == "1.7B"
    assert render.human_count(12) == "12"


def test_ago() -> None:
    now = 1_000_000.0
    assert render.ago(0) == "-"
    assert render.ago(int(now * 1000), now) == "just now"
    assert render.ago(int((now - 61) * 1000), now) == "1 minute ago"
    assert render.ago(int((now - 7200) * 1000), now) == "2 hours ago"
    assert render.ago(int((now - 3 * 86400) * 1000), now) == "3 days ago"


def test_short_digest_and_table() -> None:
    assert render.short_digest("sha256:" + "0123456789abcdef" * 4) == "0123456789ab"
    assert render.table(["A", "LONGER"], [["xyz", "1"], ["q", ""]]) == "A     LONGER\nxyz   1\nq"


def test_pull_display_on_a_terminal() -> None:
    out = io.StringIO()
    with render.PullDisplay(out, terminal=True) as display:
        display.update(pb.PullProgress(status="downloading", completed_bytes=5, total_bytes=10))
        display.update(pb.PullProgress(status="verifying", completed_bytes=10, total_bytes=10))
    assert "verifying" in out.getvalue()


def test_pull_display_speed_counts_only_the_current_phase() -> None:
    """A resumed pull starts part-way: the bytes already there are not speed."""
    out = io.StringIO()
    with render.PullDisplay(out, terminal=True) as display:
        display.update(pb.PullProgress(status="downloading", completed_bytes=0, total_bytes=100))
        for done in (30, 60, 90):
            time.sleep(0.01)
            display.update(
                pb.PullProgress(status="downloading", completed_bytes=done, total_bytes=100)
            )
        assert display._progress is not None
        assert display._progress.tasks[0].speed is not None
        display.update(pb.PullProgress(status="verifying", completed_bytes=90, total_bytes=100))
        task = display._progress.tasks[0]
        assert task.speed is None and task.completed == 90
