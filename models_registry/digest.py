"""Digest validation: the one gate a digest passes before it becomes part of a path."""

from __future__ import annotations

import hashlib
import string

from edged.common.errors import InvalidArgument

ALGORITHM = "sha256"
HEX_LENGTH = 64
_HEX = frozenset(string.hexdigits)


def parse_digest(s: str) -> str:
    """Validate ``s`` and return it as ``"sha256:<64 lowercase hex>"``.

    Accepts ``"sha256:<hex>"``, ``"sha256-<hex>"`` (a blob's file name) and a bare
    64-character hex string. Anything else raises :class:`InvalidArgument`.
    """
    if not isinstance(s, str):
        raise InvalidArgument("a digest must be a string like 'sha256:<64 hex digits>'")
    text = s.strip()
    algorithm, sep, value = text.partition(":")
    if not sep:
        algorithm, sep, value = text.partition("-")
    if not sep:
        algorithm, value = ALGORITHM, text
    if algorithm.lower() != ALGORITHM:
        raise InvalidArgument(
            f"unsupported digest algorithm {_shorten(algorithm)!r}: only sha256 is supported "
            "(write it as 'sha256:<64 hex digits>')"
        )
    if len(value) != HEX_LENGTH:
        raise InvalidArgument(
            f"invalid sha256 digest {_shorten(s)!r}: expected {HEX_LENGTH} hex digits, "
            f"got {len(value)}"
        )
    if not _HEX.issuperset(value):
        raise InvalidArgument(
            f"invalid sha256 digest {_shorten(s)!r}: only the hex digits 0-9 and a-f are allowed"
        )
    return f"{ALGORITHM}:{value.lower()}"


def blob_name(digest: str) -> str:
    """The file name of a blob: ``"sha256-<hex>"``."""
    return parse_digest(digest).replace(":", "-", 1)


def hex_of(digest: str) -> str:
    """The 64 hex digits of a digest."""
    return parse_digest(digest).partition(":")[2]


def digest_from_hex(hexdigest: str) -> str:
    """The digest string for a finished sha256 hasher's ``hexdigest()``."""
    return parse_digest(f"{ALGORITHM}:{hexdigest}")


def new_hasher() -> hashlib._Hash:
    """A fresh hasher of the store's algorithm."""
    return hashlib.sha256()


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
