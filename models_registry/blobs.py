"""Blobs: the model files under ``blobs/sha256-<hex>``, named by their digest.

A blob is never written under its final name: its bytes go to a new file in
``tmp/`` while they are hashed (:meth:`BlobsMixin.stage_blob`), the file is
fsynced, checked against the digest the caller expects, made read-only and
renamed into ``blobs/`` (:meth:`BlobsMixin.install_blob`), and then ``blobs/`` is
fsynced. So a blob is complete under its name or absent; a process killed midway
leaves at worst a file in ``tmp/``, which garbage collection removes (cleanup.py,
where unreferenced blobs are removed too).
"""

from __future__ import annotations

import errno
import os
import re
import stat
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

    def install_blob(self, path: Path, digest: str) -> str:
        """Move a fully written, fsynced file whose digest was verified into ``blobs/``.

        ``path`` must be inside the store (``tmp/`` or ``partial/``) so the rename is
        atomic. If the blob already exists, ``path`` is removed instead.
        """
        digest = parse_digest(digest)
        if path.parent not in (self.tmp_dir, self.partial_dir):
            raise InvalidArgument("only files in the store's tmp/ or partial/ can be installed")
        final = self.blob_path(digest)
        os.chmod(path, 0o444)
        if final.exists():
            remove_quietly(path)
            return digest
        os.replace(path, final)
        fsync_dir(self.blobs_dir)
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


def _read_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_SIZE):
        yield chunk
