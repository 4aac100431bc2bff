"""Advisory file locks shared by every process that uses one store.

``flock`` locks belong to an open file description, so two threads of one
process that open the lock file separately exclude each other too.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from edged.common.errors import Cancelled

POLL_SECONDS = 0.05


@contextmanager
def locked(
    path: Path,
    *,
    shared: bool = False,
    ephemeral: bool = False,
    cancel: threading.Event | None = None,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Hold a lock on ``path`` (created if missing) for the ``with`` block.

    Waits while another holder has it, checking ``cancel`` (raises Cancelled)
    and calling ``on_wait`` once when it has to wait. An ``ephemeral`` lock file
    is removed on release; a waiter that then finds the file replaced retries.
    Never remove a shared lock file: use ephemeral only with exclusive locks.
    """
    fd = _acquire(path, shared=shared, ephemeral=ephemeral, cancel=cancel, on_wait=on_wait)
    try:
        yield
    finally:
        if ephemeral:
            _unlink_quietly(path)
        os.close(fd)


@contextmanager
def try_locked(path: Path, *, shared: bool = False, ephemeral: bool = False) -> Iterator[bool]:
    """Take the lock only if it is free; yield whether it was taken.

    An ``ephemeral`` lock (as :func:`locked` takes it) is removed on release when
    it was taken, so a holder that waits on it retries on the new file.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        taken = _try_lock(fd, shared)
        if not (taken and ephemeral) or _same_file(fd, path):
            break
        os.close(fd)  # removed by its last holder after we opened it: try again
    try:
        yield taken
    finally:
        if taken and ephemeral:
            _unlink_quietly(path)
        os.close(fd)


def _acquire(
    path: Path,
    *,
    shared: bool,
    ephemeral: bool,
    cancel: threading.Event | None,
    on_wait: Callable[[], None] | None,
) -> int:
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while not _try_lock(fd, shared):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled while waiting for another pull of the same model")
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                time.sleep(POLL_SECONDS)
            if not ephemeral or _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _unlink_quietly(path: Path) -> None:
    with suppress(OSError):
        path.unlink()


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int, shared: bool) -> bool:
        # msvcrt has no shared locks: a shared lock is taken as exclusive.
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int, shared: bool) -> bool:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
