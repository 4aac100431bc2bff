"""Move a model between machines as one tar archive (``edged export`` / ``edged import``).

An archive holds, in this order::

    index.json                   {"format": "edged-model-archive", "version": 1,
                                  "model": "name:tag", "manifest_sha256": "<hex>",
                                  "blobs": [{"digest": "sha256:<hex>", "size": N}, ...]}
    manifest.json                the model's manifest, as the store keeps it
    blobs/sha256-<hex>           every file of every variant, once each

Import trusts nothing in it. Every member is checked before its bytes are read:
only regular files (and an optional ``blobs/`` folder entry) with exactly the
names above; no absolute path, no ``..``, no link of any kind, no device; sizes
bounded and equal to what the index and the manifest say. Every blob is
re-hashed while it is written to the store's ``tmp/`` and must match its name;
only when the whole archive has been read and checked are the blobs moved into
``blobs/`` and the manifest written. Any failure removes what was written: a bad
archive leaves nothing in the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from edged.common.errors import (
    Cancelled,
    DigestMismatch,
    EdgedError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

from .blobs import CHUNK_SIZE
from .digest import blob_name, parse_digest
from .fsutil import DiskFull, free_bytes, fsync_dir, remove_quietly, storage_error
from .manifest import MAX_FILES_PER_VARIANT, MAX_MANIFEST_BYTES, MAX_VARIANTS, Manifest
from .names import ModelRef, split_model_ref
from .progress import ProgressFn, ThrottledProgress
from .store import Store

FORMAT = "edged-model-archive"
VERSION = 1
INDEX_NAME = "index.json"
MANIFEST_NAME = "manifest.json"
BLOBS_DIR = "blobs"
MAX_INDEX_BYTES = 1 << 20
MAX_BLOB_BYTES = 1 << 40
MAX_BLOBS = MAX_VARIANTS * MAX_FILES_PER_VARIANT
DISK_MARGIN = 64 << 20
_BLOB_MEMBER = re.compile(r"blobs/(sha256-[0-9a-f]{64})")


class BadArchive(InvalidArgument):
    """The archive is malformed, hostile, truncated or does not match its index."""


@dataclass(frozen=True)
class ArchiveEntry:
    digest: str
    size: int


@dataclass(frozen=True)
class Index:
    model: str
    manifest_sha256: str
    blobs: tuple[ArchiveEntry, ...]

    def to_json(self) -> bytes:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "manifest_sha256": self.manifest_sha256,
            "blobs": [{"digest": b.digest, "size": b.size} for b in self.blobs],
        }
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Index:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise BadArchive(f"{INDEX_NAME} is not valid JSON") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BadArchive(f"not an edged model archive ({INDEX_NAME} has the wrong format)")
        if data.get("version") != VERSION:
            raise BadArchive(
                f"unsupported archive version {data.get('version')!r} (this edged reads {VERSION})"
            )
        model, sha, blobs = data.get("model"), data.get("manifest_sha256"), data.get("blobs")
        if not isinstance(model, str) or not isinstance(sha, str) or not isinstance(blobs, list):
            raise BadArchive(f"{INDEX_NAME} lacks its model, manifest digest or blob list")
        if not re.fullmatch(r"[0-9a-f]{64}", sha) or not 0 < len(blobs) <= MAX_BLOBS:
            raise BadArchive(f"{INDEX_NAME} has a bad manifest digest or blob count")
        entries = tuple(_entry(b) for b in blobs)
        if len({e.digest for e in entries}) != len(entries):
            raise BadArchive(f"{INDEX_NAME} lists a blob twice")
        return cls(model, sha, entries)


def _entry(raw: object) -> ArchiveEntry:
    if not isinstance(raw, dict):
        raise BadArchive(f"{INDEX_NAME} has a malformed blob entry")
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BLOB_BYTES:
        raise BadArchive(f"{INDEX_NAME} has a blob with a bad size")
    try:
        digest = parse_digest(raw.get("digest"))  # type: ignore[arg-type]
    except InvalidArgument as exc:
        raise BadArchive(f"{INDEX_NAME} has a bad blob digest: {exc}") from exc
    return ArchiveEntry(digest, size)


# -- export -----------------------------------------------------------------------------


def export_model(
    store: Store,
    model: str,
    out: Path,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> tuple[ModelRef, Manifest, int]:
    """Write ``model`` (``name[:tag]``) to the tar file ``out``; return its reference,
    manifest and the archive's size. Every blob is re-hashed on the way out, so a
    damaged store is never exported. ``out`` appears only when complete."""
    with store.pinned():
        ref, manifest = store.resolve(model)
        data = manifest.to_json().encode()
        sizes = {f.digest: f.size for f in manifest.files}
        entries = tuple(ArchiveEntry(d, s) for d, s in sorted(sizes.items()))
        index = Index(str(ref), hashlib.sha256(data).hexdigest(), entries)
        fd, tmp_name = _mkstemp_beside(out)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                _write_archive(store, f, index, data, manifest, progress, cancel)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out)
            fsync_dir(out.parent)
            return ref, manifest, out.stat().st_size
        except OSError as exc:
            raise storage_error(exc, "writing the archive", where=out.parent) from exc
        finally:
            remove_quietly(tmp)


def _mkstemp_beside(out: Path) -> tuple[int, str]:
    if out.is_dir():
        raise InvalidArgument(f"{out.name!r} is a folder: give the archive's file name")
    try:
        return tempfile.mkstemp(prefix=f".{out.name[:100]}.", suffix=".partial", dir=out.parent)
    except FileNotFoundError as exc:
        raise NotFound(f"the folder for {out.name!r} does not exist") from exc
    except OSError as exc:
        raise storage_error(exc, "creating the archive", where=out.parent) from exc


def _write_archive(
    store: Store,
    f: BinaryIO,
    index: Index,
    manifest_data: bytes,
    manifest: Manifest,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> None:
    mtime = manifest.created_unix_ms // 1000
    total = sum(e.size for e in index.blobs)
    reporter = ThrottledProgress(progress, "exporting", total)
    done = 0
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, payload in ((INDEX_NAME, index.to_json()), (MANIFEST_NAME, manifest_data)):
            tar.addfile(_info(name, len(payload), mtime), io.BytesIO(payload))
        for entry in index.blobs:
            path = store.blob_path(entry.digest)
            try:
                blob = open(path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError as exc:
                raise FailedPrecondition(
                    f"model '{manifest.ref}' is incomplete: blob {entry.digest} is missing; "
                    "run `edged verify` and pull the model again"
                ) from exc
            with blob:
                if os.fstat(blob.fileno()).st_size != entry.size:
                    raise _damaged(manifest, entry.digest)
                reader = _HashingReader(blob, cancel)
                tar.addfile(
                    _info(f"{BLOBS_DIR}/{blob_name(entry.digest)}", entry.size, mtime), reader
                )
                if reader.digest() != entry.digest:
                    raise _damaged(manifest, entry.digest)
            done += entry.size
            reporter.update(done)
    reporter.done(done)


def _damaged(manifest: Manifest, digest: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"blob {digest} of model '{manifest.ref}' is damaged in the store; nothing was "
        "exported: run `edged verify --repair` and pull the model again"
    )


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.mtime = mtime
    info.type = tarfile.REGTYPE
    return info


class _HashingReader(io.RawIOBase):
    """A file wrapper that hashes what is read through it and checks ``cancel``."""

    def __init__(self, f: BinaryIO, cancel: threading.Event | None) -> None:
        super().__init__()
        self._f = f
        self._cancel = cancel
        self._hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("export cancelled")
        data = self._f.read(size)
        self._hasher.update(data)
        return data

    def digest(self) -> str:
        return "sha256:" + self._hasher.hexdigest()


# -- import -----------------------------------------------------------------------------


def import_archive(
    store: Store,
    archive: Path,
    *,
    name: str | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> tuple[ModelRef, Manifest]:
    """Check ``archive`` member by member and add its model to ``store`` (as ``name``
    when given, else under the name it was exported with, replacing a model of
    that name). Raises :class:`BadArchive` (INVALID_ARGUMENT) for any fault in
    the archive, and leaves the store as it was on any error."""
    try:
        f = open(archive, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError as exc:
        raise NotFound(f"no such archive {archive.name!r}") from exc
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot read {archive.name!r}: {exc.strerror or type(exc).__name__}"
        ) from exc
    with f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InvalidArgument(f"{archive.name!r} is not a regular file")
        with store.pinned():
            return _Import(store, f, name, progress, cancel).run()


class _Import:
    def __init__(
        self,
        store: Store,
        f: BinaryIO,
        name: str | None,
        progress: ProgressFn | None,
        cancel: threading.Event | None,
    ) -> None:
        self.store = store
        self.f = f
        self.name = name
        self.progress = progress
        self.cancel = cancel
        self.staged: dict[str, Path] = {}  # digest -> file in tmp/
        self.seen: set[str] = set()

    def run(self) -> tuple[ModelRef, Manifest]:
        installed: list[str] = []
        try:
            manifest = self._read()
            ref = self._target(manifest)
            for digest, path in sorted(self.staged.items()):
                if not self.store.has_blob(digest):
                    self.store.install_blob(path, digest)
                    installed.append(digest)
            written = self.store.update_manifest(
                ref, lambda _current: manifest, replace_corrupt=True
            )
            return ref, written
        except BaseException:
            for digest in installed:
                self.store.discard_blob(digest)
            raise
        finally:
            for path in self.staged.values():
                remove_quietly(path)

    def _target(self, manifest: Manifest) -> ModelRef:
        if self.name is None:
            return manifest.ref
        model, tag = split_model_ref(self.name)
        return ModelRef(model, tag if tag is not None else manifest.tag)

    def _read(self) -> Manifest:
        try:
            tar = tarfile.open(fileobj=self.f, mode="r|*")  # noqa: SIM115 - closed below
        except (tarfile.TarError, EOFError) as exc:
            raise BadArchive("not a tar archive (or an empty one)") from exc
        with tar:
            members = _members(tar)
            index = Index.from_json(_small(tar, next(members, None), INDEX_NAME, MAX_INDEX_BYTES))
            data = _small(tar, next(members, None), MANIFEST_NAME, MAX_MANIFEST_BYTES)
            manifest = _check_manifest(index, data)
            self._check_space(index)
            sizes = {e.digest: e.size for e in index.blobs}
            reporter = ThrottledProgress(self.progress, "importing", sum(sizes.values()))
            done = 0
            for member in members:
                digest = _blob_member(member, sizes, self.seen)
                self._blob(tar, member, digest)
                done += member.size
                reporter.update(done)
            missing = sorted(set(sizes) - self.seen)
            if missing:
                raise BadArchive(
                    f"the archive is truncated or incomplete: {len(missing)} of its "
                    f"{len(sizes)} blob(s) are missing (first: {missing[0]})"
                )
            reporter.done(done)
        return manifest

    def _blob(self, tar: tarfile.TarFile, member: tarfile.TarInfo, digest: str) -> None:
        fileobj = tar.extractfile(member)
        if fileobj is None:  # pragma: no cover - only regular members get here
            raise BadArchive(f"cannot read {_shown(member.name)}")
        chunks = _chunks(fileobj, member.size, member.name, self.cancel)
        if self.store.has_blob(digest) or digest in self.staged:
            _hash_only(chunks, digest, member.name)
            return
        try:
            path, _ = self.store.stage_blob(chunks, digest, prefix="import-", total=member.size)
        except DigestMismatch as exc:
            raise BadArchive(
                f"{_shown(member.name)} does not match its name (the archive is corrupt)"
            ) from exc
        self.staged[digest] = path

    def _check_space(self, index: Index) -> None:
        needed = sum(e.size for e in index.blobs if not self.store.has_blob(e.digest))
        free = free_bytes(self.store.tmp_dir)
        if free is not None and needed + DISK_MARGIN > free:
            raise DiskFull(
                "importing a model archive",
                where=self.store.tmp_dir,
                needed=needed + DISK_MARGIN - free,
            )


def _small(tar: tarfile.TarFile, member: tarfile.TarInfo | None, name: str, limit: int) -> bytes:
    """Read the small member ``name`` (the index, the manifest), which must come next."""
    if member is None:
        raise BadArchive(f"the archive is empty or truncated: {name} is missing")
    _check_member(member)
    if member.name != name:
        raise BadArchive(
            f"not an edged model archive: expected {name} next, found {_shown(member.name)}"
        )
    if member.size > limit:
        raise BadArchive(f"{name} is too large ({member.size} bytes, at most {limit})")
    with _reading(name):
        f = tar.extractfile(member)
        data = f.read(member.size + 1) if f is not None else b""
    if len(data) != member.size:
        raise BadArchive(f"the archive is truncated inside {name}")
    return data


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The archive's members; a truncated or malformed header becomes BadArchive."""
    while True:
        with _reading("the archive"):
            member = tar.next()
        if member is None:
            return
        yield member


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    try:
        yield
    except (tarfile.TarError, EOFError, ValueError) as exc:
        raise BadArchive(f"the archive is truncated or damaged (while reading {what})") from exc
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot read the archive: {exc.strerror or type(exc).__name__}"
        ) from exc


def _check_member(member: tarfile.TarInfo) -> None:
    """Refuse every kind of member that could write outside the store or be a link."""
    name = member.name
    shown = _shown(name)
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise BadArchive(f"the archive member {shown} has an absolute path")
    if ".." in re.split(r"[/\\]", name):
        raise BadArchive(f"the archive member {shown} points outside the archive ('..')")
    if member.issym() or member.islnk():
        raise BadArchive(f"the archive member {shown} is a link: links are not allowed")
    if member.ischr() or member.isblk() or member.isfifo():
        raise BadArchive(f"the archive member {shown} is a device or a pipe: not allowed")
    if member.isdir():
        if name.rstrip("/") != BLOBS_DIR:
            raise BadArchive(f"unexpected folder {shown} in the archive")
        return
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
        raise BadArchive(f"the archive member {shown} is not a regular file")
    if member.size < 0 or member.size > MAX_BLOB_BYTES:
        raise BadArchive(f"the archive member {shown} has an impossible size")


def _blob_member(member: tarfile.TarInfo, sizes: dict[str, int], seen: set[str]) -> str:
    _check_member(member)
    match = _BLOB_MEMBER.fullmatch(member.name)
    if match is None:
        raise BadArchive(
            f"unexpected member {_shown(member.name)} in the archive "
            f"(only {INDEX_NAME}, {MANIFEST_NAME} and {BLOBS_DIR}/sha256-<hex> belong there)"
        )
    digest = parse_digest(match.group(1))
    if digest not in sizes:
        raise BadArchive(f"{_shown(member.name)} is not listed in {INDEX_NAME}")
    if digest in seen:
        raise BadArchive(f"{_shown(member.name)} appears twice in the archive")
    if member.size != sizes[digest]:
        raise BadArchive(
            f"{_shown(member.name)} has {member.size} bytes but {INDEX_NAME} says {sizes[digest]}"
        )
    seen.add(digest)
    return digest


def _check_manifest(index: Index, data: bytes) -> Manifest:
    if hashlib.sha256(data).hexdigest() != index.manifest_sha256:
        raise BadArchive(f"{MANIFEST_NAME} does not match the digest in {INDEX_NAME}")
    try:
        manifest = Manifest.from_json(data)
    except EdgedError as exc:
        raise BadArchive(f"the archive's {MANIFEST_NAME} is invalid: {exc}") from exc
    listed = {e.digest: e.size for e in index.blobs}
    if {f.digest: f.size for f in manifest.files} != listed:
        raise BadArchive(f"{INDEX_NAME} and {MANIFEST_NAME} list different files")
    return manifest


def _chunks(f: IO[bytes], size: int, name: str, cancel: threading.Event | None) -> Iterator[bytes]:
    left = size
    while left > 0:
        if cancel is not None and cancel.is_set():
            raise Cancelled("import cancelled")
        with _reading(_shown(name)):
            chunk = f.read(min(CHUNK_SIZE, left))
        if not chunk:
            raise BadArchive(f"the archive is truncated inside {_shown(name)}")
        left -= len(chunk)
        yield chunk


def _hash_only(chunks: Iterator[bytes], digest: str, name: str) -> None:
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(chunk)
    if "sha256:" + hasher.hexdigest() != digest:
        raise BadArchive(f"{_shown(name)} does not match its name (the archive is corrupt)")


def _shown(name: str, limit: int = 120) -> str:
    text = name if len(name) <= limit else name[:limit] + "..."
    return repr(text)
