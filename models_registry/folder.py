"""Import a local ONNX Runtime GenAI model folder (genai_config.json, model.onnx,
its external data, tokenizer files, ...) into the store as one variant.

The folder is hostile input. It is scanned first, without following symlinks:
every regular file must have a valid relative path (see relpath), symlinks must
point to a regular file inside the folder, and the number and size of the files
are bounded; hidden entries (``.git``, ``.cache``, ``.gitattributes``) are
skipped. Only then is each file copied into a blob, hashed while copying and
checked to be the file that was scanned. genai_config.json must be at the top
and may only name files of the folder.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from edged.common.errors import (
    Cancelled,
    EdgedError,
    FailedPrecondition,
    InvalidArgument,
    InvalidModelFile,
)
from edged.common.jsonfile import parse_json_object, positive_int, short_str
from edged.common.onnx_folder import (
    CHAT_TEMPLATE,
    GENAI_CONFIG,
    MAX_CONFIG_BYTES,
    MAX_TOKENIZER_CONFIG_BYTES,
    TOKENIZER_CONFIG,
    has_chat_template,
    named_files,
)

from .manifest import ROLE_FILE, ROLE_MODEL, ManifestFile
from .progress import ProgressFn, PullProgress
from .relpath import MAX_DEPTH, validate_relative_path, validate_variant_paths
from .store import Store

MAX_FILES = 256
MAX_FILE_BYTES = 64 << 30
CHUNK_SIZE = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


@dataclass(frozen=True)
class FolderEntry:
    rel: str  # the file's path inside the variant
    path: Path  # what to read: the file, or the file a symlink inside the folder points to
    size: int
    identity: tuple[int, int]  # (st_dev, st_ino) at scan time


@dataclass(frozen=True)
class OnnxFacts:
    """What a pull records about an ONNX model, read from its genai_config.json."""

    architecture: str
    context_length: int
    has_chat_template: bool


def import_folder(
    store: Store,
    folder: Path,
    *,
    written: list[str],
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    status: str = "importing",
) -> tuple[ManifestFile, ...]:
    """Copy every file of ``folder`` into blobs; return the variant's file list.

    Each stored digest is appended to ``written`` as soon as it is stored, so the
    caller can remove what this import added when a later step fails.
    """
    entries = scan_folder(folder)
    return import_entries(
        store,
        entries,
        GENAI_CONFIG,
        written=written,
        progress=progress,
        cancel=cancel,
        status=status,
    )


def import_entries(
    store: Store,
    entries: list[FolderEntry],
    main: str,
    *,
    written: list[str],
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    status: str = "importing",
) -> tuple[ManifestFile, ...]:
    """Copy scanned files (scan_folder) into blobs; ``main`` gets the role "model"."""
    total = sum(e.size for e in entries)
    files: list[ManifestFile] = []
    done = 0
    for e in entries:
        if cancel is not None and cancel.is_set():
            raise Cancelled("pull cancelled")
        digest = _copy(store, e, _offset(progress, done, total), cancel, total, status)
        written.append(digest)
        size = store.blob_path(digest).stat().st_size
        role = ROLE_MODEL if e.rel == main else ROLE_FILE
        files.append(ManifestFile(role, digest, size, e.rel))
        done += size
    return tuple(files)


def scan_folder(folder: Path, main: str = GENAI_CONFIG) -> list[FolderEntry]:
    """Every file to import, checked; raises before anything is copied."""
    try:
        root = folder.resolve(strict=True)
    except OSError as exc:
        raise InvalidArgument(f"cannot read the folder {folder.name!r}") from exc
    entries: list[FolderEntry] = []
    _scan(root, root, "", entries, 0)
    validate_variant_paths(e.rel for e in entries)
    if not any(e.rel == main for e in entries):
        kind = "an ONNX Runtime GenAI" if main == GENAI_CONFIG else "a"
        raise InvalidArgument(f"{folder.name!r} is not {kind} model folder: it has no {main}")
    return entries


def _scan(root: Path, directory: Path, prefix: str, out: list[FolderEntry], depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise InvalidArgument(f"the model folder is nested more than {MAX_DEPTH} levels deep")
    try:
        with os.scandir(directory) as it:
            children = sorted(it, key=lambda d: d.name)
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read the folder {prefix or '.'!r}: {exc.strerror or exc}"
        ) from exc
    for child in children:
        if child.name.startswith("."):
            continue
        rel = prefix + child.name
        _check_name(rel)
        if child.is_symlink():
            out.append(_symlinked(root, child, rel))
        elif child.is_dir(follow_symlinks=False):
            _scan(root, Path(child.path), rel + "/", out, depth + 1)
            continue
        elif child.is_file(follow_symlinks=False):
            st = child.stat(follow_symlinks=False)
            out.append(_entry(rel, Path(child.path), st))
        else:
            raise InvalidArgument(f"cannot import {rel!r}: it is not a regular file")
        if len(out) > MAX_FILES:
            raise InvalidArgument(f"the model folder has more than {MAX_FILES} files")


def _symlinked(root: Path, child: os.DirEntry[str], rel: str) -> FolderEntry:
    target = Path(os.path.realpath(child.path))
    if target != root and root not in target.parents:
        raise InvalidArgument(f"cannot import {rel!r}: it is a symlink to outside the folder")
    try:
        st = os.stat(target, follow_symlinks=False)
    except OSError as exc:
        raise InvalidArgument(f"cannot import {rel!r}: it is a broken symlink") from exc
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(
            f"cannot import {rel!r}: it is a symlink that does not lead to a regular file"
        )
    return _entry(rel, target, st)


def _entry(rel: str, path: Path, st: os.stat_result) -> FolderEntry:
    if st.st_size > MAX_FILE_BYTES:
        raise InvalidArgument(
            f"cannot import {rel!r}: it is larger than {MAX_FILE_BYTES >> 30} GiB"
        )
    return FolderEntry(rel, path, st.st_size, (st.st_dev, st.st_ino))


def _check_name(rel: str) -> None:
    try:
        validate_relative_path(rel)
    except InvalidArgument as exc:
        raise InvalidArgument(f"cannot import the folder: {exc}") from exc


def _copy(
    store: Store,
    e: FolderEntry,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    total: int,
    status: str,
) -> str:
    try:
        fd = os.open(e.path, _OPEN_FLAGS)
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot read {e.rel!r}: {exc.strerror or type(exc).__name__}"
        ) from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != e.identity:
            raise InvalidArgument(f"cannot import {e.rel!r}: it changed while importing")
        return store.write_blob(
            _bounded(f, e.rel),
            progress=progress,
            cancel=cancel,
            total=total,
            status=status,
            reuse=False,
        )


def _bounded(f: BinaryIO, rel: str) -> Iterator[bytes]:
    done = 0
    while chunk := f.read(CHUNK_SIZE):
        done += len(chunk)
        if done > MAX_FILE_BYTES:
            raise InvalidArgument(
                f"cannot import {rel!r}: it is larger than {MAX_FILE_BYTES >> 30} GiB"
            )
        yield chunk


def _offset(progress: ProgressFn | None, done: int, total: int) -> ProgressFn | None:
    if progress is None:
        return None
    report = progress

    def forward(p: PullProgress) -> None:
        report(PullProgress(p.status, done + p.completed, total))

    return forward


# -- genai_config.json --------------------------------------------------------------------


def onnx_facts(store: Store, files: tuple[ManifestFile, ...]) -> OnnxFacts:
    """Read genai_config.json; check that every file it names is in ``files``."""
    by_path = {f.path: f for f in files}
    config = _read_json(store, by_path[GENAI_CONFIG], MAX_CONFIG_BYTES)
    model = config.get("model")
    if not isinstance(model, dict):
        raise InvalidModelFile(f"{GENAI_CONFIG} has no 'model' section")
    for name in named_files(config):
        try:
            validate_relative_path(name)
        except EdgedError as exc:
            raise InvalidModelFile(f"{GENAI_CONFIG} names a bad file: {exc}") from exc
        if name not in by_path:
            raise InvalidModelFile(f"{GENAI_CONFIG} names {name!r}, which is not in the folder")
    return OnnxFacts(
        architecture=short_str(model.get("type")),
        context_length=positive_int(model.get("context_length")),
        has_chat_template=CHAT_TEMPLATE in by_path or _tokenizer_has_template(store, by_path),
    )


def _read_json(store: Store, f: ManifestFile, limit: int) -> dict[str, Any]:
    if f.size > limit:
        raise InvalidModelFile(f"{f.path} is larger than {limit} bytes")
    return parse_json_object(store.blob_path(f.digest).read_bytes(), f.path, limit)


def _tokenizer_has_template(store: Store, by_path: dict[str, ManifestFile]) -> bool:
    f = by_path.get(TOKENIZER_CONFIG)
    if f is None or f.size > MAX_TOKENIZER_CONFIG_BYTES:
        return False
    try:
        return has_chat_template(_read_json(store, f, MAX_TOKENIZER_CONFIG_BYTES))
    except InvalidModelFile:
        return False
