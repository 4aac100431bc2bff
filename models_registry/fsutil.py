"""Small file-system helpers: durable renames and errors without paths."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path

from edged.daemon.errors import EdgedError, Internal, ResourceExhausted

_NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (a no-op on Windows)."""
    if sys.platform == "win32":  # pragma: no cover
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(final: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to a temp file in ``tmp_dir``, fsync it, rename it to ``final``."""
    fd, tmp_name = tempfile.mkstemp(prefix="write-", suffix=".tmp", dir=tmp_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        remove_quietly(tmp)


def remove_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)


def storage_error(exc: OSError, doing: str) -> EdgedError:
    """An edged error for a failed store operation; the message holds no path."""
    if exc.errno in _NO_SPACE:
        return ResourceExhausted(f"not enough disk space while {doing}: free some space and retry")
    return Internal(f"file-system error while {doing}: {exc.strerror or type(exc).__name__}")


def remove_tree(path: Path) -> None:
    """Remove a folder tree, read-only folders included; symlinks are removed, not followed."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    for dirpath, dirnames, _files in os.walk(path):
        os.chmod(dirpath, 0o755)
        for d in dirnames:
            sub = os.path.join(dirpath, d)
            if not os.path.islink(sub):
                os.chmod(sub, 0o755)
    shutil.rmtree(path)
