"""Rewrite a GGUF with its tensors dequantized (all metadata kept).

Used by the ONNX conversion (an F16 copy for the model builder,
:mod:`edged.models_registry.convert_worker`) and by the fidelity reference (an
F32 copy, :mod:`edged.backends.llamacpp.exact`). Imports ``gguf`` and numpy
when called; run it in a child process, never in the daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Emit = Callable[[str, int, int], None]

F16_FILE_TYPE = 1  # LLAMA_FTYPE_MOSTLY_F16
ALL_F32_FILE_TYPE = 0  # LLAMA_FTYPE_ALL_F32


def rewrite_gguf(
    src: Path,
    dest: Path,
    target: Callable[[str, int], Any],
    emit: Emit | None = None,
    file_type: int = F16_FILE_TYPE,
) -> None:
    """Copy the GGUF ``src`` (all metadata) to ``dest`` with each tensor dequantized
    to the numpy dtype ``target(name, ndim)``, or kept as it is where that is None."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize

    reader = GGUFReader(src)
    arch = _field_value(reader.fields["general.architecture"], GGUFValueType)
    writer = GGUFWriter(dest, str(arch))
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        value = _field_value(field, GGUFValueType)
        if name == "general.alignment":
            writer.add_custom_alignment(int(value))
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, vtype, sub_type=sub_type)
    writer.add_file_type(file_type)

    tensors = list(reader.tensors)
    shapes = [tuple(int(x) for x in reversed(t.shape)) for t in tensors]
    dtypes = [target(t.name, len(shape)) for t, shape in zip(tensors, shapes, strict=True)]
    for t, shape, dt in zip(tensors, shapes, dtypes, strict=True):
        if dt is None:  # the raw blocks, as they are
            raw = np.asarray(t.data)
            writer.add_tensor_info(t.name, raw.shape, raw.dtype, raw.nbytes, t.tensor_type)
        else:
            dtype = np.dtype(dt)
            writer.add_tensor_info(t.name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = len(tensors)
    status = "dequantizing the GGUF to F16"
    if emit is not None:
        emit(status, 0, total)
    for i, (t, shape, dt) in enumerate(zip(tensors, shapes, dtypes, strict=True)):
        if dt is None:
            writer.write_tensor_data(np.asarray(t.data))
        else:
            writer.write_tensor_data(_dequantized(t, shape, np.dtype(dt), dequantize))
        if emit is not None:
            emit(status, i + 1, total)
    writer.close()


CHUNK_ELEMENTS = 1 << 22  # dequantized a few rows at a time: 16 MB of float32 at most


def _dequantized(t: Any, shape: tuple[int, ...], dtype: Any, dequantize: Any) -> Any:
    """Tensor ``t`` as ``dtype``, dequantized in chunks of rows so that the peak
    memory stays near the output's size (the gguf package's ``dequantize`` makes
    several float temporaries of its input's size)."""
    import numpy as np

    out = np.empty(shape, dtype=dtype)
    rows = out.reshape(-1, shape[-1]) if len(shape) > 1 else out.reshape(1, -1)
    raw = np.asarray(t.data).reshape(rows.shape[0], -1)
    step = max(1, CHUNK_ELEMENTS // max(1, rows.shape[1]))
    for r in range(0, rows.shape[0], step):
        part = dequantize(raw[r : r + step], t.tensor_type)
        rows[r : r + step] = part.reshape(-1, rows.shape[1])
    return out


def _field_value(field: Any, value_types: Any) -> Any:
    """A GGUFReader field's value as a Python scalar, string or list."""
    vtype = field.types[0]
    if vtype == value_types.ARRAY:
        if len(field.types) > 2:
            raise ValueError(f"nested arrays are not supported ({field.name})")
        if field.types[-1] == value_types.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if vtype == value_types.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    return field.parts[field.data[0]].tolist()[0]
