"""The content-addressed model store.

Layout under ``root``::

    blobs/sha256-<hex>                 model files, named by their digest (read-only)
    manifests/<name parts>/<tag>.json  one manifest per model tag
    tmp/                               files being written; renamed into place when verified
    partial/                           resumable downloads (see http_source)
    locks/                             advisory lock files

Nothing half-written ever appears under a final name: every file is written in
``tmp/`` (or ``partial/``), fsynced, and renamed into place, then the directory
is fsynced. Garbage collection removes blobs no manifest references, and never
runs while any pull holds the store "pinned".
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

from edged.daemon.errors import (
    Cancelled,
    DigestMismatch,
    EdgedError,
    FailedPrecondition,
    InvalidArgument,
    ModelNotFound,
    NotFound,
)

from . import locks
from .digest import blob_name, digest_from_hex, new_hasher, parse_digest
from .fsutil import atomic_write, fsync_dir, remove_quietly, storage_error
from .manifest import MAX_MANIFEST_BYTES, CorruptManifest, Manifest
from .names import ModelRef, split_model_ref, validate_name, validate_tag
from .progress import ProgressFn, ThrottledProgress

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
TMP_MAX_AGE_SECONDS = 3600.0
_BLOB_NAME = re.compile(r"sha256-[0-9a-f]{64}")


class Store:
    """A content-addressed store of model blobs and manifests under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.manifests_dir = self.root / "manifests"
        self.tmp_dir = self.root / "tmp"
        self.partial_dir = self.root / "partial"
        self.locks_dir = self.root / "locks"
        try:
            for d in (self.blobs_dir, self.manifests_dir, self.tmp_dir, self.partial_dir):
                d.mkdir(parents=True, exist_ok=True)
            self.locks_dir.mkdir(parents=True, exist_ok=True)
            self._gc_lock.touch(exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, "creating the model store") from exc
        self._pin_mutex = threading.Lock()
        self._pins = 0
        self._pin_stack: ExitStack | None = None

    # -- pins and garbage collection -------------------------------------------------

    @property
    def _gc_lock(self) -> Path:
        return self.locks_dir / "gc.lock"

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """While held (by any thread or process), garbage collection removes nothing."""
        with self._pin_mutex:
            if self._pins == 0:
                stack = ExitStack()
                stack.enter_context(locks.locked(self._gc_lock, shared=True))
                self._pin_stack = stack
            self._pins += 1
        try:
            yield
        finally:
            with self._pin_mutex:
                self._pins -= 1
                if self._pins == 0 and self._pin_stack is not None:
                    self._pin_stack.close()
                    self._pin_stack = None

    def gc(self) -> list[str]:
        """Remove blobs that no manifest references, and stale temp files.

        Returns the removed digests. Does nothing (returns ``[]``) while a pull
        holds the store pinned, or while any manifest cannot be read.
        """
        with locks.try_locked(self._gc_lock) as taken:
            if not taken:
                log.debug("gc skipped: a pull is in progress")
                return []
            referenced = self._referenced_digests()
            if referenced is None:
                log.warning("gc skipped: a manifest could not be read (see earlier warnings)")
                return []
            removed = [d for d in self.blob_digests() if d not in referenced]
            for digest in removed:
                remove_quietly(self.blob_path(digest))
            if removed:
                fsync_dir(self.blobs_dir)
            self._clean_tmp()
            return removed

    # -- blobs -------------------------------------------------------------------------

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
            fd, tmp_name = self._mkstemp("blob-")
            tmp = Path(tmp_name)
            try:
                digest = self._fill(fd, chunks, progress, cancel, total, status)
                if want is not None and digest != want:
                    raise DigestMismatch(
                        f"the data does not match the expected digest {want} (it hashes to "
                        f"{digest}); the source is corrupt or changed"
                    )
                self.install_blob(tmp, digest)
                return digest
            except OSError as exc:
                raise storage_error(exc, "writing a model file") from exc
            finally:
                remove_quietly(tmp)

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

    def discard_blob(self, digest: str) -> bool:
        """Remove one blob unless a manifest references it; return whether it was removed."""
        digest = parse_digest(digest)
        referenced = self._referenced_digests()
        if referenced is None or digest in referenced:
            return False
        path = self.blob_path(digest)
        if not path.exists():
            return False
        remove_quietly(path)
        fsync_dir(self.blobs_dir)
        return True

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

    # -- manifests ---------------------------------------------------------------------

    def manifest_path(self, ref: ModelRef) -> Path:
        validate_name(ref.name)
        validate_tag(ref.tag)
        return self.manifests_dir.joinpath(*ref.segments, f"{ref.tag}.json")

    def put_manifest(self, ref: ModelRef, m: Manifest) -> None:
        """Write the manifest of ``ref`` atomically; every file it names must be stored."""
        if (m.name, m.tag) != (ref.name, ref.tag):
            m = dataclasses.replace(m, name=ref.name, tag=ref.tag)
        data = m.to_json().encode()
        path = self.manifest_path(ref)
        with self.pinned():
            for f in m.files:
                if not self.has_blob(f.digest):
                    raise FailedPrecondition(
                        f"cannot write the manifest of '{ref}': blob {f.digest} is not stored"
                    )
            try:
                self._write_manifest_file(path, data)
            except OSError as exc:
                raise storage_error(exc, f"writing the manifest of '{ref}'") from exc

    def get_manifest(self, ref: ModelRef) -> Manifest:
        path = self.manifest_path(ref)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_MANIFEST_BYTES + 1)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ModelNotFound(
                f"model '{ref}' not found; pull it with `edged pull {ref.name}`"
            ) from exc
        except OSError as exc:
            raise storage_error(exc, f"reading the manifest of '{ref}'") from exc
        try:
            m = Manifest.from_json(data)
        except CorruptManifest as exc:
            raise CorruptManifest(
                f"model '{ref}' has a {exc}; remove it with `edged rm {ref}` and pull it again"
            ) from exc
        if (m.name, m.tag) != (ref.name, ref.tag):
            m = dataclasses.replace(m, name=ref.name, tag=ref.tag)
        return m

    def list_manifests(self) -> list[tuple[ModelRef, Manifest]]:
        """Every readable manifest, sorted by reference; unreadable ones are logged."""
        out: list[tuple[ModelRef, Manifest]] = []
        for ref in self._manifest_refs():
            try:
                out.append((ref, self.get_manifest(ref)))
            except EdgedError as exc:
                if not isinstance(exc, NotFound):  # deleted meanwhile: not worth a warning
                    log.warning("skipping model %s: %s", ref, exc)
        return out

    def tags(self, name: str) -> list[str]:
        """The tags stored for ``name``, sorted."""
        directory = self.manifests_dir.joinpath(*validate_name(name).split("/"))
        try:
            entries = list(directory.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(t for e in entries if (t := _tag_of(e)) is not None)

    def delete(self, ref: ModelRef) -> None:
        """Remove the manifest of ``ref``, then garbage-collect unreferenced blobs."""
        path = self.manifest_path(ref)
        try:
            path.unlink()
        except FileNotFoundError as exc:
            raise ModelNotFound(f"model '{ref}' not found") from exc
        fsync_dir(path.parent)
        self._prune_empty_dirs(path.parent)
        self.gc()

    def resolve(self, name: str) -> tuple[ModelRef, Manifest]:
        """Find a model by ``name[:tag]``.

        Without a tag, ``latest`` is used; if that is absent and ``name`` has
        exactly one tag, that tag is used.
        """
        model, tag = split_model_ref(name)
        if tag is not None:
            ref = ModelRef(model, tag)
            return ref, self.get_manifest(ref)
        latest = ModelRef(model)
        if self.manifest_path(latest).exists():
            return latest, self.get_manifest(latest)
        tags = self.tags(model)
        if len(tags) == 1:
            ref = ModelRef(model, tags[0])
            return ref, self.get_manifest(ref)
        if not tags:
            raise ModelNotFound(f"model '{model}' not found; pull it with `edged pull {model}`")
        raise ModelNotFound(
            f"model '{model}:latest' not found and '{model}' has several tags "
            f"({', '.join(tags)}); name one, for example '{model}:{tags[0]}'"
        )

    # -- internals ---------------------------------------------------------------------

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
    ) -> str:
        hasher = new_hasher()
        done = 0
        reporter = ThrottledProgress(progress, status, total)
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("pull cancelled")
                f.write(chunk)
                hasher.update(chunk)
                done += len(chunk)
                reporter.update(done)
            f.flush()
            os.fsync(f.fileno())
        reporter.done(done)
        return digest_from_hex(hasher.hexdigest())

    def _write_manifest_file(self, path: Path, data: bytes) -> None:
        for attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                atomic_write(path, data, self.tmp_dir)
                return
            except FileNotFoundError:  # a concurrent delete pruned the directory
                if attempt == 2:
                    raise

    def _prune_empty_dirs(self, directory: Path) -> None:
        while directory != self.manifests_dir and self.manifests_dir in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def _manifest_refs(self) -> list[ModelRef]:
        refs: list[ModelRef] = []
        for path in sorted(self.manifests_dir.rglob("*.json")):
            parts = path.relative_to(self.manifests_dir).parts
            tag = _tag_of(path)
            if tag is None or len(parts) not in (2, 3):
                log.warning("ignoring unexpected file manifests/%s", "/".join(parts))
                continue
            try:
                refs.append(ModelRef("/".join(parts[:-1]), tag))
            except InvalidArgument:
                log.warning("ignoring manifest with an invalid name: manifests/%s", "/".join(parts))
        return sorted(refs)

    def _referenced_digests(self) -> set[str] | None:
        """Digests named by any manifest, or None if some manifest cannot be read."""
        referenced: set[str] = set()
        for ref in self._manifest_refs():
            try:
                referenced.update(self.get_manifest(ref).digests)
            except NotFound:
                continue
            except EdgedError as exc:
                log.warning("cannot read the manifest of %s: %s", ref, exc)
                return None
        return referenced

    def blob_digests(self) -> list[str]:
        """Every stored blob's digest, sorted."""
        return sorted(
            parse_digest(p.name) for p in self.blobs_dir.iterdir() if _BLOB_NAME.fullmatch(p.name)
        )

    def _clean_tmp(self) -> None:
        cutoff = time.time() - TMP_MAX_AGE_SECONDS
        for entry in self.tmp_dir.iterdir():
            try:
                if entry.lstat().st_mtime >= cutoff:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
            except OSError as exc:
                log.warning("could not remove stale tmp/%s: %s", entry.name, exc.strerror)


def _tag_of(path: Path) -> str | None:
    if path.suffix != ".json" or not path.is_file():
        return None
    try:
        return validate_tag(path.stem)
    except InvalidArgument:
        return None


def _read_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_SIZE):
        yield chunk
