"""One bounded reader for the small JSON files that model folders carry.

Model folders come from hostile places (a download, someone's disk): a file
may be huge, deeply nested, not JSON, or JSON that is not an object. Every
config file edged reads goes through :func:`parse_json_object` (bytes) or
:func:`read_json_object` (a path), which bound the size and always raise
:class:`~edged.common.errors.InvalidModelFile` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edged.common.errors import InvalidModelFile

DEFAULT_LIMIT = 1 << 20  # bytes


def parse_json(data: bytes, name: str, limit: int = DEFAULT_LIMIT) -> Any:
    """``data`` as JSON; ``name`` is what the error messages call it."""
    if len(data) > limit:
        raise InvalidModelFile(f"{name} is larger than {limit} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidModelFile(f"{name} is not valid JSON") from exc


def parse_json_object(data: bytes, name: str, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """``data`` as a JSON object (see :func:`parse_json`)."""
    value = parse_json(data, name, limit)
    if not isinstance(value, dict):
        raise InvalidModelFile(f"{name} is not a JSON object")
    return value


def read_json_object(path: Path, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """The JSON object in ``path`` (read only if it is at most ``limit`` bytes)."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise InvalidModelFile(f"{path.name} is larger than {limit} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidModelFile(f"{path.name} is missing or unreadable") from exc
    return parse_json_object(data, path.name, limit)


def positive_int(value: object) -> int:
    """``value`` when it is a positive int (not a bool), else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def short_str(value: object, limit: int = 64) -> str:
    """``value`` when it is a string (cut to ``limit`` characters), else ""."""
    return value[:limit] if isinstance(value, str) else ""
