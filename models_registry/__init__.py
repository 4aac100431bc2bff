"""edged's model registry: a content-addressed store, manifests, pull sources and
a GGUF header reader.

The public API::

    store = Store(root)
    ref, manifest = pull(store, "smollm2", progress=print)
    ref, manifest = store.resolve("smollm2")
    path = store.blob_path(manifest.primary.digest)
"""

from __future__ import annotations

from .catalog import CATALOG, CatalogEntry
from .digest import blob_name, parse_digest
from .gguf import GGUFInfo, TensorInfo, read_gguf_info
from .http_source import DownloadState, HttpOptions
from .manifest import CorruptManifest, Manifest, ManifestFile
from .names import ModelRef, parse_model_ref
from .progress import ProgressFn, PullProgress
from .pull import pull
from .store import Store

__all__ = [
    "CATALOG",
    "CatalogEntry",
    "CorruptManifest",
    "DownloadState",
    "GGUFInfo",
    "HttpOptions",
    "Manifest",
    "ManifestFile",
    "ModelRef",
    "ProgressFn",
    "PullProgress",
    "Store",
    "TensorInfo",
    "blob_name",
    "parse_digest",
    "parse_model_ref",
    "pull",
    "read_gguf_info",
]
