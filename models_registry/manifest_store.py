"""Manifests on disk: ``manifests/<name parts>/<tag>.json``, one per model tag.

What a manifest says (its variants and files) is the Manifest type in manifest.py;
this module keeps manifests in the store. A manifest is written in ``tmp/``,
fsynced and renamed into place, then its directory is fsynced, and only when
every blob it names is stored, so a manifest never names a missing or
half-written blob. Every change (a pull, a new variant, a delete) holds that
model's lock (``locks/manifest-<key>.lock``), so two changes never lose each
other's work.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from edged.common.errors import (
    AlreadyExists,
    EdgedError,
    FailedPrecondition,
    InvalidArgument,
    ModelNotFound,
    NotFound,
)

from . import locks
from .digest import new_hasher
from .fsutil import atomic_write, fsync_dir, storage_error
from .manifest import MAX_MANIFEST_BYTES, CorruptManifest, Manifest, Variant
from .names import ModelRef, split_model_ref, validate_name, validate_tag

if TYPE_CHECKING:
    from .cleanup import GcReport

log = logging.getLogger(__name__)


class ManifestsMixin:
    """The manifest part of :class:`~edged.models_registry.store.Store`."""

    manifests_dir: Path
    tmp_dir: Path
    locks_dir: Path

    if TYPE_CHECKING:  # provided by Store (store.py), blobs.py and cleanup.py

        def pinned(self) -> AbstractContextManager[None]: ...

        def has_blob(self, digest: str) -> bool: ...

        def _collect(
            self,
            *,
            grace_s: float | None,
            dry_run: bool,
            now: float | None,
            freed: frozenset[str],
        ) -> GcReport: ...

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

    def copy(
        self,
        source: ModelRef,
        destination: ModelRef,
        *,
        replace: bool = False,
        edit: Callable[[Manifest], Manifest] | None = None,
    ) -> tuple[Manifest, Manifest | None]:
        """Store the model ``source`` under ``destination`` too (Ollama's ``cp``).

        Blobs are content-addressed, so nothing is copied: the new manifest names
        the same blobs, written atomically under the destination's lock while the
        store is pinned (the source's blobs cannot be collected meanwhile). A
        destination holding the same model is rewritten as is; one holding a
        different model is AlreadyExists unless ``replace`` (then its blobs that
        no model uses any more are freed). Copying a model onto itself does
        nothing. ``edit`` changes the copy's defaults (``edged create``): a
        destination with the same files then takes the new defaults, even when it
        is the source itself. Returns (the destination's manifest, the manifest it
        replaced or None).
        """
        replaced: list[Manifest] = []
        with self.pinned():
            original = self.get_manifest(source)
            if source == destination and edit is None:
                return original, None

            def change(current: Manifest | None) -> Manifest:
                if current is not None and not _same_files(current, original):
                    if not replace:
                        raise AlreadyExists(
                            f"model '{destination}' already exists and is a different model; "
                            f"remove it first (`edged rm {destination}`)"
                        )
                    replaced.append(current)
                copied = dataclasses.replace(
                    original,
                    name=destination.name,
                    tag=destination.tag,
                    created_unix_ms=int(time.time() * 1000),
                )
                return copied if edit is None else edit(copied)

            written = self.update_manifest(destination, change, replace_corrupt=replace)
        old = replaced[0] if replaced else None
        if old is not None:
            freed = frozenset(old.digests - written.digests)
            self._collect(grace_s=None, dry_run=False, now=None, freed=freed)
        return written, old

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
        exactly one tag, that tag is used; with several, the catalog's default tag
        for ``name`` when it is one of them (``gemma3`` is ``gemma3:270m``).
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
        from . import catalog  # here: the catalog's fetch code imports the store

        entry = catalog.find(model, None)
        if entry is not None and entry.tag in tags:
            ref = ModelRef(model, entry.tag)
            return ref, self.get_manifest(ref)
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


def _tag_of(path: Path) -> str | None:
    if path.suffix != ".json" or not path.is_file():
        return None
    try:
        return validate_tag(path.stem)
    except InvalidArgument:
        return None


def _same_files(a: Manifest, b: Manifest) -> bool:
    """Whether two manifests describe the same model files (whatever their names,
    dates and defaults)."""

    def blank(m: Manifest) -> Manifest:
        return dataclasses.replace(
            m, name="", tag="", created_unix_ms=0, system_prompt="", sampling=(), stop=()
        )

    return blank(a) == blank(b)


def _sha256_hex(data: bytes) -> str:
    hasher = new_hasher()
    hasher.update(data)
    return hasher.hexdigest()
