"""GGUF quantized blocks as ONNX Runtime ``MatMulNBits`` weights, without rounding.

A GGUF tensor of a block type stores, per row and block of ``block_size``
input columns, small integers ``q`` and a scale (and for some types a minimum):
the value is ``scale * (q - zero) + min``. ``MatMulNBits`` computes
``scale * (q - zero)`` per block with ``bits``-wide ``q`` and integer zero
points; a type whose blocks carry a minimum keeps it apart (``Blocks.min``):
the converter adds ``blocksum(x) @ min.T``, the per-block sums of the input
times the matrix of minimums (1/block_size the size of the main product).

Every type below maps exactly (the dequantized values equal gguf's own
``dequantize``, bit for bit):

=======  =====  ==========  ====  ===========================================
type     bits   block_size  zero  min
=======  =====  ==========  ====  ===========================================
Q4_0     4      32          8     -
Q4_1     4      32          0     m (f16)
Q5_0     8      32          16    - (5-bit values stored in 8 bits)
Q5_1     8      32          0     m
Q8_0     8      32          128   - (int8 stored offset by 128)
Q4_K     4      32          0     -dmin * m_j (8 sub-blocks of a 256 super-block)
Q5_K     8      32          0     -dmin * m_j
Q6_K     8      16          32    - (16 sub-blocks of 16, int8 scales)
=======  =====  ==========  ====  ===========================================

``MatMulNBits`` on onnxruntime's CPU kernel has 2-, 4- and 8-bit weights and
block sizes of 16 and up (powers of two), so 5- and 6-bit values are stored in
8 bits: exact, at 1.6x / 1.33x their GGUF size. Other types (the IQ types, Q2_K,
Q3_K, ...) are not mapped: :func:`unpack` raises :class:`NotMapped` and the
converter leaves that weight to the model builder (requantized), saying so.

Pure numpy, vectorized over all blocks of a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

QK_K = 256  # the K-quants' super-block

# GGML type id -> (name, elements per block, bytes per block)
_TYPES = {
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
}


class NotMapped(ValueError):
    """The GGUF type has no exact MatMulNBits form here."""


@dataclass(frozen=True)
class Blocks:
    """A (rows, cols) weight as ``scale * (q - zero) + min`` per block of columns.

    ``q``: uint8 (rows, n_blocks, block_size), each below ``2**bits``;
    ``scale``: float32 (rows, n_blocks); ``zero``: uint8 (rows, n_blocks);
    ``min``: float32 (rows, n_blocks) or None (all zero).
    """

    q: Any
    scale: Any
    zero: Any
    min: Any
    bits: int
    block_size: int

    @property
    def rows(self) -> int:
        return int(self.q.shape[0])

    @property
    def cols(self) -> int:
        return int(self.q.shape[1] * self.q.shape[2])

    def dequantize(self) -> Any:
        """The float32 (rows, cols) values, as MatMulNBits (plus the min term) sees them."""
        w = (self.q.astype(np.float32) - self.zero[..., None].astype(np.float32)) * self.scale[
            ..., None
        ]
        if self.min is not None:
            w = w + self.min[..., None]
        return w.reshape(self.rows, self.cols)

    def centered(self) -> Blocks:
        """The same values with each block's minimum moved into an integer zero point
        as far as it goes: ``zero = round(-min / scale)`` (within ``0..2**bits-1``)
        and the residual ``min + scale * zero`` kept. Exact: the residual is exactly
        representable in float32 (zero is 0 unless ``|min| >= scale / 2``, and then
        it has at most 12 significant bits). The point: ``scale * (q - zero)`` is
        then centred like the weight itself, so the 8-bit activations that
        MatMulNBits multiplies it with add no more error than llama.cpp's do."""
        if self.min is None:
            return self
        scale = self.scale.astype(np.float64)
        mn = self.min.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(scale != 0, np.rint(-mn / np.where(scale != 0, scale, 1)), 0)
        old = self.zero.astype(np.float64)
        # only blocks without a zero point of their own (a fused weight's Q8_0 part keeps 128)
        z = np.where(old == 0, np.clip(z, 0, (1 << self.bits) - 1), old)
        residual = mn + scale * (z - old)
        if not np.array_equal(residual.astype(np.float32).astype(np.float64), residual):
            return self  # not exact in float32 (cannot happen for f16 inputs): keep as is
        return Blocks(
            self.q,
            self.scale,
            z.astype(np.uint8),
            residual.astype(np.float32),
            self.bits,
            self.block_size,
        )

    def take_rows(self, index: Any) -> Blocks:
        return Blocks(
            self.q[index],
            self.scale[index],
            self.zero[index],
            None if self.min is None else self.min[index],
            self.bits,
            self.block_size,
        )

    def with_layout(self, bits: int, block_size: int) -> Blocks:
        """The same values with wider ``bits`` and/or smaller blocks (both exact)."""
        if bits < self.bits or self.block_size % block_size:
            raise ValueError(f"cannot narrow {self.bits}/{self.block_size} to {bits}/{block_size}")
        split = self.block_size // block_size
        if split == 1:
            return Blocks(self.q, self.scale, self.zero, self.min, bits, block_size)
        rows, nb = self.scale.shape
        q = self.q.reshape(rows, nb * split, block_size)

        def spread(a: Any) -> Any:
            return None if a is None else np.repeat(a, split, axis=1)

        return Blocks(q, spread(self.scale), spread(self.zero), spread(self.min), bits, block_size)


def type_name(ggml_type: int) -> str:
    return _TYPES[ggml_type][0] if ggml_type in _TYPES else f"type {ggml_type}"


def is_mapped(ggml_type: int) -> bool:
    return ggml_type in _TYPES


def unpack(ggml_type: int, data: Any, rows: int, cols: int) -> Blocks:
    """A GGUF tensor's raw bytes (``rows`` x ``cols`` values, row-major blocks) as
    :class:`Blocks`. Raises NotMapped for a type without an exact mapping."""
    if ggml_type not in _TYPES:
        raise NotMapped(f"GGUF {type_name(ggml_type)} has no exact MatMulNBits form")
    name, per_block, nbytes = _TYPES[ggml_type]
    if cols % per_block:
        raise NotMapped(f"{cols} columns are not whole {name} blocks of {per_block}")
    raw = np.ascontiguousarray(data, dtype=np.uint8).reshape(rows * (cols // per_block), nbytes)
    return _UNPACKERS[name](raw, rows, cols)


def _f16(b: Any) -> Any:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)[:, 0]


def _nibbles(qs: Any) -> Any:
    """(n, 16) bytes -> (n, 32) values: low nibbles are elements 0-15, high 16-31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _fifth_bits(qh: Any) -> Any:
    """(n, 4) bytes (a little-endian uint32) -> (n, 32) bits as 0/16."""
    bits = np.unpackbits(np.ascontiguousarray(qh), axis=-1, bitorder="little")
    return (bits << 4).astype(np.uint8)


def _shape(
    rows: int, cols: int, block: int, q: Any, scale: Any, zero: int, mn: Any, bits: int
) -> Blocks:
    nb = cols // block
    return Blocks(
        q.reshape(rows, nb, block).astype(np.uint8),
        np.asarray(scale, dtype=np.float32).reshape(rows, nb),
        np.full((rows, nb), zero, dtype=np.uint8),
        None if mn is None else np.asarray(mn, dtype=np.float32).reshape(rows, nb),
        bits,
        block,
    )


def _q4_0(raw: Any, rows: int, cols: int) -> Blocks:
    return _shape(rows, cols, 32, _nibbles(raw[:, 2:]), _f16(raw[:, :2]), 8, None, 4)


def _q4_1(raw: Any, rows: int, cols: int) -> Blocks:
    return _shape(rows, cols, 32, _nibbles(raw[:, 4:]), _f16(raw[:, :2]), 0, _f16(raw[:, 2:4]), 4)


def _q5_0(raw: Any, rows: int, cols: int) -> Blocks:
    q = _nibbles(raw[:, 6:]) | _fifth_bits(raw[:, 2:6])
    return _shape(rows, cols, 32, q, _f16(raw[:, :2]), 16, None, 8)


def _q5_1(raw: Any, rows: int, cols: int) -> Blocks:
    q = _nibbles(raw[:, 8:]) | _fifth_bits(raw[:, 4:8])
    return _shape(rows, cols, 32, q, _f16(raw[:, :2]), 0, _f16(raw[:, 2:4]), 8)


def _q8_0(raw: Any, rows: int, cols: int) -> Blocks:
    q = (raw[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return _shape(rows, cols, 32, q, _f16(raw[:, :2]), 128, None, 8)


def _k_scales(scales: Any) -> tuple[Any, Any]:
    """Q4_K/Q5_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins (as gguf reads them)."""
    s = scales.reshape(-1, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _k_scale_min(raw: Any) -> tuple[Any, Any]:
    d = _f16(raw[:, :2])[:, None]
    dmin = _f16(raw[:, 2:4])[:, None]
    sc, mn = _k_scales(raw[:, 4:16])
    return d * sc, -(dmin * mn)  # per 32-value sub-block: scale, min


def _q4_k(raw: Any, rows: int, cols: int) -> Blocks:
    n = raw.shape[0]
    qs = raw[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = (qs & 0x0F).reshape(n, QK_K)
    scale, mn = _k_scale_min(raw)
    return _shape(rows, cols, 32, q, scale, 0, mn, 4)


def _q5_k(raw: Any, rows: int, cols: int) -> Blocks:
    n = raw.shape[0]
    qh = raw[:, 16:48].reshape(n, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)
    ql = raw[:, 48:].reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = ((ql & 0x0F).reshape(n, 8, 32) | ((qh & 0x01).reshape(n, 8, 32) << 4)).reshape(n, QK_K)
    scale, mn = _k_scale_min(raw)
    return _shape(rows, cols, 32, q, scale, 0, mn, 8)


def _q6_k(raw: Any, rows: int, cols: int) -> Blocks:
    n = raw.shape[0]
    ql = raw[:, :128].reshape(n, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    qh = raw[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(
        1, 1, 4, 1
    )
    q = ((ql & 0x0F).reshape(n, 8, 32) | ((qh & 0x03).reshape(n, 8, 32) << 4)).reshape(n, QK_K)
    sc = raw[:, 192:208].view(np.int8).astype(np.float32)
    scale = _f16(raw[:, 208:210])[:, None] * sc
    return _shape(rows, cols, 16, q, scale, 32, None, 8)


_UNPACKERS = {
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q8_0": _q8_0,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}


def concat_rows(parts: list[Blocks]) -> Blocks:
    """Blocks stacked along rows (a fused QKV or gate/up weight): the widest bits and
    the smallest block of the parts, minimums where any part has them."""
    bits = max(p.bits for p in parts)
    block = min(p.block_size for p in parts)
    laid = [p.with_layout(bits, block) for p in parts]
    has_min = any(p.min is not None for p in laid)
    return Blocks(
        np.concatenate([p.q for p in laid]),
        np.concatenate([p.scale for p in laid]),
        np.concatenate([p.zero for p in laid]),
        np.concatenate([p.min if p.min is not None else np.zeros_like(p.scale) for p in laid])
        if has_min
        else None,
        bits,
        block,
    )


def pack_weight(b: Blocks) -> Any:
    """MatMulNBits' ``B``: uint8 (rows, n_blocks, block_size * bits / 8)."""
    if b.bits == 8:
        return np.ascontiguousarray(b.q)
    if b.bits == 4:
        return np.ascontiguousarray(b.q[..., 0::2] | (b.q[..., 1::2] << 4))
    raise ValueError(f"unsupported bits {b.bits}")


def pack_zero_points(b: Blocks) -> Any:
    """MatMulNBits' uint8 ``zero_points``: (rows, ceil(n_blocks * bits / 8))."""
    if b.bits == 8:
        return np.ascontiguousarray(b.zero)
    z = b.zero
    if z.shape[1] % 2:
        z = np.pad(z, ((0, 0), (0, 1)))
    return np.ascontiguousarray(z[:, 0::2] | (z[:, 1::2] << 4))


def default_zero(bits: int) -> int:
    """The zero point MatMulNBits assumes when none is given."""
    return 1 << (bits - 1)
