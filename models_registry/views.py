"""Folder views: a variant's files as a read-only folder of symlinks to the blobs.

A backend that loads a folder (ONNX Runtime GenAI reads genai_config.json and the
files it names) gets ``views/<hex of the variant's digest>/`` with one relative
symlink per file, named by the file's path in the variant. The folder is built in
``tmp/`` and renamed into place, so a view is either complete or absent; it is
shared by every model whose variant has the same files.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .fsutil import fsync_dir, remove_tree


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
