"""Keep-alive durations on the command line: ``300``, ``30s``, ``5m``, ``1h``, ``-1``."""

from __future__ import annotations

import argparse
import math
import re
import time

_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)\s*(s|m|h|d)?$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
FOREVER = ("forever", "inf", "infinite", "never")


def parse_duration(text: str) -> float:
    """Seconds; negative means forever. Raises ArgumentTypeError for argparse."""
    raw = text.strip().lower()
    if raw in FOREVER:
        return -1.0
    match = _DURATION.match(raw)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use seconds (300), 30s, 5m, 1h, 2d, "
            "0 (unload when idle) or -1 / forever"
        )
    value = float(match.group(1)) * _UNIT[match.group(2) or "s"]
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is too long a duration")
    return -1.0 if value < 0 else value


def human_duration(seconds: float) -> str:
    """``90`` -> ``1 minute``, ``7200`` -> ``2 hours``; ``forever`` when negative."""
    if seconds < 0:
        return "forever"
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return "0 seconds"


def until(keep_alive_s: float, expires_unix_ms: int, pinned: bool) -> str:
    """What ``edged ps`` says about when a model unloads."""
    if pinned:
        return "pinned"
    if keep_alive_s < 0:
        return "forever"
    if not expires_unix_ms:  # requests running or queued: the clock starts after them
        if keep_alive_s == 0:
            return "when idle"
        return f"in use, then {human_duration(keep_alive_s)}"
    left = expires_unix_ms / 1000 - time.time()
    return "now" if left < 1 else f"in {human_duration(left)}"
