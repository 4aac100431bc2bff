"""Reading fields of a client's JSON: the type checks every dialect needs.

A field of the wrong type is a 400 naming the field and what it should be,
never a crash or a silently ignored value.
"""

from __future__ import annotations

import json
import math
from typing import Any

from edged.daemon.http.errors import HttpError


def _bad(name: str, what: str) -> HttpError:
    return HttpError(400, f"{name} must be {what}")


def string(obj: dict[str, Any], key: str, default: str = "", *, name: str = "") -> str:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _bad(name or key, "a string")
    return value


def boolean(obj: dict[str, Any], key: str, default: bool = False, *, name: str = "") -> bool:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name or key, "true or false")
    return value


def number(
    obj: dict[str, Any],
    key: str,
    *,
    name: str = "",
    lo: float | None = None,
    hi: float | None = None,
) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(name or key, "a number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _bad(name or key, f"between {lo} and {hi}")
    return float(value)


def integer(
    obj: dict[str, Any],
    key: str,
    *,
    name: str = "",
    lo: int | None = None,
    hi: int | None = None,
) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name or key, "an integer")
    if lo is not None and value < lo:
        raise _bad(name or key, f"at least {lo}")
    if hi is not None and value > hi:
        raise _bad(name or key, f"at most {hi}")
    return value


def obj(parent: dict[str, Any], key: str, *, name: str = "") -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(name or key, "an object")
    return value


def array(parent: dict[str, Any], key: str, *, name: str = "") -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(name or key, "an array")
    return value


def strings(parent: dict[str, Any], key: str, *, name: str = "") -> list[str]:
    """A string or an array of strings (OpenAI's ``stop``)."""
    value = parent.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(name or key, "a string or an array of strings")
    return value


def as_object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(name, "an object")
    return value


def json_text(value: Any, name: str) -> str:
    """A JSON value (a schema, tool arguments) as JSON text."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        raise _bad(name, "JSON") from None


def refuse_unless(condition: bool, message: str) -> None:
    if not condition:
        raise HttpError(400, message)
