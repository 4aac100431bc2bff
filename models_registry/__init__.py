"""edged's model registry: a content-addressed store, manifests with variants (the
same model as GGUF, as ONNX, ...), pull sources, a GGUF header reader and GGUF to
ONNX conversion.

The public API::

    store = Store(root)
    ref, manifest = pull(store, "smollm2", progress=print)
    ref, manifest = store.resolve("smollm2")
    path = store.blob_path(manifest.primary.digest)
    variant = manifest.variant("onnx")            # or None
    folder = store.materialize(manifest, variant)  # a GGUF file, or a folder view
    ref, manifest = convert_to_onnx(store, "smollm2", progress=print)  # needs edged[convert]
"""

from __future__ import annotations

from edged.common.gguf import GGUFInfo, TensorInfo, read_gguf_info

from .catalog import CatalogEntry
from .convert import convert_to_onnx
from .digest import blob_name, parse_digest
from .http_source import DownloadState, HttpOptions
from .manifest import CorruptManifest, Manifest, ManifestFile, Variant
from .names import ModelRef, parse_model_ref
from .progress import ProgressFn, PullProgress
from .pull import pull
from .store import Store

__all__ = [
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
    "Variant",
    "blob_name",
    "convert_to_onnx",
    "parse_digest",
    "parse_model_ref",
    "pull",
    "read_gguf_info",
]
