"""Pull an ONNX Runtime GenAI model folder from an http(s) URL base ("…/folder/").

genai_config.json is fetched from the base first; then every file it names
(required), their ``.data`` external-data files and the tokenizer files
(optional: a 404 skips them). Each file goes through http_source's download
machinery straight into a blob; the names are checked with relpath before any
is fetched, and the variant passes the same checks as a local folder import
(the file list with relpath, genai_config.json with folder.onnx_facts).
"""

from __future__ import annotations

import dataclasses
import threading

import httpx

from edged.common.errors import Cancelled, InvalidArgument, NotFound
from edged.common.onnx_folder import GENAI_CONFIG, MAX_CONFIG_BYTES, optional_files, parse_config

from . import folder, http_source
from .hub_source import named_files
from .manifest import ROLE_FILE, ROLE_MODEL, ManifestFile
from .progress import ProgressFn, report
from .relpath import validate_variant_paths
from .store import Store


def is_folder_url(source: str) -> bool:
    """An http(s) URL whose path ends in "/"."""
    try:
        parsed = httpx.URL(source)
    except (httpx.InvalidURL, TypeError):
        return False
    return parsed.scheme in ("http", "https") and parsed.path.endswith("/")


def base_url(source: str) -> httpx.URL:
    parsed = http_source.check_url(source)
    if not parsed.path.endswith("/"):
        raise InvalidArgument(f"{source[:200]!r} is not a folder URL: it must end in '/'")
    return parsed.copy_with(query=None, fragment=None)


def fetch(
    store: Store,
    source: str,
    *,
    written: list[str],
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    options: http_source.HttpOptions | None = None,
) -> tuple[ManifestFile, ...]:
    """Download the folder's files into blobs; return the variant's file list."""
    base = str(base_url(source))
    shown = str(base_url(source).copy_with(username=None, password=None))
    opts = options or http_source.HttpOptions()
    opts = dataclasses.replace(opts, max_size=min(opts.max_size, folder.MAX_FILE_BYTES))

    def get(rel: str, *, required: bool) -> ManifestFile | None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("pull cancelled")
        report(progress, f"downloading {rel}")
        try:
            digest = http_source.download(
                store, base + rel, progress=progress, cancel=cancel, options=opts
            )
        except NotFound as exc:
            if not required:
                return None
            if rel == GENAI_CONFIG:
                raise NotFound(
                    f"{shown} has no {GENAI_CONFIG}: not an ONNX Runtime GenAI model folder"
                ) from exc
            raise NotFound(
                f"{shown} has no {rel!r}, which {GENAI_CONFIG} names: "
                "the model folder is incomplete"
            ) from exc
        written.append(digest)
        size = store.blob_path(digest).stat().st_size
        role = ROLE_MODEL if rel == GENAI_CONFIG else ROLE_FILE
        return ManifestFile(role, digest, size, rel)

    config_file = get(GENAI_CONFIG, required=True)
    assert config_file is not None
    if config_file.size > MAX_CONFIG_BYTES:
        raise InvalidArgument(f"{GENAI_CONFIG} is larger than {MAX_CONFIG_BYTES} bytes")
    config = parse_config(store.blob_path(config_file.digest).read_bytes())
    named = [n for n in named_files(config) if n != GENAI_CONFIG]
    optional = [n for n in optional_files(named) if n not in named and n != GENAI_CONFIG]
    validate_variant_paths([GENAI_CONFIG, *named, *optional])
    if len(named) + len(optional) + 1 > folder.MAX_FILES:
        raise InvalidArgument(f"{GENAI_CONFIG} names more than {folder.MAX_FILES} files")
    files = [config_file]
    for rel in named:
        got = get(rel, required=True)
        assert got is not None
        files.append(got)
    for rel in optional:
        got = get(rel, required=False)
        if got is not None:
            files.append(got)
    return tuple(files)
