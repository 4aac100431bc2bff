"""Small file-system helpers: durable renames and errors without paths."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path

from edged.common.errors import EdgedError, Internal, ResourceExhausted

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


class DiskFull(ResourceExhausted):
    """The disk under the store is full (ENOSPC, or a quota: EDQUOT).

    The message says what was being done, how much is free and where (a folder
    of the store, never a path outside it), and how many more bytes were needed
    when the caller knew. It is not worth retrying until space is freed.
    """

    def __init__(self, doing: str, *, where: Path | None = None, needed: int = 0) -> None:
        self.doing = doing
        self.where = where
        self.needed = max(0, needed)
        super().__init__(self._message())

    def located(self, where: Path) -> DiskFull:
        """This error, saying ``where`` when it did not say where yet."""
        if self.where is not None:
            return self
        return DiskFull(self.doing, where=where, needed=self.needed)

    def _message(self) -> str:
        text = f"not enough disk space while {self.doing}"
        if self.where is not None:
            free = free_bytes(self.where)
            shown = "an unknown amount" if free is None else human_bytes(free)
            text += f": {shown} free in {self.where}"
        if self.needed:
            text += f", about {human_bytes(self.needed)} more needed"
        return text + "; free some space and run it again"


def free_bytes(path: Path) -> int | None:
    """Bytes free for this user on the file system holding ``path``, or None."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def human_bytes(n: int) -> str:
    """``91.2 MB``: decimal units, one decimal below 100."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def is_no_space(exc: OSError) -> bool:
    return exc.errno in _NO_SPACE


def storage_error(
    exc: OSError, doing: str, *, where: Path | None = None, needed: int = 0
) -> EdgedError:
    """An edged error for a failed store operation; the message holds no path outside
    the store. A full disk becomes :class:`DiskFull` (RESOURCE_EXHAUSTED): pass
    ``where`` (the store folder written to) and ``needed`` (bytes still to write)
    when known; :meth:`Store.pinned` fills in ``where`` otherwise."""
    if exc.errno in _NO_SPACE:
        return DiskFull(doing, where=where, needed=needed)
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
