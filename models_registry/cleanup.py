"""Garbage collection of the store, and the cleanup of stale temp and partial files.

:meth:`CleanupMixin.collect` removes blobs and views no manifest references and
stale ``tmp/`` and ``partial/`` files. It never runs while any pull holds the
store "pinned" (a shared lock on ``locks/gc.lock``; collection takes it
exclusively, see store.py), never runs while a manifest cannot be read (its
blobs would look unreferenced), never removes a partial download whose lock is
held, and keeps unreferenced blobs and temp/partial files younger than a grace
period (by mtime), so a pull killed between storing a file and writing its
manifest reuses the file when run again. Deleting a model (manifest_store.py)
frees its own blobs at once, and :meth:`CleanupMixin.discard_blob` removes one
unreferenced blob at once (a failed pull's or conversion's).
"""

from __future__ import annotations

import logging
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import views
from .digest import hex_of, parse_digest
from .fsutil import fsync_dir, remove_quietly, remove_tree

if TYPE_CHECKING:
    from .manifest import Manifest

log = logging.getLogger(__name__)

GC_GRACE_SECONDS = 3600.0
_VIEW_NAME = re.compile(r"[0-9a-f]{64}")


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


class CleanupMixin:
    """The garbage collection part of :class:`~edged.models_registry.store.Store`."""

    gc_grace_s: float
    blobs_dir: Path
    tmp_dir: Path
    partial_dir: Path
    views_dir: Path

    if TYPE_CHECKING:  # provided by Store (store.py), blobs.py and manifest_store.py

        def exclusive(
            self, *, wait: bool = False, on_wait: Callable[[], None] | None = None
        ) -> AbstractContextManager[bool]: ...

        def download_lock_free(self, key: str) -> AbstractContextManager[bool]: ...

        def blob_path(self, digest: str) -> Path: ...

        def blob_digests(self) -> list[str]: ...

        def _all_manifests(self) -> list[Manifest] | None: ...

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

    @contextmanager
    def undo_new_blobs(self) -> Iterator[list[str]]:
        """Yield a list the caller appends each blob digest it stores to; if the
        block fails, those that were not in the store before it began (and that
        no manifest uses) are removed again. Hold the store pinned meanwhile."""
        before = set(self.blob_digests())
        written: list[str] = []
        try:
            yield written
        except BaseException:
            for digest in dict.fromkeys(written):
                if digest not in before:
                    self.discard_blob(digest)
            raise

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
