"""Pull a model into the store from a catalog name, a URL or a local file."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from edged.daemon.errors import (
    InvalidArgument,
    ModelNotFound,
    NotFound,
)

from . import catalog, http_source
from .digest import parse_digest
from .gguf import GGUFInfo, read_gguf_info
from .manifest import ROLE_MODEL, Manifest, ManifestFile
from .names import DEFAULT_TAG, ModelRef, sanitize_name, split_model_ref
from .progress import ProgressFn, PullProgress, report
from .store import Store

__all__ = ["PullProgress", "pull"]

_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_PRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]")


@dataclass(frozen=True)
class _Plan:
    ref: ModelRef
    source: str  # recorded in the manifest
    filename: str  # display only: never used as a path
    fetch: Callable[[], str]  # puts the blob into the store, returns its digest
    system_prompt: str = ""
    sampling: tuple[tuple[str, float], ...] = ()


def pull(
    store: Store,
    source: str,
    *,
    name: str | None = None,
    digest: str | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> tuple[ModelRef, Manifest]:
    """Fetch ``source`` into ``store``, check it, and write its manifest.

    ``source`` is a catalog name (``smollm2``, ``smollm2:135m-q4_1``), an http(s)
    URL, or an absolute path to a local GGUF file. ``name`` (``name[:tag]``)
    overrides the model name; ``digest`` is the expected sha256 of the file.
    If the file is not a sound GGUF model the store is left as it was.
    Completion is the return value: no final "success" progress is reported.
    """
    if not isinstance(source, str) or not source.strip():
        raise InvalidArgument("nothing to pull: give a model name, a URL or a file path")
    expected = parse_digest(digest) if digest is not None else None
    plan = _plan(store, source.strip(), name, expected, progress, cancel)
    with store.pinned():
        before = set(store.blob_digests())
        blob = plan.fetch()
        try:
            manifest = _register(store, plan, blob, progress)
        except BaseException:
            if blob not in before:
                store.discard_blob(blob)
            raise
    return plan.ref, manifest


def _register(store: Store, plan: _Plan, blob: str, progress: ProgressFn | None) -> Manifest:
    report(progress, "reading the GGUF header")
    info = read_gguf_info(store.blob_path(blob))
    manifest = _manifest(plan, blob, store.blob_path(blob).stat().st_size, info)
    report(progress, "writing manifest")
    store.put_manifest(plan.ref, manifest)
    return manifest


def _manifest(plan: _Plan, blob: str, size: int, info: GGUFInfo) -> Manifest:
    return Manifest(
        name=plan.ref.name,
        tag=plan.ref.tag,
        format="gguf",
        files=(ManifestFile(ROLE_MODEL, blob, size, plan.filename),),
        source=plan.source,
        created_unix_ms=time.time_ns() // 1_000_000,
        architecture=info.architecture,
        quantization=info.quantization,
        parameters=info.parameters,
        context_length=info.context_length,
        has_chat_template=bool(info.chat_template),
        system_prompt=plan.system_prompt,
        sampling=plan.sampling,
    )


def _plan(
    store: Store,
    source: str,
    name: str | None,
    expected: str | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> _Plan:
    if _URL_SCHEME.match(source):
        return _url_plan(store, source, name, expected, progress, cancel)
    if _looks_like_path(source):
        return _file_plan(store, source, name, expected, progress, cancel)
    return _catalog_plan(store, source, name, expected, progress, cancel)


def _url_plan(
    store: Store,
    url: str,
    name: str | None,
    expected: str | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> _Plan:
    parsed = http_source.check_url(url)
    filename = _display_name(unquote(PurePosixPath(parsed.path).name)) or "model.gguf"
    return _Plan(
        ref=_target(name, sanitize_name(filename), DEFAULT_TAG),
        source=str(parsed.copy_with(query=None, fragment=None, username=None, password=None)),
        filename=filename,
        fetch=lambda: http_source.download(store, url, expected, progress=progress, cancel=cancel),
    )


def _file_plan(
    store: Store,
    source: str,
    name: str | None,
    expected: str | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> _Plan:
    path = Path(source)
    shown = _display_name(path.name) or source[:80]
    if not path.is_absolute():
        raise InvalidArgument(
            f"{source[:200]!r} is a relative path: give the absolute path of the model file"
        )
    if not path.exists():
        raise NotFound(f"no such file {shown!r}")
    if path.is_dir():
        raise InvalidArgument(f"{shown!r} is a directory: give the path of a .gguf file")
    return _Plan(
        ref=_target(name, sanitize_name(shown), DEFAULT_TAG),
        source=f"file:{shown}",
        filename=shown,
        fetch=lambda: store.import_file(path, expected, progress=progress, cancel=cancel),
    )


def _catalog_plan(
    store: Store,
    source: str,
    name: str | None,
    expected: str | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> _Plan:
    model, tag = split_model_ref(source)
    entry = catalog.find(model, tag)
    if entry is None:
        known = ", ".join(catalog.known_names())
        raise ModelNotFound(
            f"unknown model '{source}': not in the catalog (known: {known}); "
            "pull a URL or a file path instead"
        )
    if expected is not None and expected != parse_digest(entry.digest):
        raise InvalidArgument(
            f"the digest given does not match the catalog's digest for {entry.ref} ({entry.digest})"
        )
    return _Plan(
        ref=_target(name, entry.name, entry.tag),
        source=entry.source,
        filename=entry.filename,
        fetch=lambda: catalog.fetch(store, entry, progress=progress, cancel=cancel),
        system_prompt=entry.system_prompt,
        sampling=entry.sampling,
    )


def _target(name: str | None, default_name: str, default_tag: str) -> ModelRef:
    if name is None:
        return ModelRef(default_name, default_tag)
    model, tag = split_model_ref(name)
    return ModelRef(model, tag if tag is not None else default_tag)


def _looks_like_path(source: str) -> bool:
    return (
        os.path.isabs(source)
        or source.startswith(("./", "../", "~", ".\\"))
        or source in (".", "..")
        or "\\" in source
        or source.lower().endswith(".gguf")
    )


def _display_name(raw: str) -> str:
    """A file name fit for display: no directories, no control characters, bounded."""
    return _PRINTABLE.sub("?", raw.replace("/", "_").replace("\\", "_"))[:255]
