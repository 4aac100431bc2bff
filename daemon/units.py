"""Human-readable units, shared by the daemon's messages and the CLI's output."""

from __future__ import annotations


def human_bytes(n: int) -> str:
    """Decimal units, as Ollama prints them: ``91 MB``, ``4.7 GB``."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 1000 or unit == "PB":
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")
