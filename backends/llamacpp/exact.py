"""The exact-arithmetic reference for fidelity: a GGUF's own weights in F32.

A quantized GGUF on llama.cpp is not an exact reference for its own weights:
llama.cpp's CPU kernels quantize activations to 8 bits for quantized matrix
products and accumulate attention in F16 on the decode path. The most faithful
computation of the same weights that edged can make offline is the GGUF with
every tensor dequantized to F32 (the ``gguf`` package's dequantization, not
llama.cpp's and not the ONNX transcoder's), run by llama.cpp in F32 matrix
products: every backend, llama.cpp on the GGUF included, is then measured
against it (``edged hw --calibrate``).

The copy is four bytes a weight, so it is made only up to
:data:`MAX_EXACT_BYTES`; larger models keep the GGUF on llama.cpp as their
reference. Runs in the fidelity child process, never in the daemon.
"""

from __future__ import annotations

import os
from pathlib import Path

from edged.common.errors import FailedPrecondition, InvalidArgument

MAX_EXACT_BYTES = 2 << 30  # about 500M weights; larger models keep the GGUF as reference


def exact_bytes(path: Path) -> int:
    """The size of ``path``'s weights as F32 (bytes)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read the GGUF {path.name}: {exc}") from exc
    return sum(int(t.n_elements) for t in reader.tensors) * 4


def write_exact(source: str, dest: str, max_bytes: int = MAX_EXACT_BYTES) -> int:
    """Write ``source`` (a GGUF) to ``dest`` with every tensor as F32; returns its
    weights' size. Refuses (:class:`FailedPrecondition`) past ``max_bytes`` or
    when the disk holding ``dest`` has less than twice that free."""
    import numpy as np

    from edged.common.gguf_rewrite import ALL_F32_FILE_TYPE, rewrite_gguf

    src, out = Path(source), Path(dest)
    need = exact_bytes(src)
    if need > max_bytes:
        raise FailedPrecondition(
            f"the exact F32 reference would take {need / 2**30:.1f} GiB "
            f"(more than {max_bytes / 2**30:.1f} GiB)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    free = os.statvfs(out.parent).f_bavail * os.statvfs(out.parent).f_frsize
    if free < 2 * need:
        raise FailedPrecondition(
            f"the exact F32 reference needs {need / 2**30:.1f} GiB; "
            f"{free / 2**30:.1f} GiB are free in {out.parent}"
        )
    tmp = out.with_name(f".{out.name}.partial")
    try:
        rewrite_gguf(src, tmp, lambda _name, _ndim: np.float32, None, ALL_F32_FILE_TYPE)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return need
