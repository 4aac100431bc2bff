"""Model defaults written the Ollama way: a Modelfile's PARAMETER lines and an
Ollama store's ``params`` layer (a JSON object), mapped onto edged's manifest
defaults (sampling values, stop strings) and settings (context length).

Ollama names that edged has no use for are reported back, never silently
dropped, so an import or ``edged create`` can say what it ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from edged.common.errors import InvalidArgument

from .manifest import check_stop
from .settings import MAX_CONTEXT, MIN_CONTEXT

# Ollama parameter -> edged.v1.SamplingParams field (manifest sampling key)
SAMPLING_NAMES: Mapping[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
    "num_predict": "max_tokens",
}
_INTEGERS = frozenset({"top_k", "max_tokens", "num_ctx"})
_RANGES: Mapping[str, tuple[float, float]] = {
    "temperature": (0.0, 100.0),
    "top_p": (0.0, 1.0),
    "top_k": (0, 1 << 20),
    "min_p": (0.0, 1.0),
    "repeat_penalty": (0.0, 10.0),
    "max_tokens": (0, 1 << 24),
}


@dataclass(frozen=True)
class ModelParams:
    sampling: tuple[tuple[str, float], ...] = ()
    stop: tuple[str, ...] = ()
    context_length: int = 0  # 0 = not set
    ignored: tuple[str, ...] = ()  # Ollama parameter names edged does not use


def from_pairs(pairs: list[tuple[str, str]]) -> ModelParams:
    """PARAMETER lines (``key``, ``value`` as written); ``stop`` may repeat."""
    values: dict[str, object] = {}
    for key, raw in pairs:
        if key == "stop":
            stops = values.setdefault("stop", [])
            assert isinstance(stops, list)
            stops.append(_unquote(raw))
        else:
            values[key] = _number_or_text(raw)
    return from_mapping(values)


def from_mapping(values: Mapping[str, object]) -> ModelParams:
    """An Ollama ``params`` object; raises InvalidArgument naming a bad value."""
    sampling: dict[str, float] = {}
    stop: tuple[str, ...] = ()
    context = 0
    ignored: list[str] = []
    for key, value in values.items():
        if key == "stop":
            stop = check_stop([value] if isinstance(value, str) else value)
        elif key == "num_ctx":
            context = int(_number(key, value, "num_ctx"))
            if not MIN_CONTEXT <= context <= MAX_CONTEXT:
                raise InvalidArgument(
                    f"num_ctx must be between {MIN_CONTEXT} and {MAX_CONTEXT}, got {context}"
                )
        elif key in SAMPLING_NAMES:
            field = SAMPLING_NAMES[key]
            number = _number(key, value, field)
            low, high = _RANGES[field]
            if field == "max_tokens" and number < 0:
                number = 0.0  # Ollama's -1: until the context is full, edged's 0
            if not low <= number <= high:
                raise InvalidArgument(f"{key} must be between {low:g} and {high:g}, got {number:g}")
            sampling[field] = number
        else:
            ignored.append(str(key)[:64])
    return ModelParams(tuple(sorted(sampling.items())), stop, context, tuple(sorted(ignored)))


def _number(key: str, value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{key} must be a number, got {json.dumps(value)[:40]}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidArgument(f"{key} must be a finite number")
    if field in _INTEGERS and number != int(number):
        raise InvalidArgument(f"{key} must be a whole number, got {number:g}")
    return number


def _number_or_text(raw: str) -> object:
    text = raw.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return _unquote(text)


def _unquote(raw: str) -> str:
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text[1:-1]
        return value if isinstance(value, str) else text[1:-1]
    return text
