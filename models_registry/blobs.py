"""Blobs: the model files under ``blobs/sha256-<hex>``, named by their digest.

A blob is never written under its final name: its bytes go to a new file in
``tmp/`` while they are hashed (:meth:`BlobsMixin.stage_blob`), the file is
fsynced, checked against the digest the caller expects, made read-only and
renamed into ``blobs/`` (:meth:`BlobsMixin.install_blob`), and then ``blobs/`` is
fsynced. So a blob is complete under its name or absent; a process killed midway
leaves at worst a file in ``tmp/``, which garbage collection removes (cleanup.py,
where unreferenced blobs are removed too).

Another program's file (an Ollama blob, an LM Studio download) is *adopted*
(:meth:`BlobsMixin.adopt_file`): hard-linked into ``tmp/`` when it can be,
else reflinked (FICLONE), else copied, and then the file in ``tmp/`` is hashed,
so what is checked is what is installed. A hard-linked blob shares its inode
with the other program's file and keeps that file's mode: it is never chmodded.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from edged.common.errors import (
    Cancelled,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

from .digest import blob_name, digest_from_hex, new_hasher, parse_digest
from .fsutil import fsync_dir, remove_quietly, storage_error
from .progress import ProgressFn, ThrottledProgress

CHUNK_SIZE = 1 << 20
_BLOB_NAME = re.compile(r"sha256-[0-9a-f]{64}")

# How adopt_file brought a file in.
ADOPT_LINK = "linked"  # a hard link: the same inode as the source
ADOPT_REFLINK = "reflinked"  # a copy-on-write clone (FICLONE)
ADOPT_COPY = "copied"
ADOPT_PRESENT = "already stored"  # the store had the blob; the source was only hashed
_FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
# link(2) errors after which a reflink or a copy may still work
_NO_LINK = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
)


class BlobsMixin:
    """The blob part of :class:`~edged.models_registry.store.Store`."""

    blobs_dir: Path
    tmp_dir: Path
    partial_dir: Path

    if TYPE_CHECKING:  # provided by Store (store.py)

        def pinned(self) -> AbstractContextManager[None]: ...

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / blob_name(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def write_blob(
        self,
        chunks: Iterable[bytes],
        expected: str | None = None,
        *,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        total: int = 0,
        status: str = "writing",
        reuse: bool = True,
    ) -> str:
        """Store the bytes of ``chunks`` as a blob and return its digest.

        With ``expected``, bytes that hash differently raise DigestMismatch, and
        (when ``reuse``) a blob that is already present is not written again:
        ``chunks`` is not consumed. Nothing is left behind on any error.
        """
        want = parse_digest(expected) if expected is not None else None
        with self.pinned():
            if reuse and want is not None and self.has_blob(want):
                return want
            tmp, digest = self.stage_blob(
                chunks, want, progress=progress, cancel=cancel, total=total, status=status
            )
            try:
                return self.install_blob(tmp, digest)
            except OSError as exc:
                raise storage_error(exc, "storing a model file") from exc
            finally:
                remove_quietly(tmp)

    def stage_blob(
        self,
        chunks: Iterable[bytes],
        expected: str | None = None,
        *,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        total: int = 0,
        status: str = "writing",
        prefix: str = "blob-",
    ) -> tuple[Path, str]:
        """Write ``chunks`` to a new fsynced file in ``tmp/`` and return it with its
        digest, ready for :meth:`install_blob`; the caller removes it if it is not
        installed. With ``expected``, other bytes raise DigestMismatch. Call it with
        the store pinned. Nothing is left behind on any error."""
        want = parse_digest(expected) if expected is not None else None
        fd, tmp_name = self._mkstemp(prefix)
        tmp = Path(tmp_name)
        written = [0]
        try:
            digest = self._fill(fd, chunks, progress, cancel, total, status, written)
            if want is not None and digest != want:
                raise DigestMismatch(
                    f"the data does not match the expected digest {want} (it hashes to "
                    f"{digest}); the source is corrupt or changed"
                )
            return tmp, digest
        except OSError as exc:
            remove_quietly(tmp)
            needed = max(0, total - written[0])
            raise storage_error(
                exc, "writing a model file", where=self.tmp_dir, needed=needed
            ) from exc
        except BaseException:
            remove_quietly(tmp)
            raise

    def import_file(
        self,
        path: Path,
        expected: str | None = None,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> str:
        """Copy a local file into the store (hashing while copying); return its digest.

        The file is always hashed, even when a blob with the expected digest is
        already stored, so a wrong ``expected`` never goes unnoticed.
        """
        want = parse_digest(expected) if expected is not None else None
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after the stat checks
        except FileNotFoundError as exc:
            raise NotFound(f"no such file {path.name!r}") from exc
        except IsADirectoryError as exc:
            raise InvalidArgument(f"{path.name!r} is a directory, not a model file") from exc
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot read {path.name!r}: {exc.strerror or type(exc).__name__}"
            ) from exc
        with f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArgument(f"{path.name!r} is not a regular file")
            return self.write_blob(
                _read_chunks(f),
                want,
                progress=progress,
                cancel=cancel,
                total=st.st_size,
                status="importing",
                reuse=False,
            )

    def install_blob(self, path: Path, digest: str, *, read_only: bool = True) -> str:
        """Move a fully written, fsynced file whose digest was verified into ``blobs/``.

        ``path`` must be inside the store (``tmp/`` or ``partial/``) so the rename is
        atomic. If the blob already exists, ``path`` is removed instead. It is made
        read-only unless ``read_only`` is False (a hard link to another program's
        file, whose mode is not edged's to change).
        """
        digest = parse_digest(digest)
        if path.parent not in (self.tmp_dir, self.partial_dir):
            raise InvalidArgument("only files in the store's tmp/ or partial/ can be installed")
        final = self.blob_path(digest)
        if read_only:
            os.chmod(path, 0o444)
        if final.exists():
            remove_quietly(path)
            return digest
        os.replace(path, final)
        fsync_dir(self.blobs_dir)
        return digest

    def adopt_file(
        self,
        path: Path,
        expected: str | None = None,
        *,
        size: int | None = None,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple[str, str]:
        """Bring another program's file into the store without changing it.

        Returns its digest and how it came in (:data:`ADOPT_LINK`,
        :data:`ADOPT_REFLINK`, :data:`ADOPT_COPY`, or :data:`ADOPT_PRESENT` when
        the store already held those bytes). ``path`` must not be a symlink (the
        caller resolves and checks it). A file whose size is not ``size`` is
        refused before anything is hashed. The file is hard-linked into ``tmp/``
        (reflinked, else copied while hashing, where a link cannot be made:
        another file system, another user's file), the file in ``tmp/`` is hashed
        and compared with ``expected``, then renamed into ``blobs/``; a hard link is
        not made read-only (its mode is the other program's). When the store
        already holds ``expected`` the source is only hashed. Nothing is left in
        ``tmp/`` on any error, and the source is never written, renamed or chmodded.
        """
        want = parse_digest(expected) if expected is not None else None
        shown = path.name[:80]
        with self.pinned():
            with _open_source(path, size) as src:
                st = os.fstat(src.fileno())
                if want is not None and self.has_blob(want):
                    digest, _n = _hash_stream(src, progress, cancel, st.st_size, "verifying")
                    _check_digest(want, digest, shown)
                    return want, ADOPT_PRESENT
                placed = self._link_into_tmp(path, st, shown)
                how = ADOPT_LINK
                if placed is None:
                    placed = self._clone_into_tmp(src.fileno())
                    how = ADOPT_REFLINK
                if placed is None:
                    tmp, digest = self.stage_blob(
                        _read_chunks(src),
                        want,
                        progress=progress,
                        cancel=cancel,
                        total=st.st_size,
                        status="copying",
                        prefix="adopt-",
                    )
                    how = ADOPT_COPY
                else:
                    tmp = placed
                    try:
                        digest = self._hash_placed(tmp, st.st_size, shown, progress, cancel)
                        if want is not None:
                            _check_digest(want, digest, shown)
                    except BaseException:
                        remove_quietly(tmp)
                        raise
            try:
                present = self.has_blob(digest)
                self.install_blob(tmp, digest, read_only=how != ADOPT_LINK)
            except OSError as exc:
                raise storage_error(exc, "storing a model file") from exc
            finally:
                remove_quietly(tmp)
            return digest, ADOPT_PRESENT if present else how

    def _link_into_tmp(self, path: Path, st: os.stat_result, shown: str) -> Path | None:
        """A hard link to the opened file in ``tmp/``; None where none can be made."""
        tmp = self.tmp_dir / f"adopt-{secrets.token_hex(12)}.tmp"
        try:
            os.link(path, tmp, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_LINK:
                return None
            raise storage_error(exc, "linking a model file into the store") from exc
        try:
            linked = os.lstat(tmp)
        except OSError as exc:
            remove_quietly(tmp)
            raise storage_error(exc, "linking a model file into the store") from exc
        if not stat.S_ISREG(linked.st_mode) or (linked.st_dev, linked.st_ino) != (
            st.st_dev,
            st.st_ino,
        ):
            remove_quietly(tmp)
            raise FailedPrecondition(f"{shown!r} was replaced while it was being imported")
        return tmp

    def _clone_into_tmp(self, src_fd: int) -> Path | None:
        """A copy-on-write clone of ``src_fd`` in ``tmp/``; None where the file
        system cannot clone it."""
        fd, tmp_name = self._mkstemp("adopt-")
        tmp = Path(tmp_name)
        try:
            reflink(src_fd, fd)
            os.fsync(fd)
        except OSError:
            remove_quietly(tmp)
            return None
        finally:
            os.close(fd)
        return tmp

    def _hash_placed(
        self,
        tmp: Path,
        size: int,
        shown: str,
        progress: ProgressFn | None,
        cancel: threading.Event | None,
    ) -> str:
        with _open_source(tmp, None) as f:
            digest, n = _hash_stream(f, progress, cancel, size, "verifying")
        if n != size:
            raise FailedPrecondition(f"{shown!r} changed while it was being imported")
        return digest

    def verify_blob(self, digest: str) -> bool:
        """Re-hash a stored blob; return whether it still matches its name."""
        digest = parse_digest(digest)
        hasher = new_hasher()
        try:
            with open(self.blob_path(digest), "rb") as f:
                for chunk in _read_chunks(f):
                    hasher.update(chunk)
        except FileNotFoundError:
            return False
        return digest_from_hex(hasher.hexdigest()) == digest

    def blob_digests(self) -> list[str]:
        """Every stored blob's digest, sorted."""
        return sorted(
            parse_digest(p.name) for p in self.blobs_dir.iterdir() if _BLOB_NAME.fullmatch(p.name)
        )

    def _mkstemp(self, prefix: str) -> tuple[int, str]:
        try:
            return tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=self.tmp_dir)
        except OSError as exc:
            raise storage_error(exc, "creating a temporary file") from exc

    def _fill(
        self,
        fd: int,
        chunks: Iterable[bytes],
        progress: ProgressFn | None,
        cancel: threading.Event | None,
        total: int,
        status: str,
        written: list[int],
    ) -> str:
        """Write, hash and fsync; ``written[0]`` counts the bytes on disk so far."""
        hasher = new_hasher()
        reporter = ThrottledProgress(progress, status, total)
        with os.fdopen(fd, "wb", buffering=0) as f:
            for chunk in chunks:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("pull cancelled")
                write_all(f, chunk)
                hasher.update(chunk)
                written[0] += len(chunk)
                reporter.update(written[0])
            os.fsync(f.fileno())
        reporter.done(written[0])
        return digest_from_hex(hasher.hexdigest())


def write_all(f: BinaryIO, data: bytes) -> None:
    """Write every byte of ``data`` to an unbuffered file: a raw write may be short
    (a nearly full disk writes what fits, and only the next write fails)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def reflink(src_fd: int, dst_fd: int) -> None:
    """Make ``dst_fd`` a copy-on-write clone of ``src_fd`` (Linux FICLONE: btrfs, XFS,
    bcachefs); raises OSError where the file system or platform cannot."""
    if sys.platform != "linux":
        raise OSError(errno.EOPNOTSUPP, "reflinks need Linux")
    import fcntl

    fcntl.ioctl(dst_fd, _FICLONE, src_fd)


def _open_source(path: Path, size: int | None) -> BinaryIO:
    """Open a regular file for reading without following a symlink or blocking on a
    FIFO; with ``size``, refuse a file of another size before reading it."""
    shown = path.name[:80]
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise NotFound(f"no such file {shown!r}") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidArgument(f"{shown!r} is a symbolic link, not a model file") from exc
        raise FailedPrecondition(
            f"cannot read {shown!r}: {exc.strerror or type(exc).__name__}"
        ) from exc
    f = os.fdopen(fd, "rb")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{shown!r} is not a regular file")
        if size is not None and st.st_size != size:
            raise DigestMismatch(
                f"{shown!r} is {st.st_size} bytes, not the {size} bytes expected "
                "(refused without hashing it)"
            )
    except BaseException:
        f.close()
        raise
    return f


def _hash_stream(
    f: BinaryIO,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    total: int,
    status: str,
) -> tuple[str, int]:
    """The digest of what ``f`` holds and how many bytes that was."""
    hasher = new_hasher()
    reporter = ThrottledProgress(progress, status, total)
    n = 0
    for chunk in _read_chunks(f):
        if cancel is not None and cancel.is_set():
            raise Cancelled("import cancelled")
        hasher.update(chunk)
        n += len(chunk)
        reporter.update(n)
    reporter.done(n)
    return digest_from_hex(hasher.hexdigest()), n


def _check_digest(want: str, digest: str, shown: str) -> None:
    if digest != want:
        raise DigestMismatch(
            f"{shown!r} does not match the expected digest {want} (it hashes to {digest}); "
            "the file is corrupt or changed"
        )


def _read_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_SIZE):
        yield chunk
