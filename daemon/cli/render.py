"""Output formatting: plain tables, human units, JSON, stats and pull progress."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from edged.daemon.units import human_bytes as human_bytes  # the CLI formats sizes here
from edged.v1 import edged_pb2 as pb

# ---------------------------------------------------------------- units


def human_count(n: int) -> str:
    """Parameter counts: ``135M``, ``1.7B``."""
    if n < 1000:
        return str(n)
    value = float(n)
    for unit in ("K", "M", "B", "T"):
        value /= 1000
        if value < 1000 or unit == "T":
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    raise AssertionError("unreachable")


def ago(unix_ms: int, now_s: float | None = None) -> str:
    if unix_ms <= 0:
        return "-"
    seconds = max(0.0, (time.time() if now_s is None else now_s) - unix_ms / 1000)
    for size, unit in ((86400 * 365, "year"), (86400 * 30, "month"), (86400 * 7, "week"),
                       (86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):  # fmt: skip
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"


def short_digest(digest: str) -> str:
    """``sha256:<hex>`` -> the first 12 hex digits."""
    return digest.partition(":")[2][:12] if ":" in digest else digest[:12]


def model_name(info: pb.ModelInfo) -> str:
    return f"{info.name}:{info.tag}" if info.tag else info.name


# ---------------------------------------------------------------- tables and JSON


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces, like ``ollama list``."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def to_dict(message: Message) -> dict[str, Any]:
    """Stable JSON keys: proto field names, every field present."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def print_json(obj: object, out: TextIO) -> None:
    out.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- generation stats


def finish_reason(value: int) -> str:
    name: str = pb.FinishReason.Name(value)
    return name.removeprefix("FINISH_REASON_").lower()


def stats_lines(stats: pb.GenerationStats) -> list[str]:
    rows = [
        ("prompt tokens", f"{stats.prompt_tokens} ({stats.cached_prompt_tokens} cached)"),
        ("completion tokens", str(stats.completion_tokens)),
        ("time to first token", f"{stats.time_to_first_token_ms:.1f} ms"),
        ("decode rate", f"{stats.decode_tokens_per_second:.2f} tokens/s"),
        ("total duration", f"{stats.total_ms:.1f} ms"),
        ("finish reason", finish_reason(stats.finish_reason)),
        ("backend", stats.backend or "-"),
        ("device", stats.device or "-"),
    ]
    return [f"{key + ':':<21}{value}" for key, value in rows]


# ---------------------------------------------------------------- pull progress


class PullDisplay:
    """A rich progress bar on a terminal; one line per phase otherwise."""

    def __init__(self, out: TextIO, *, terminal: bool | None = None) -> None:
        self._out = out
        self._console = Console(file=out, highlight=False, force_terminal=terminal)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._status = ""

    def __enter__(self) -> PullDisplay:
        if self._console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("pulling", total=None)
        return self

    def update(self, msg: pb.PullProgress) -> None:
        total = msg.total_bytes or None
        if self._progress is not None and self._task is not None:
            if msg.status and msg.status != self._status:
                # A new phase (a resumed download starts part-way): restart the speed
                # samples so speed and ETA count only this phase's bytes.
                self._progress.reset(self._task, completed=msg.completed_bytes, total=total)
            self._progress.update(
                self._task,
                description=msg.status or self._status,
                completed=msg.completed_bytes,
                total=total,
            )
        elif msg.status and msg.status != self._status:
            self._out.write(msg.status + "\n")
            self._out.flush()
        self._status = msg.status or self._status

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


# ---------------------------------------------------------------- errors


def rpc_message(exc: BaseException) -> str:
    """The status details of a failed call, for one ``edged: ...`` line."""
    details = getattr(exc, "details", None)
    code = getattr(exc, "code", None)
    text = details() if callable(details) else None
    if text:
        return str(text)
    name = getattr(code(), "name", None) if callable(code) else None
    return f"the call failed ({name.lower()})" if name else str(exc) or "the call failed"
