"""Folder views: a variant's files as a read-only folder of symlinks to the blobs.

A backend that loads a folder (ONNX Runtime GenAI reads genai_config.json and the
files it names) gets ``views/<hex of the variant's digest>/`` with one relative
symlink per file, named by the file's path in the variant. The folder is built in
``tmp/`` and renamed into place, so a view is either complete or absent; it is
shared by every model whose variant has the same files.

:meth:`ViewsMixin.materialize` is where a backend finds a variant: the blob of a
single GGUF file, or the view of a folder format. Views no manifest references
are removed by garbage collection (cleanup.py).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from edged.common.errors import FailedPrecondition, InvalidArgument
from edged.common.model_facts import FORMAT_GGUF

from .digest import hex_of
from .fsutil import fsync_dir, remove_tree, storage_error
from .manifest import Manifest, Variant


class ViewsMixin:
    """The folder-view part of :class:`~edged.models_registry.store.Store`."""

    views_dir: Path
    tmp_dir: Path

    if TYPE_CHECKING:  # provided by Store (store.py) and blobs.py

        def pinned(self) -> AbstractContextManager[None]: ...

        def has_blob(self, digest: str) -> bool: ...

        def blob_path(self, digest: str) -> Path: ...

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
                return ensure_view(final, self.tmp_dir, links)
            except OSError as exc:
                raise storage_error(exc, f"making the folder view of '{manifest.ref}'") from exc


def ensure_view(final: Path, tmp_dir: Path, links: Iterable[tuple[str, Path]]) -> Path:
    """Make ``final`` a folder of symlinks ``path -> blob`` unless it already is one.

    ``links`` pairs each validated relative path with its blob's absolute path.
    """
    if final.is_dir() and not final.is_symlink():
        return final
    work = Path(tempfile.mkdtemp(prefix="view-", dir=tmp_dir))
    try:
        folders = {work}
        for rel, blob in links:
            parts = rel.split("/")
            link = work.joinpath(*parts)
            link.parent.mkdir(parents=True, exist_ok=True)
            folders.update(p for p in link.parents if work in p.parents or p == work)
            # Relative to where the link will live, so the store can be moved.
            os.symlink(os.path.relpath(blob, final.joinpath(*parts[:-1])), link)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            os.chmod(folder, 0o555)
        try:
            os.rename(work, final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
                raise
            return final  # another process made the same view meanwhile
        fsync_dir(final.parent)
        return final
    finally:
        remove_tree(work)


def remove_view(view: Path, tmp_dir: Path) -> None:
    """Take a view out of ``views/`` in one rename, then delete it."""
    trash = Path(tempfile.mkdtemp(prefix="gc-view-", dir=tmp_dir))
    moved = trash / "view"
    os.rename(view, moved)
    fsync_dir(view.parent)
    remove_tree(trash)
