"""Each GGUF block type as MatMulNBits weights: the unpacked blocks dequantize to
exactly gguf's own ``dequantize`` (bit for bit), the packing is MatMulNBits'
layout, and onnxruntime's real MatMulNBits kernel (plus the min term) computes
the product with the GGUF weight."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

from edged.models_registry import gguf_blocks as gb

ROWS, COLS = 24, 512
# offsets of the f16 fields in each block type (scale, min, dmin)
F16_FIELDS = {
    T.Q4_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_0: (0,),
    T.Q5_1: (0, 2),
    T.Q8_0: (0,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
}
# (bits, block_size, zero, has a min) the issue and the module promise per type
LAYOUT = {
    T.Q4_0: (4, 32, 8, False),
    T.Q4_1: (4, 32, 0, True),
    T.Q5_0: (8, 32, 16, False),
    T.Q5_1: (8, 32, 0, True),
    T.Q8_0: (8, 32, 128, False),
    T.Q4_K: (4, 32, 0, True),
    T.Q5_K: (8, 32, 0, True),
    T.Q6_K: (8, 16, 32, False),
}


def random_blocks(qtype: T, rng: np.random.Generator) -> Any:
    """Hand-made raw blocks: random bytes with valid f16 scales (some zero, some
    negative), so every bit of the packed fields is exercised."""
    per_block, nbytes = GGML_QUANT_SIZES[qtype]
    n = ROWS * COLS // per_block
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        d = (rng.standard_normal(n) * 0.02).astype(np.float16)
        d[:3] = 0  # a block whose scale is zero keeps its minimum
        raw[:, off : off + 2] = d.view(np.uint8).reshape(n, 2)
    return raw.reshape(ROWS, -1)


@pytest.mark.parametrize("qtype", list(LAYOUT), ids=lambda t: t.name)
def test_unpacked_blocks_dequantize_exactly(qtype: T) -> None:
    rng = np.random.default_rng(int(qtype))
    raw = random_blocks(qtype, rng)
    blocks = gb.unpack(int(qtype), raw, ROWS, COLS)
    bits, block, zero, has_min = LAYOUT[qtype]
    assert (blocks.bits, blocks.block_size) == (bits, block)
    assert blocks.q.shape == (ROWS, COLS // block, block) and blocks.q.dtype == np.uint8
    assert int(blocks.q.max()) < 1 << bits
    assert (blocks.zero == zero).all()
    assert (blocks.min is not None) == has_min
    want = dequantize(raw, qtype).reshape(ROWS, COLS)
    got = blocks.dequantize()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0], ids=lambda t: t.name)
def test_gguf_quantized_weights_dequantize_exactly(qtype: T) -> None:
    rng = np.random.default_rng(7)
    w = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    raw = quantize(w, qtype)
    got = gb.unpack(int(qtype), raw, ROWS, COLS).dequantize()
    np.testing.assert_array_equal(got, dequantize(raw, qtype).reshape(ROWS, COLS))
    assert np.abs(got - w).max() < 0.5  # and they are the weights it quantized


def test_unmapped_types_say_so() -> None:
    raw = np.zeros((4, 4 * GGML_QUANT_SIZES[T.Q2_K][1]), dtype=np.uint8)
    with pytest.raises(gb.NotMapped, match="no exact MatMulNBits form"):
        gb.unpack(int(T.Q2_K), raw, 4, 1024)
    assert not gb.is_mapped(int(T.IQ4_NL)) and gb.is_mapped(int(T.Q6_K))


def test_packing_follows_matmulnbits_layout() -> None:
    q = np.arange(64, dtype=np.uint8).reshape(1, 2, 32) % 16
    b = gb.Blocks(q, np.ones((1, 2), np.float32), np.full((1, 2), 3, np.uint8), None, 4, 32)
    packed = gb.pack_weight(b)
    assert packed.shape == (1, 2, 16)
    assert packed[0, 0, 0] == 0 | (1 << 4) and packed[0, 1, 7] == 14 | (15 << 4)
    assert gb.pack_zero_points(b).tolist() == [[3 | (3 << 4)]]
    odd = gb.Blocks(
        q[:, :1], np.ones((1, 1), np.float32), np.full((1, 1), 5, np.uint8), None, 4, 32
    )
    assert gb.pack_zero_points(odd).tolist() == [[5]]


def test_mixed_parts_are_widened_and_split_exactly() -> None:
    rng = np.random.default_rng(3)
    parts = [gb.unpack(int(t), random_blocks(t, rng), ROWS, COLS) for t in (T.Q4_K, T.Q8_0, T.Q6_K)]
    fused = gb.concat_rows(parts)
    assert (fused.bits, fused.block_size) == (8, 16)
    want = np.concatenate([p.dequantize() for p in parts])
    np.testing.assert_array_equal(fused.dequantize(), want)


@pytest.mark.parametrize("qtype", list(LAYOUT), ids=lambda t: t.name)
def test_onnxruntime_matmulnbits_computes_the_gguf_product(qtype: T) -> None:
    """The real kernel (accuracy_level 0: float activations) on the packed blocks,
    plus the separate min product, equals x @ W.T with gguf's W to float rounding."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    raw = random_blocks(qtype, rng)
    b = gb.unpack(int(qtype), raw, ROWS, COLS)
    inits = [
        numpy_helper.from_array(gb.pack_weight(b), "B"),
        numpy_helper.from_array(b.scale, "S"),
        numpy_helper.from_array(gb.pack_zero_points(b), "Z"),
    ]
    node = helper.make_node(
        "MatMulNBits",
        ["X", "B", "S", "Z"],
        ["Y"],
        domain="com.microsoft",
        K=COLS,
        N=ROWS,
        bits=b.bits,
        block_size=b.block_size,
        accuracy_level=0,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [5, COLS])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [5, ROWS])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((5, COLS)).astype(np.float32)
    y = session.run(None, {"X": x})[0].astype(np.float64)
    if b.min is not None:
        sums = x.reshape(5, -1, b.block_size).sum(axis=-1, dtype=np.float64)
        y += sums @ b.min.T.astype(np.float64)
    w = dequantize(raw, qtype).reshape(ROWS, COLS).astype(np.float64)
    want = x.astype(np.float64) @ w.T
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q5_1, T.Q4_K, T.Q5_K], ids=lambda t: t.name)
def test_centred_blocks_are_the_same_values(qtype: T) -> None:
    """Moving the minimum into an integer zero point leaves a float32 residual that
    is exact: in float64 the values equal gguf's to the last bit."""
    rng = np.random.default_rng(5)
    raw = random_blocks(qtype, rng)
    b = gb.unpack(int(qtype), raw, ROWS, COLS)
    c = b.centered()
    assert c.min is not None and c.min.dtype == np.float32
    # where a zero point (not clipped to the range) took the minimum, half a step is left
    moved = (c.zero > 0) & (c.zero < (1 << c.bits) - 1)
    assert moved.any()
    assert (np.abs(c.min[moved]) <= np.abs(c.scale[moved]) / 2).all()

    def exact(x: gb.Blocks) -> Any:
        q, z = x.q.astype(np.float64), x.zero[..., None].astype(np.float64)
        return ((q - z) * x.scale[..., None] + x.min[..., None]).reshape(ROWS, COLS)

    np.testing.assert_array_equal(exact(c), exact(b))
    # a fused weight's part with its own zero point keeps it
    q8 = gb.unpack(int(T.Q8_0), random_blocks(T.Q8_0, rng), ROWS, COLS)
    fused = gb.concat_rows([b, q8]).centered()
    assert (fused.zero[ROWS:] == 128).all() and not fused.min[ROWS:].any()
