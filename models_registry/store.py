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

:class:`Store` is put together from one part per concern, each in its module:

    store.py           the layout of ``root``, the pins and locks (``pinned``,
                       ``exclusive``, ``download_lock_free``), and the Store class
    blobs.py           blobs: writing, staging, importing, installing, verifying
    manifest_store.py  manifests on disk: reading, writing and changing them under
                       the model's lock, listing, resolving names, deleting a model
    views.py           folder views (``materialize``)
    cleanup.py         garbage collection (``gc``, ``collect``, ``discard_blob``,
                       :class:`GcReport`) and stale ``tmp/`` and ``partial/`` files

The Manifest data type itself (what a manifest says) is in manifest.py.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from . import locks
from .blobs import BlobsMixin
from .cleanup import GC_GRACE_SECONDS, CleanupMixin
from .cleanup import GcReport as GcReport  # re-exported: what Store.collect returns
from .fsutil import DiskFull, storage_error
from .manifest_store import ManifestsMixin
from .views import ViewsMixin

_LOCK_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")


class Store(BlobsMixin, ManifestsMixin, ViewsMixin, CleanupMixin):
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

    # -- pins and locks -------------------------------------------------------------

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

    @contextmanager
    def download_lock_free(self, key: str) -> Iterator[bool]:
        """Hold ``locks/<key>.lock`` (a download's lock) if nobody does; yield whether
        it was free. A download that starts meanwhile waits until the block ends."""
        if not _LOCK_KEY.fullmatch(key):
            yield True  # no download names its lock like this
            return
        with locks.try_locked(self.locks_dir / f"{key}.lock", ephemeral=True) as taken:
            yield taken
