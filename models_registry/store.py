"""The content-addressed model store.

Layout under ``root``::

    blobs/sha256-<hex>                 model files, named by their digest (read-only)
    manifests/<name parts>/<tag>.json  one manifest per model tag
    views/<hex>/                       a folder variant as symlinks to its blobs (see views)
    tmp/                               files being written; renamed into place when verified
    partial/                           resumable downloads (see http_source)
    locks/                             advisory lock files
    quarantine/                        corrupt files moved aside by ``edged verify --repair``

Nothing half-written ever appears under a final name: every file is written in
``tmp/`` (or ``partial/``), fsynced, and renamed into place, then the directory
is fsynced. Manifest updates (a pull, a new variant, a delete) hold that model's
lock, so two of them never lose each other's change. A process killed at any
point leaves at worst an unreferenced blob, a file in ``tmp/`` or a resumable
partial download, never a manifest naming a missing or half-written blob.

Garbage collection (:meth:`Store.collect`) removes blobs and views no manifest
references and stale ``tmp/`` and ``partial/`` files. It never runs while any
pull holds the store "pinned" (a shared lock on ``locks/gc.lock``; collection
takes it exclusively), never removes a partial download whose lock is held, and
keeps unreferenced blobs and temp/partial files younger than a grace period (by
mtime), so a pull killed between storing a file and writing its manifest
reuses the file when run again. Deleting a model frees its own blobs at once.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
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

from . import locks, views
from .digest import blob_name, digest_from_hex, hex_of, new_hasher, parse_digest
from .fsutil import (
    DiskFull,
    atomic_write,
    fsync_dir,
    remove_quietly,
    remove_tree,
    storage_error,
)
from .manifest import FORMAT_GGUF, MAX_MANIFEST_BYTES, CorruptManifest, Manifest, Variant
from .names import ModelRef, split_model_ref, validate_name, validate_tag
from .progress import ProgressFn, ThrottledProgress

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
GC_GRACE_SECONDS = 3600.0
_BLOB_NAME = re.compile(r"sha256-[0-9a-f]{64}")
_VIEW_NAME = re.compile(r"[0-9a-f]{64}")
_LOCK_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass
class GcReport:
    """What a collection removed (or, in a dry run, would remove)."""

    blobs: list[str] = field(default_factory=list)  # digests
    views: list[str] = field(default_factory=list)  # names under views/
    tmp: list[str] = field(default_factory=list)  # names under tmp/
    partial: list[str] = field(default_factory=list)  # names under partial/
    freed_bytes: int = 0
    kept_young: list[str] = field(default_factory=list)  # unreferenced, within the grace period
    kept_in_flight: list[str] = field(default_factory=list)  # partial downloads being written
    skipped: str = ""  # why nothing was collected; "" when it ran
    dry_run: bool = False


class Store:
    """A content-addressed store of model blobs and manifests under ``root``.

    ``gc_grace_s`` is how old (by mtime) an unreferenced blob or a temp or
    partial file must be before garbage collection removes it.
    """

    def __init__(self, root: Path, *, gc_grace_s: float = GC_GRACE_SECONDS) -> None:
        self.root = Path(root)
        self.gc_grace_s = gc_grace_s
        self.blobs_dir = self.root / "blobs"
        self.manifests_dir = self.root / "manifests"
        self.tmp_dir = self.root / "tmp"
        self.partial_dir = self.root / "partial"
        self.locks_dir = self.root / "locks"
        self.views_dir = self.root / "views"
        self.quarantine_dir = self.root / "quarantine"
        dirs = (self.blobs_dir, self.manifests_dir, self.tmp_dir, self.partial_dir, self.views_dir)
        try:
            for d in dirs:
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
        """While held (by any thread or process), garbage collection removes nothing.

        A full disk met inside (:class:`DiskFull`) is reported with the store's
        free space when the code that met it did not say where it was writing.
        """
        with self._pin_mutex:
            if self._pins == 0:
                stack = ExitStack()
                stack.enter_context(locks.locked(self._gc_lock, shared=True))
                self._pin_stack = stack
            self._pins += 1
        try:
            yield
        except DiskFull as exc:
            located = exc.located(self.root)
            if located is exc:
                raise
            raise located from exc
        finally:
            with self._pin_mutex:
                self._pins -= 1
                if self._pins == 0 and self._pin_stack is not None:
                    self._pin_stack.close()
                    self._pin_stack = None

    @contextmanager
    def exclusive(
        self, *, wait: bool = False, on_wait: Callable[[], None] | None = None
    ) -> Iterator[bool]:
        """Hold the store against every pull and collection (the gc lock, exclusively);
        yield whether it was taken. With ``wait``, wait for pulls to finish (always
        True then). Never call it while this process holds the store pinned."""
        if wait:
            with locks.locked(self._gc_lock, on_wait=on_wait):
                yield True
            return
        with locks.try_locked(self._gc_lock) as taken:
            yield taken

    def gc(self, *, grace_s: float | None = None) -> list[str]:
        """Collect garbage (see :meth:`collect`); return the removed blobs' digests."""
        return self.collect(grace_s=grace_s).blobs

    def collect(
        self, *, grace_s: float | None = None, dry_run: bool = False, now: float | None = None
    ) -> GcReport:
        """Remove blobs and views that no manifest references, stale temp files and
        stale partial downloads.

        Unreferenced blobs and temp/partial files are removed only once older
        than ``grace_s`` (default: the store's ``gc_grace_s``); a partial download
        whose lock is held is never removed. Does nothing (``skipped`` says why)
        while a pull holds the store pinned, or while any manifest cannot be read.
        ``dry_run`` reports what would go and removes nothing.
        """
        return self._collect(grace_s=grace_s, dry_run=dry_run, now=now, freed=frozenset())

    def _collect(
        self,
        *,
        grace_s: float | None,
        dry_run: bool,
        now: float | None,
        freed: frozenset[str],
    ) -> GcReport:
        grace = self.gc_grace_s if grace_s is None else max(0.0, grace_s)
        cutoff = (time.time() if now is None else now) - grace
        report = GcReport(dry_run=dry_run)
        with self.exclusive() as taken:
            if not taken:
                log.debug("gc skipped: a pull is in progress")
                report.skipped = "a pull or an import is in progress; run it again when it is done"
                return report
            manifests = self._all_manifests()
            if manifests is None:
                log.warning("gc skipped: a manifest could not be read (see earlier warnings)")
                report.skipped = (
                    "a manifest cannot be read; run `edged verify` to find and repair it"
                )
                return report
            referenced = {d for m in manifests for d in m.digests}
            self._collect_blobs(report, referenced, freed, cutoff)
            keep_views = {hex_of(v.digest) for m in manifests for v in m.variants}
            self._remove_views(keep_views, report)
            self._clean_tmp(cutoff, report)
            self._clean_partial(cutoff, report)
        return report

    def _collect_blobs(
        self, report: GcReport, referenced: set[str], freed: frozenset[str], cutoff: float
    ) -> None:
        for digest in self.blob_digests():
            if digest in referenced:
                continue
            try:
                st = self.blob_path(digest).lstat()
            except FileNotFoundError:
                continue
            if digest not in freed and st.st_mtime > cutoff:
                report.kept_young.append(digest)
                continue
            report.blobs.append(digest)
            report.freed_bytes += st.st_size
            if not report.dry_run:
                remove_quietly(self.blob_path(digest))
        if report.blobs and not report.dry_run:
            fsync_dir(self.blobs_dir)

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

    def discard_blob(self, digest: str) -> bool:
        """Remove one blob unless a manifest references it; return whether it was removed."""
        digest = parse_digest(digest)
        manifests = self._all_manifests()
        if manifests is None or any(digest in m.digests for m in manifests):
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
        with self._manifest_locked(ref):
            self._put_manifest(ref, m)

    def update_manifest(
        self,
        ref: ModelRef,
        change: Callable[[Manifest | None], Manifest],
        *,
        replace_corrupt: bool = False,
    ) -> Manifest:
        """Read, change and write the manifest of ``ref`` under that model's lock.

        ``change`` gets the current manifest (None when there is none, or when it is
        corrupt and ``replace_corrupt``) and returns the new one; whatever it raises
        leaves the manifest as it was. Returns what was written.
        """
        with self.pinned(), self._manifest_locked(ref):
            try:
                current: Manifest | None = self.get_manifest(ref)
            except ModelNotFound:
                current = None
            except CorruptManifest:
                if not replace_corrupt:
                    raise
                current = None
            return self._put_manifest(ref, change(current))

    def add_variant(self, ref: ModelRef, variant: Variant) -> Manifest:
        """Add ``variant`` to the model (replacing a variant of the same name), atomically."""

        def change(current: Manifest | None) -> Manifest:
            if current is None:
                raise ModelNotFound(f"model '{ref}' not found")
            return current.with_variant(variant)

        return self.update_manifest(ref, change)

    def materialize(self, manifest: Manifest, variant: Variant) -> Path:
        """Where a backend finds ``variant``: a single GGUF file's blob path, or for a
        folder format (ONNX) a read-only folder of symlinks to the blobs under
        ``views/``, made once and reused."""
        if variant not in manifest.variants:
            raise InvalidArgument(f"{variant.name!r} is not a variant of model '{manifest.ref}'")
        with self.pinned():
            for f in variant.files:
                if not self.has_blob(f.digest):
                    raise FailedPrecondition(
                        f"model '{manifest.ref}' is incomplete: the file {f.path!r} of its "
                        f"{variant.name!r} variant is missing; pull or convert it again"
                    )
            if variant.format == FORMAT_GGUF:
                return self.blob_path(variant.main.digest)
            links = [(f.path, self.blob_path(f.digest)) for f in variant.files]
            final = self.views_dir / hex_of(variant.digest)
            try:
                return views.ensure_view(final, self.tmp_dir, links)
            except OSError as exc:
                raise storage_error(exc, f"making the folder view of '{manifest.ref}'") from exc

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
        """Remove the manifest of ``ref``, then garbage-collect: the blobs and views of
        its variants that no other model uses go at once (unless a pull is running;
        a later collection removes them then), other garbage after the grace period."""
        path = self.manifest_path(ref)
        with self._manifest_locked(ref):
            try:
                own = self.get_manifest(ref).digests
            except ModelNotFound:
                raise
            except EdgedError:  # corrupt: delete it anyway; its blobs wait for the grace period
                own = frozenset()
            try:
                path.unlink()
            except FileNotFoundError as exc:
                raise ModelNotFound(f"model '{ref}' not found") from exc
            fsync_dir(path.parent)
            self._prune_empty_dirs(path.parent)
        self._collect(grace_s=None, dry_run=False, now=None, freed=own)

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

    @contextmanager
    def _manifest_locked(self, ref: ModelRef) -> Iterator[None]:
        key = _sha256_hex(str(ref).encode())[:32]
        with locks.locked(self.locks_dir / f"manifest-{key}.lock", ephemeral=True):
            yield

    def _put_manifest(self, ref: ModelRef, m: Manifest) -> Manifest:
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
        return m

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

    def _all_manifests(self) -> list[Manifest] | None:
        """Every manifest, or None if some manifest cannot be read."""
        out: list[Manifest] = []
        for ref in self._manifest_refs():
            try:
                out.append(self.get_manifest(ref))
            except NotFound:
                continue
            except EdgedError as exc:
                log.warning("cannot read the manifest of %s: %s", ref, exc)
                return None
        return out

    def _remove_views(self, keep: set[str], report: GcReport) -> None:
        for entry in sorted(self.views_dir.iterdir()):
            if _VIEW_NAME.fullmatch(entry.name) and entry.name in keep:
                continue
            report.views.append(entry.name)
            if report.dry_run:
                continue
            try:
                views.remove_view(entry, self.tmp_dir)
            except OSError as exc:
                log.warning("could not remove views/%s: %s", entry.name, exc.strerror)

    def blob_digests(self) -> list[str]:
        """Every stored blob's digest, sorted."""
        return sorted(
            parse_digest(p.name) for p in self.blobs_dir.iterdir() if _BLOB_NAME.fullmatch(p.name)
        )

    def _clean_tmp(self, cutoff: float, report: GcReport) -> None:
        for entry in sorted(self.tmp_dir.iterdir()):
            try:
                if newest_mtime(entry) > cutoff:
                    continue
                size = tree_size(entry)
                if not report.dry_run:
                    remove_tree(entry)
            except OSError as exc:
                log.warning("could not remove stale tmp/%s: %s", entry.name, exc.strerror)
                continue
            report.tmp.append(entry.name)
            report.freed_bytes += size

    def _clean_partial(self, cutoff: float, report: GcReport) -> None:
        """Partial downloads are grouped by key (the name up to its first ".") and
        guarded by ``locks/<key>.lock``, which a download holds while it writes."""
        groups: dict[str, list[Path]] = {}
        for entry in sorted(self.partial_dir.iterdir()):
            groups.setdefault(partial_key_of(entry.name), []).append(entry)
        for key, entries in groups.items():
            try:
                if max(newest_mtime(e) for e in entries) > cutoff:
                    report.kept_young.extend(e.name for e in entries)
                    continue
                with self.download_lock_free(key) as free:
                    if not free:
                        report.kept_in_flight.extend(e.name for e in entries)
                        continue
                    for entry in entries:
                        size = tree_size(entry)
                        if not report.dry_run:
                            remove_tree(entry)
                        report.partial.append(entry.name)
                        report.freed_bytes += size
            except OSError as exc:
                log.warning("could not remove stale partial/%s*: %s", key, exc.strerror)

    @contextmanager
    def download_lock_free(self, key: str) -> Iterator[bool]:
        """Hold ``locks/<key>.lock`` (a download's lock) if nobody does; yield whether
        it was free. A download that starts meanwhile waits until the block ends."""
        if not _LOCK_KEY.fullmatch(key):
            yield True  # no download names its lock like this
            return
        with locks.try_locked(self.locks_dir / f"{key}.lock", ephemeral=True) as taken:
            yield taken


def write_all(f: BinaryIO, data: bytes) -> None:
    """Write every byte of ``data`` to an unbuffered file: a raw write may be short
    (a nearly full disk writes what fits, and only the next write fails)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def partial_key_of(name: str) -> str:
    """The download key of a file in ``partial/``: its name up to the first "."."""
    return name.split(".", 1)[0]


def newest_mtime(path: Path, limit: int = 10_000) -> float:
    """The newest mtime of ``path`` and (for a folder) what it holds; links not followed."""
    newest = path.lstat().st_mtime
    if not path.is_dir() or path.is_symlink():
        return newest
    for seen, sub in enumerate(path.rglob("*")):
        if seen >= limit:
            break
        try:
            newest = max(newest, sub.lstat().st_mtime)
        except FileNotFoundError:
            continue
    return newest


def tree_size(path: Path) -> int:
    """Bytes held by a file, or by the files under a folder (links not followed)."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for sub in path.rglob("*"):
        try:
            st = sub.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def _tag_of(path: Path) -> str | None:
    if path.suffix != ".json" or not path.is_file():
        return None
    try:
        return validate_tag(path.stem)
    except InvalidArgument:
        return None


def _sha256_hex(data: bytes) -> str:
    hasher = new_hasher()
    hasher.update(data)
    return hasher.hexdigest()


def _read_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_SIZE):
        yield chunk
