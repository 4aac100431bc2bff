"""Model references: ``name[:tag]``, validated before any of it becomes a path."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edged.common.errors import InvalidArgument

DEFAULT_TAG = "latest"
MAX_SEGMENTS = 2

_SEGMENT = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_SANITIZE = re.compile(r"[^a-z0-9._-]+")
_RESERVED_SUFFIX = ".json"  # a segment may not look like a manifest file


@dataclass(frozen=True, order=True)
class ModelRef:
    """A validated model name and tag."""

    name: str
    tag: str = DEFAULT_TAG

    def __post_init__(self) -> None:
        validate_name(self.name)
        validate_tag(self.tag)

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.name.split("/"))


def parse_model_ref(s: str, default_tag: str = DEFAULT_TAG) -> ModelRef:
    """Parse ``"name[:tag]"``; the tag defaults to ``default_tag``."""
    name, tag = split_model_ref(s)
    return ModelRef(name, tag if tag is not None else validate_tag(default_tag))


def split_model_ref(s: str) -> tuple[str, str | None]:
    """Validate ``"name[:tag]"`` and return ``(name, tag or None)``."""
    if not isinstance(s, str) or not s.strip():
        raise InvalidArgument("a model name must not be empty (for example 'smollm2')")
    text = s.strip()
    _reject_path_like(text)
    name, sep, tag = text.partition(":")
    name = validate_name(name)
    if not sep:
        return name, None
    return name, validate_tag(tag)


def validate_name(name: str) -> str:
    """Check a model name: one or two ``/``-separated lowercase segments."""
    _reject_path_like(name)
    if not name:
        raise InvalidArgument("a model name must not be empty (for example 'smollm2')")
    segments = name.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise InvalidArgument(
            f"invalid model name {_show(name)}: empty, '.' and '..' parts are not allowed"
        )
    if len(segments) > MAX_SEGMENTS:
        raise InvalidArgument(
            f"invalid model name {_show(name)}: use 'name' or 'owner/name' "
            f"(at most {MAX_SEGMENTS} parts separated by '/')"
        )
    for segment in segments:
        _check_segment(name, segment)
    return name


def validate_tag(tag: str) -> str:
    """Check a tag: letters, digits, ``_``, ``.``, ``-``; at most 128 characters."""
    if not tag:
        raise InvalidArgument("a tag must not be empty: write 'name' or 'name:tag'")
    if ":" in tag:
        raise InvalidArgument(f"invalid tag {_show(tag)}: only one ':' is allowed in 'name:tag'")
    if _TAG.fullmatch(tag) is None:
        raise InvalidArgument(
            f"invalid tag {_show(tag)}: use at most 128 letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-'"
        )
    return tag


def sanitize_name(raw: str, fallback: str = "model") -> str:
    """Turn a file name such as ``"SmolLM2-135M.Q4_1.gguf"`` into a valid one-segment name."""
    stem = raw.strip()
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    text = _SANITIZE.sub("-", stem.lower())
    text = re.sub(r"-{2,}", "-", text).lstrip("._-")[:64].rstrip(".-")
    if text.endswith(_RESERVED_SUFFIX):
        text = text[: -len(_RESERVED_SUFFIX)].rstrip(".-")
    return text if text and _SEGMENT.fullmatch(text) else fallback


def _check_segment(name: str, segment: str) -> None:
    if segment.lower() != segment and _SEGMENT.fullmatch(segment.lower()):
        raise InvalidArgument(
            f"invalid model name {_show(name)}: names are lowercase; "
            f"did you mean {_show(name.lower())}?"
        )
    if _SEGMENT.fullmatch(segment) is None:
        raise InvalidArgument(
            f"invalid model name {_show(name)}: each part must start with a lowercase letter "
            "or digit and hold at most 64 of a-z, 0-9, '.', '_' and '-'"
        )
    if segment.endswith(_RESERVED_SUFFIX):
        raise InvalidArgument(f"invalid model name {_show(name)}: a part may not end in '.json'")


def _reject_path_like(text: str) -> None:
    if "\x00" in text:
        raise InvalidArgument("invalid model name: it contains a NUL character")
    if "\\" in text:
        raise InvalidArgument(f"invalid model name {_show(text)}: backslashes are not allowed")
    if text.startswith("/"):
        raise InvalidArgument(
            f"invalid model name {_show(text)}: a name is not a path (to pull a file, "
            "give its absolute path as the source, not as the name)"
        )


def _show(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
