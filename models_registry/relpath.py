"""Relative paths of the files inside a model variant: the one gate they pass before
they become part of a path on disk (a folder view, an import).

They come from hostile places (a manifest on disk, an imported folder, a converter's
output), so the rules are strict: ``/``-separated parts of letters, digits and
``._+-``; no empty, ``.`` or ``..`` part and no part starting with ``.``; no
absolute path, backslash or NUL; bounded lengths and depth; and within one
variant no two paths that collide on a case-insensitive file system, and no path
that is both a file and a folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath

from edged.common.errors import InvalidArgument

MAX_PATH_LENGTH = 1024
MAX_PART_LENGTH = 255
MAX_DEPTH = 8

_PART = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
# Names Windows refuses as files, whatever the extension.
_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)


def validate_relative_path(path: str) -> str:
    """Check one relative path; return it unchanged or raise InvalidArgument."""
    if not isinstance(path, str) or not path:
        raise InvalidArgument("a file path in a model must be a non-empty string")
    shown = _show(path)
    if "\x00" in path:
        raise InvalidArgument("invalid file path in a model: it contains a NUL character")
    if "\\" in path:
        raise InvalidArgument(f"invalid file path {shown} in a model: backslashes are not allowed")
    if path.startswith("/"):
        raise InvalidArgument(f"invalid file path {shown} in a model: it must be relative")
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidArgument(f"invalid file path {shown} in a model: it is too long")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise InvalidArgument(
            f"invalid file path {shown} in a model: more than {MAX_DEPTH} levels of folders"
        )
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidArgument(
                f"invalid file path {shown} in a model: empty, '.' and '..' parts are not allowed"
            )
        if len(part) > MAX_PART_LENGTH or _PART.fullmatch(part) is None:
            raise InvalidArgument(
                f"invalid file path {shown} in a model: use letters, digits and '._+-' "
                "(not starting with '.'), at most 255 per part"
            )
        if part.split(".", 1)[0].lower() in _RESERVED:
            raise InvalidArgument(
                f"invalid file path {shown} in a model: {part!r} is a reserved name"
            )
    return path


def validate_variant_paths(paths: Iterable[str]) -> tuple[str, ...]:
    """Check every path of one variant and that they can coexist in one folder."""
    out = tuple(validate_relative_path(p) for p in paths)
    seen: dict[str, str] = {}
    for p in out:
        key = p.casefold()
        if key in seen:
            raise InvalidArgument(
                f"invalid file list in a model: {_show(seen[key])} and {_show(p)} "
                "name the same file"
            )
        seen[key] = p
    folders = {str(parent).casefold() for p in out for parent in PurePosixPath(p).parents}
    for p in out:
        if p.casefold() in folders:
            raise InvalidArgument(
                f"invalid file list in a model: {_show(p)} is both a file and a folder"
            )
    return out


def safe_file_name(raw: str, fallback: str) -> str:
    """Turn a display name (a URL's last part, an old manifest's ``filename``) into a
    one-part path that passes :func:`validate_relative_path`."""
    text = _UNSAFE.sub("_", raw.replace("/", "_").replace("\\", "_")).lstrip(".")
    text = text[:MAX_PART_LENGTH]
    try:
        return validate_relative_path(text)
    except InvalidArgument:
        return fallback


def _show(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
