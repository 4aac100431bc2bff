"""A GGUF header reader that is safe on hostile input.

It reads the header, every metadata pair and every tensor description with
``struct`` from a buffered file, checks each declared length against the bytes
that remain before reading or skipping it, and finally checks that every
tensor's data lies inside the file (which catches truncated downloads). Any
problem raises :class:`InvalidModelHeader` (an InvalidModelFile that maps to
INVALID_ARGUMENT); nothing is allocated from a length that has not been
checked. tests/unit/registry/test_fuzz_gguf.py and scripts/fuzz_gguf.py fuzz it.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from edged.common.errors import InvalidModelHeader, NotFound

from .ggml_types import FILE_TYPES, GGML_TYPES

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME - 1
MAX_KEY_LENGTH = 65535
MAX_STRING_LENGTH = 64 << 20
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 20
MAX_ARRAY_DEPTH = 4
MAX_ALIGNMENT = 1 << 20
METADATA_VALUE_LIMIT = 1024
_INT64_MAX = (1 << 63) - 1

# GGUF value types.
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL = range(8)
_STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(8, 13)
_SCALARS: dict[int, struct.Struct] = {
    _UINT8: struct.Struct("<B"),
    _INT8: struct.Struct("<b"),
    _UINT16: struct.Struct("<H"),
    _INT16: struct.Struct("<h"),
    _UINT32: struct.Struct("<I"),
    _INT32: struct.Struct("<i"),
    _FLOAT32: struct.Struct("<f"),
    _BOOL: struct.Struct("<B"),
    _UINT64: struct.Struct("<Q"),
    _INT64: struct.Struct("<q"),
    _FLOAT64: struct.Struct("<d"),
}
_INTEGER_TYPES = frozenset({_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _UINT64, _INT64})
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset

Scalar = int | float | bool | str


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]
    ggml_type: str
    offset: int
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GGUFInfo:
    version: int
    architecture: str
    name: str
    quantization: str
    parameters: int
    context_length: int
    chat_template: str
    metadata: dict[str, str]
    tensor_count: int
    data_offset: int
    file_size: int
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False, compare=False)


def read_gguf_info(path: Path) -> GGUFInfo:
    """Read and check a GGUF file's header; raise InvalidModelHeader if it is not sound."""
    try:
        with open(path, "rb", buffering=1 << 16) as f:
            size = os.fstat(f.fileno()).st_size
            return _parse(_Reader(f, size))
    except FileNotFoundError as exc:
        raise NotFound(f"no such model file {_show(path.name)}") from exc
    except IsADirectoryError as exc:
        raise InvalidModelHeader(f"{_show(path.name)} is a directory, not a GGUF file") from exc
    except OSError as exc:
        raise InvalidModelHeader(
            f"could not read model file {_show(path.name)}: {exc.strerror or exc}"
        ) from exc


class _Reader:
    """Sequential reads that never go past the file's size."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self.size = size
        self.pos = 0

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def read(self, n: int, what: str) -> bytes:
        self._check(n, what)
        data = self._f.read(n)
        if len(data) != n:
            raise _truncated(what, self.size)
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self._check(n, what)
        self._f.seek(n, os.SEEK_CUR)
        self.pos += n

    def unpack(self, fmt: struct.Struct, what: str) -> int | float:
        value: int | float = fmt.unpack(self.read(fmt.size, what))[0]
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack(_U32, what))

    def u64(self, what: str) -> int:
        return int(self.unpack(_U64, what))

    def string(self, what: str, limit: int = MAX_STRING_LENGTH) -> bytes:
        n = self.u64(f"the length of {what}")
        if n > limit:
            raise InvalidModelHeader(
                f"not a valid GGUF file: {what} declares {n} bytes (the limit is {limit})"
            )
        return self.read(n, what)

    def skip_string(self, what: str) -> None:
        n = self.u64(f"the length of {what}")
        if n > MAX_STRING_LENGTH:
            raise InvalidModelHeader(f"not a valid GGUF file: {what} declares {n} bytes")
        self.skip(n, what)

    def _check(self, n: int, what: str) -> None:
        if n < 0 or n > self.remaining:
            raise _truncated(what, self.size)


def _parse(r: _Reader) -> GGUFInfo:
    version, tensor_count, kv_count = _read_header(r)
    kv = _read_metadata(r, kv_count)
    alignment = _alignment(kv)
    tensors = _read_tensor_infos(r, tensor_count, alignment)
    data_offset = _align(r.pos, alignment)
    _check_tensor_extents(tensors, data_offset, r.size)
    architecture = _architecture(kv)
    context_length = _as_int(kv.get(f"{architecture}.context_length"))
    chat_template = kv.get("tokenizer.chat_template", "")
    name = kv.get("general.name", "")
    return GGUFInfo(
        version=version,
        architecture=architecture,
        name=name if isinstance(name, str) else str(name),
        quantization=_quantization(kv, tensors),
        parameters=sum(t.n_elements for t in tensors),
        context_length=context_length if context_length is not None else 0,
        chat_template=chat_template if isinstance(chat_template, str) else "",
        metadata=_metadata_strings(kv),
        tensor_count=tensor_count,
        data_offset=data_offset,
        file_size=r.size,
        tensors=tuple(tensors),
    )


def _read_header(r: _Reader) -> tuple[int, int, int]:
    if r.size < 4 or r.read(4, "the magic number") != MAGIC:
        raise InvalidModelHeader("not a GGUF file (bad magic)")
    raw = r.read(4, "the version")
    version = _U32.unpack(raw)[0]
    if version not in SUPPORTED_VERSIONS:
        if struct.unpack(">I", raw)[0] in SUPPORTED_VERSIONS:
            raise InvalidModelHeader("big-endian GGUF files are not supported")
        raise InvalidModelHeader(
            f"unsupported GGUF version {version} (supported: 2 and 3); "
            "convert the model with a current llama.cpp"
        )
    tensor_count = r.u64("the tensor count")
    kv_count = r.u64("the metadata count")
    if tensor_count > min(MAX_TENSORS, r.remaining // _MIN_TENSOR_BYTES):
        raise InvalidModelHeader(
            f"not a valid GGUF file: it declares {tensor_count} tensors, "
            "more than the file can hold"
        )
    if kv_count > min(MAX_KV, r.remaining // _MIN_KV_BYTES):
        raise InvalidModelHeader(
            f"not a valid GGUF file: it declares {kv_count} metadata entries, "
            "more than the file can hold"
        )
    return version, tensor_count, kv_count


def _read_metadata(r: _Reader, kv_count: int) -> dict[str, Scalar | None]:
    kv: dict[str, Scalar | None] = {}
    for i in range(kv_count):
        key = _decode(r.string(f"metadata key #{i}", MAX_KEY_LENGTH), f"metadata key #{i}")
        if not key:
            raise InvalidModelHeader(f"not a valid GGUF file: metadata key #{i} is empty")
        if key in kv:
            raise InvalidModelHeader(f"not a valid GGUF file: duplicate metadata key {_show(key)}")
        value_type = r.u32(f"the type of {_show(key)}")
        kv[key] = _read_value(r, value_type, _show(key), depth=0)
    return kv


def _read_value(r: _Reader, value_type: int, what: str, depth: int) -> Scalar | None:
    """Read one value; arrays are walked and checked but return None."""
    fmt = _SCALARS.get(value_type)
    if fmt is not None:
        value = r.unpack(fmt, f"the value of {what}")
        return bool(value) if value_type == _BOOL else value
    if value_type == _STRING:
        raw = r.string(f"the value of {what}")
        return raw.decode("utf-8", errors="replace")
    if value_type == _ARRAY:
        _skip_array(r, what, depth)
        return None
    raise InvalidModelHeader(f"not a valid GGUF file: {what} has unknown value type {value_type}")


def _skip_array(r: _Reader, what: str, depth: int) -> None:
    if depth >= MAX_ARRAY_DEPTH:
        raise InvalidModelHeader(f"not a valid GGUF file: {what} nests arrays too deeply")
    element_type = r.u32(f"the element type of {what}")
    count = r.u64(f"the length of {what}")
    fmt = _SCALARS.get(element_type)
    if fmt is None and element_type not in (_STRING, _ARRAY):
        raise InvalidModelHeader(
            f"not a valid GGUF file: {what} has unknown element type {element_type}"
        )
    min_size = fmt.size if fmt is not None else (8 if element_type == _STRING else 12)
    if count > r.remaining // min_size:
        raise _truncated(f"the array {what} ({count} elements)", r.size)
    if fmt is not None:
        r.skip(count * fmt.size, f"the array {what}")
    elif element_type == _STRING:
        for _ in range(count):
            r.skip_string(f"an element of {what}")
    else:
        for _ in range(count):
            _read_value(r, _ARRAY, what, depth + 1)


def _read_tensor_infos(r: _Reader, count: int, alignment: int) -> list[TensorInfo]:
    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for i in range(count):
        name = _decode(r.string(f"the name of tensor #{i}", MAX_TENSOR_NAME), f"tensor #{i}")
        if name in seen:
            raise InvalidModelHeader(f"not a valid GGUF file: duplicate tensor {_show(name)}")
        seen.add(name)
        tensors.append(_read_tensor_info(r, name, alignment))
    return tensors


def _read_tensor_info(r: _Reader, name: str, alignment: int) -> TensorInfo:
    what = f"tensor {_show(name)}"
    n_dims = r.u32(f"the dimension count of {what}")
    if n_dims > MAX_DIMS:
        raise InvalidModelHeader(f"not a valid GGUF file: {what} has {n_dims} dimensions")
    dims = tuple(r.u64(f"the shape of {what}") for _ in range(n_dims))
    type_id = r.u32(f"the type of {what}")
    offset = r.u64(f"the offset of {what}")
    ggml_type = GGML_TYPES.get(type_id)
    if ggml_type is None:
        raise InvalidModelHeader(f"unsupported tensor type {type_id} ({what})")
    n_elements = 1
    for dim in dims:
        n_elements *= dim
    if n_elements > _INT64_MAX or any(d > _INT64_MAX for d in dims):
        raise InvalidModelHeader(f"not a valid GGUF file: {what} has an impossible shape")
    if dims and dims[0] % ggml_type.block_size:
        raise InvalidModelHeader(
            f"not a valid GGUF file: {what} has {dims[0]} columns, not a multiple of the "
            f"{ggml_type.name} block size {ggml_type.block_size}"
        )
    if offset % alignment:
        raise InvalidModelHeader(
            f"not a valid GGUF file: {what} starts at offset {offset}, "
            f"not a multiple of the alignment {alignment}"
        )
    n_bytes = n_elements // ggml_type.block_size * ggml_type.type_size
    return TensorInfo(name, dims, ggml_type.name, offset, n_elements, n_bytes)


def _check_tensor_extents(tensors: list[TensorInfo], data_offset: int, size: int) -> None:
    for t in tensors:
        end = data_offset + t.offset + t.n_bytes
        if end > size:
            raise InvalidModelHeader(
                f"GGUF file is truncated: tensor {_show(t.name)} ends at byte {end} "
                f"but the file has {size} bytes"
            )


def _alignment(kv: dict[str, Scalar | None]) -> int:
    raw = kv.get("general.alignment", DEFAULT_ALIGNMENT)
    value = _as_int(raw)
    if value is None or not 0 < value <= MAX_ALIGNMENT or value & (value - 1):
        raise InvalidModelHeader(
            f"not a valid GGUF file: general.alignment {raw!r} is not a power of two "
            f"between 1 and {MAX_ALIGNMENT}"
        )
    return value


def _architecture(kv: dict[str, Scalar | None]) -> str:
    value = kv.get("general.architecture")
    if not isinstance(value, str) or not value:
        raise InvalidModelHeader(
            "GGUF file has no general.architecture: it is not a model file llama.cpp can load"
        )
    return value


def _quantization(kv: dict[str, Scalar | None], tensors: list[TensorInfo]) -> str:
    file_type = _as_int(kv.get("general.file_type"))
    if file_type is not None and file_type in FILE_TYPES:
        return FILE_TYPES[file_type]
    weights: Counter[str] = Counter()
    for t in tensors:
        weights[t.ggml_type] += t.n_elements
    if not weights:
        return ""
    return max(sorted(weights), key=lambda k: weights[k])


def _metadata_strings(kv: dict[str, Scalar | None]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in kv.items():
        if value is None or key == "tokenizer.chat_template":
            continue
        out[key] = _stringify(value)[:METADATA_VALUE_LIMIT]
    return out


def _stringify(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.7g}"
    return str(value)


def _as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _align(offset: int, alignment: int) -> int:
    return (offset + alignment - 1) // alignment * alignment


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidModelHeader(f"not a valid GGUF file: {what} is not UTF-8") from exc


def _truncated(what: str, size: int) -> InvalidModelHeader:
    return InvalidModelHeader(f"GGUF file is truncated: {what} runs past its end ({size} bytes)")


def _show(text: str, limit: int = 64) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
