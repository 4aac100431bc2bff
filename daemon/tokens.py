"""Scoped access tokens for edged's network listeners (``edged token ...``).

The token file (EDGED_TOKENS_FILE, default ``<config dir>/tokens.json``) is a
JSON object, mode 0600 in a 0700 directory, always written whole (a temp file
in the same directory, fsynced, renamed over it). It holds each token's name,
scopes, creation time and the sha256 of its secret, never the secret itself:
the secret (``edt_`` + 32 random bytes, URL-safe base64) is shown once by
:meth:`TokenStore.create`.

A running daemon re-reads the file when it changes (inode, size, mtime), so a
token created or revoked with the CLI counts from the next request. A damaged
or unreadable file is logged and read as "no tokens" (the legacy token and the
unix socket still work); changing it is refused until it is moved aside.

Scopes (:data:`edged.daemon.config.SCOPES`): ``generate`` (Inference,
Sessions), ``read`` (listing and showing models, tokenizing, System, health,
reflection), ``models`` (pull, delete, configure, convert, load, unload) and
``admin`` (everything, and any method not listed).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from edged.daemon.config import SCOPES, parse_scopes
from edged.daemon.security import ensure_private_dir
from edged.models_registry.locks import locked

__all__ = ["SCOPES", "TokenInfo", "TokenStore", "allows", "scopes_for"]

log = logging.getLogger("edged.tokens")

PREFIX = "edt_"
MAX_FILE_BYTES = 4 << 20
MAX_SECRET_CHARS = 256
FORMAT_VERSION = 1
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")

# ------------------------------------------------------------------ method -> scope

_READ_MODELS = frozenset({"List", "Show", "ListLoaded", "Tokenize", "Detokenize"})


def scopes_for(method: str) -> str:
    """The scope a gRPC method (``/edged.v1.Models/Pull``) needs; unknown: "admin"."""
    service, sep, name = method.lstrip("/").partition("/")
    if not sep or not name:
        return "admin"
    if service in ("edged.v1.Inference", "edged.v1.Sessions"):
        return "generate"
    if service == "edged.v1.Models":
        return "read" if name in _READ_MODELS else "models"
    if service == "edged.v1.System":
        return "read"
    if service.startswith(("grpc.health.", "grpc.reflection.")):
        return "read"
    return "admin"


def allows(scopes: frozenset[str], needed: str) -> bool:
    """Whether a token with ``scopes`` may do what ``needed`` names (admin: all)."""
    return needed in scopes or "admin" in scopes


# ------------------------------------------------------------------ the store


@dataclass(frozen=True)
class TokenInfo:
    name: str
    scopes: frozenset[str]
    created_unix_ms: int

    def allows(self, needed: str) -> bool:
        return allows(self.scopes, needed)


@dataclass(frozen=True)
class _Entry:
    info: TokenInfo
    sha256: str  # hex digest of the secret


class _Damaged(Exception):
    """The token file cannot be used; the message says why (no path)."""

    def __init__(self, reason: str, *, unreadable: bool = False) -> None:
        super().__init__(reason)
        self.unreadable = unreadable  # an OS error, not bad content


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"bad token name {str(name)[:70]!r}: use 1-64 characters a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    if isinstance(scopes, str):
        scopes = [scopes]
    words = list(scopes)
    if any(not isinstance(w, str) for w in words):
        raise InvalidArgument("scopes must be strings")
    try:
        parsed = parse_scopes(",".join(words), "scopes")
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    if not parsed:
        raise InvalidArgument(f"a token needs at least one scope ({', '.join(SCOPES)})")
    return parsed


def _parse(data: bytes) -> dict[str, _Entry]:
    """The file's tokens by name; raises _Damaged when anything is off."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise _Damaged("it is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), list):
        raise _Damaged('it is not an object with a "tokens" list')
    if doc.get("version") != FORMAT_VERSION:
        raise _Damaged(f"unknown format version {str(doc.get('version'))[:20]!r}")
    entries: dict[str, _Entry] = {}
    for i, raw in enumerate(doc["tokens"]):
        try:
            entry = _entry(raw)
        except (InvalidArgument, TypeError, KeyError, ValueError) as exc:
            raise _Damaged(f"token #{i + 1} is malformed ({exc})") from None
        if entry.info.name in entries:
            raise _Damaged(f"token {entry.info.name!r} appears twice")
        entries[entry.info.name] = entry
    return entries


def _entry(raw: Any) -> _Entry:
    if not isinstance(raw, dict):
        raise TypeError("not an object")
    name = check_name(raw["name"])
    scopes = raw["scopes"]
    if not isinstance(scopes, list):
        raise TypeError("scopes is not a list")
    created = raw["created_unix_ms"]
    if not isinstance(created, int) or isinstance(created, bool) or created < 0:
        raise ValueError("created_unix_ms is not a time")
    digest = raw["sha256"]
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise ValueError("sha256 is not a hex digest")
    return _Entry(TokenInfo(name, check_scopes(scopes), created), digest)


def _dump(entries: dict[str, _Entry]) -> bytes:
    doc = {
        "version": FORMAT_VERSION,
        "tokens": [
            {
                "name": e.info.name,
                "scopes": sorted(e.info.scopes, key=SCOPES.index),
                "created_unix_ms": e.info.created_unix_ms,
                "sha256": e.sha256,
            }
            for e in sorted(entries.values(), key=lambda e: e.info.name)
        ],
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


_Key = tuple[int, int, int, int, int]


class TokenStore:
    """The scoped tokens in one file. Safe to share between threads; several
    processes (the daemon, ``edged token``) may use one file at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = threading.Lock()
        self._key: _Key | None = None  # the file's identity when _tokens was read
        self._tokens: dict[str, _Entry] = {}

    # -- reading ------------------------------------------------------------------

    def _stat(self) -> os.stat_result | None:
        """The file's lstat (None when it does not exist); _Damaged when unusable."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _Damaged(f"it cannot be read ({exc.strerror or exc})", unreadable=True) from None
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            raise _Damaged("it is not a regular file (a symlink?)")
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise _Damaged("it belongs to another user")
        if stat.S_IMODE(st.st_mode) & 0o022:
            raise _Damaged(f"others may write it (mode {stat.S_IMODE(st.st_mode):o})")
        if st.st_size > MAX_FILE_BYTES:
            raise _Damaged(f"it is larger than {MAX_FILE_BYTES} bytes")
        return st

    def _read(self) -> dict[str, _Entry]:
        """The tokens in the file now (none when it does not exist)."""
        if self._stat() is None:
            return {}
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise _Damaged(f"it cannot be read ({exc.strerror or exc})", unreadable=True) from None
        if len(data) > MAX_FILE_BYTES:
            raise _Damaged(f"it is larger than {MAX_FILE_BYTES} bytes")
        return _parse(data)

    def _current(self) -> dict[str, _Entry]:
        """The cached tokens, re-read when the file changed; never raises."""
        try:
            st = self._stat()
            key: _Key | None = (
                None
                if st is None
                else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            )
        except _Damaged as exc:
            key = (-1, -1, -1, -1, hash(str(exc)))
            if key != self._key:
                log.warning("ignoring the token file %s: %s", self.path, exc)
                self._key, self._tokens = key, {}
            return self._tokens
        if key == self._key and (key is not None or not self._tokens):
            return self._tokens
        try:
            tokens = self._read()
        except _Damaged as exc:
            log.warning(
                "ignoring the token file %s (no scoped token is accepted until it is "
                "fixed or moved aside): %s",
                self.path,
                exc,
            )
            tokens = {}
        except Exception:  # never let a token check crash a request
            log.exception("ignoring the token file %s", self.path)
            tokens = {}
        self._key, self._tokens = key, tokens
        return tokens

    def check(self, secret: str) -> TokenInfo | None:
        """The token whose secret this is; None when unknown, revoked or unreadable."""
        try:
            if not isinstance(secret, str) or not secret.startswith(PREFIX):
                return None
            if len(secret) > MAX_SECRET_CHARS:
                return None
            digest = _hash(secret)
            with self._mutex:
                tokens = self._current()
            found: TokenInfo | None = None
            for entry in tokens.values():  # compare against every one: no early exit
                if hmac.compare_digest(entry.sha256, digest):
                    found = entry.info
            return found
        except Exception:  # pragma: no cover - belt and braces: a check never raises
            log.exception("token check failed")
            return None

    def list(self) -> builtins.list[TokenInfo]:
        """Every token, sorted by name (a damaged file raises FailedPrecondition)."""
        return [e.info for _, e in sorted(self._read_or_refuse().items())]

    # -- changing -----------------------------------------------------------------

    def _read_or_refuse(self) -> dict[str, _Entry]:
        try:
            return self._read()
        except _Damaged as exc:
            if exc.unreadable:
                raise FailedPrecondition(f"the token file {self.path}: {exc}") from None
            raise FailedPrecondition(
                f"the token file {self.path} is damaged: {exc}; move it aside "
                f"(mv {self.path} {self.path}.bad) and create the tokens again"
            ) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the file's lock (changes by two processes at once never mix); an
        OS error inside (no space, no permission) becomes FailedPrecondition."""
        try:
            ensure_private_dir(self.path.parent)
            with locked(self.path.with_name(self.path.name + ".lock"), ephemeral=True):
                yield
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot write the token file {self.path}: {exc.strerror or exc}"
            ) from exc

    def create(self, name: str, scopes: Iterable[str]) -> str:
        """Add a token; returns its secret (stored only as a hash: shown once)."""
        check_name(name)
        parsed = check_scopes(scopes)
        with self._locked():
            entries = self._read_or_refuse()
            if name in entries:
                raise AlreadyExists(
                    f"a token named {name!r} already exists (revoke it first: "
                    f"edged token revoke {name})"
                )
            secret = PREFIX + secrets.token_urlsafe(32)
            info = TokenInfo(name, parsed, int(time.time() * 1000))
            entries[name] = _Entry(info, _hash(secret))
            self._write(entries)
        return secret

    def revoke(self, name: str) -> bool:
        """Remove a token; False when there is none of that name."""
        check_name(name)
        with self._locked():
            entries = self._read_or_refuse()
            if entries.pop(name, None) is None:
                return False
            self._write(entries)
        return True

    def _write(self, entries: dict[str, _Entry]) -> None:
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tokens-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_dump(entries))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
            with contextlib.suppress(OSError):
                dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        with self._mutex:
            self._key = None  # re-read on the next check
