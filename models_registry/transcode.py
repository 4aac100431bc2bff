"""Put a GGUF's own quantized blocks into the ONNX graph the model builder made.

The model builder (run by :mod:`.convert_worker`) quantizes an F16 copy of the
GGUF to int4 again: a second rounding. :func:`transcode` then replaces the
weights of every ``MatMulNBits`` node (and the ``GatherBlockQuantized``
embedding) with the GGUF tensor's blocks, unchanged (:mod:`.gguf_blocks`):
packed values, scales and integer zero points, and for the types with a block
minimum (Q4_1, Q5_1, Q4_K, Q5_K) a small extra product
``blocksum(x) @ min.T`` added to the node's output. A weight whose GGUF type
has no exact form, or whose tensor cannot be found, keeps the builder's int4
weights; the :class:`Report` says which.

Which GGUF tensors make a node: the builder names its weights
``model.layers.{i}.{attn|mlp}.{proj}.MatMul.weight_Q4`` (a fused QKV or
gate/up projection stacks several GGUF tensors' rows) and ``lm_head``.
llama.cpp stores Q and K of llama-style models with their rows permuted for
its rotary layout; they are permuted back. Rows move whole, so blocks (which
run along the input dimension) are unchanged. Each transcoded weight is
compared with the builder's own (a sample of rows): one that does not match is
left as the builder made it, so a wrong mapping can cost fidelity, never
correctness.

Imports onnx, numpy and gguf: it runs in the converter's child process only.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import gguf_blocks as gb

Emit = Callable[[str, int, int], None]

MODEL_FILE = "model.onnx"
DATA_SUFFIX = ".data"
# builder projection -> the GGUF tensors whose rows it stacks
PROJECTIONS = {
    "attn.q_proj": ("attn_q",),
    "attn.k_proj": ("attn_k",),
    "attn.v_proj": ("attn_v",),
    "attn.qkv_proj": ("attn_q", "attn_k", "attn_v"),
    "attn.o_proj": ("attn_output",),
    "mlp.gate_proj": ("ffn_gate",),
    "mlp.up_proj": ("ffn_up",),
    "mlp.gate_up_proj": ("ffn_gate", "ffn_up"),
    "mlp.down_proj": ("ffn_down",),
}
# GGUF architectures whose converter permutes Q/K rows (llama.cpp's LlamaModel.permute)
PERMUTED_QK = frozenset({"llama", "mistral"})
# a transcoded weight whose rms difference from the builder's int4 one is above
# this share of the weight's rms is not the same weight (a wrong mapping)
MAX_MISMATCH = 0.5
SAMPLE_ROWS = 512
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


@dataclass
class Report:
    """What the transcoder did, weight by weight."""

    exact: Counter[str] = field(default_factory=Counter)  # GGUF type -> weights kept exactly
    fallback: list[str] = field(default_factory=list)  # "onnx weight (why)"
    min_products: int = 0  # weights given the separate block-minimum product

    def status(self) -> str:
        """One short line for the conversion's progress (the log has :meth:`summary`)."""
        kept = sum(self.exact.values())
        types = ", ".join(f"{t} x{n}" for t, n in sorted(self.exact.items()))
        text = f"kept {kept} GGUF weights exactly ({types or 'none'})"
        if self.fallback:
            first = self.fallback[0]
            more = f" and {len(self.fallback) - 1} more" if len(self.fallback) > 1 else ""
            text += f"; requantized by the model builder: {first}{more}"
        return text[:200]

    def summary(self) -> str:
        kept = sum(self.exact.values())
        types = ", ".join(f"{t} x{n}" for t, n in sorted(self.exact.items()))
        text = f"kept {kept} weights exactly from the GGUF's blocks ({types or 'none'})"
        if self.fallback:
            text += f"; requantized by the model builder (int4): {'; '.join(self.fallback)}"
        else:
            text += "; none requantized"
        return text


@dataclass(frozen=True)
class _Gguf:
    arch: str
    heads: int
    kv_heads: int
    tensors: dict[str, Any]

    def blocks(self, name: str, part: str) -> gb.Blocks:
        t = self.tensors.get(name)
        if t is None:
            raise gb.NotMapped(f"the GGUF has no tensor {name}")
        if len(t.shape) != 2:
            raise gb.NotMapped(f"{name} is not a matrix")
        cols, rows = (int(x) for x in t.shape)
        b = gb.unpack(int(t.tensor_type), t.data, rows, cols)
        if self.arch in PERMUTED_QK and part in ("attn_q", "attn_k"):
            b = b.take_rows(unpermute_rows(rows, self.heads if part == "attn_q" else self.kv_heads))
        return b

    def type_of(self, name: str) -> str:
        t = self.tensors.get(name)
        return "missing" if t is None else t.tensor_type.name


def unpermute_rows(rows: int, heads: int) -> Any:
    """The row order that undoes llama.cpp's Q/K permutation: HF row r is GGUF row idx[r]."""
    half = rows // heads // 2
    return np.arange(rows).reshape(heads, half, 2).swapaxes(1, 2).reshape(-1)


def read_gguf(path: Path) -> _Gguf:
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def field_int(key: str) -> int:
        f = reader.fields.get(key)
        return int(f.parts[f.data[0]][0]) if f is not None else 0

    arch_field = reader.fields["general.architecture"]
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    heads = field_int(f"{arch}.attention.head_count")
    kv_heads = field_int(f"{arch}.attention.head_count_kv") or heads
    return _Gguf(arch, heads, kv_heads, {t.name: t for t in reader.tensors})


def gguf_names(prefix: str, g: _Gguf) -> list[tuple[str, str]] | None:
    """(GGUF tensor, part) pairs stacked by the builder weight ``prefix``."""
    if prefix == "lm_head":
        name = "output.weight" if "output.weight" in g.tensors else "token_embd.weight"
        return [(name, "output")]
    m = _LAYER.fullmatch(prefix)
    if m is None or m.group(2) not in PROJECTIONS:
        return None
    return [(f"blk.{m.group(1)}.{p}.weight", p) for p in PROJECTIONS[m.group(2)]]


def transcode(gguf_path: Path, model_dir: Path, work: Path, *, emit: Emit) -> Report:
    """Rewrite ``model_dir``/model.onnx with the GGUF's blocks (see the module doc)."""
    import onnx

    g = read_gguf(gguf_path)
    model = onnx.load(str(model_dir / MODEL_FILE))
    graph = _Graph(model)
    report = Report()
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    for i, node in enumerate(nodes):
        emit("transcoding the GGUF's quantized blocks", i, len(nodes))
        _matmul(graph, node, g, report)
    for node in [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]:
        _embedding(graph, node, g, report)
    emit("transcoding the GGUF's quantized blocks", len(nodes), len(nodes))
    graph.drop_unused()
    _save(model, model_dir, work)
    return report


class _Graph:
    """Initializer lookups and edits on a loaded ModelProto."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.inits = {i.name: i for i in model.graph.initializer}
        self.block_sums: dict[tuple[str, int], str] = {}  # (input, block size) -> its sums

    def array(self, name: str) -> Any:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name])

    def add(self, name: str, value: Any) -> str:
        from onnx import numpy_helper

        init = numpy_helper.from_array(np.ascontiguousarray(value), name)
        if name in self.inits:
            self.model.graph.initializer.remove(self.inits[name])
        self.model.graph.initializer.append(init)
        self.inits[name] = init
        return name

    def producer(self, output: str) -> Any:
        return next((n for n in self.model.graph.node if output in n.output), None)

    def insert_after(self, node: Any, new: list[Any]) -> None:
        nodes = self.model.graph.node
        at = list(nodes).index(node) + 1
        for k, n in enumerate(new):
            nodes.insert(at + k, n)

    def insert_before(self, node: Any, new: list[Any]) -> None:
        nodes = self.model.graph.node
        at = list(nodes).index(node)
        for k, n in enumerate(new):
            nodes.insert(at + k, n)

    def forget_shape(self, name: str) -> None:
        """Drop the builder's recorded shape of a tensor whose shape changed."""
        for info in list(self.model.graph.value_info):
            if info.name == name:
                self.model.graph.value_info.remove(info)

    def drop_unused(self) -> None:
        used = {i for n in self.model.graph.node for i in n.input}
        used |= {o.name for o in self.model.graph.output}
        for name, init in list(self.inits.items()):
            if name not in used:
                self.model.graph.initializer.remove(init)
                del self.inits[name]


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _set_attr(node: Any, name: str, value: int) -> None:
    from onnx import helper

    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _builder_weights(
    graph: _Graph, b_name: str, s_name: str, zp_name: str, a: dict[str, Any]
) -> Any:
    """The builder's (N, K) weights (a sample of rows), dequantized."""
    bits, block = int(a["bits"]), int(a["block_size"])
    rows = graph.array(b_name)
    scales = graph.array(s_name).astype(np.float32)
    n = rows.shape[0]
    pick = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_ROWS)).astype(np.int64))
    rows, scales = rows[pick], scales.reshape(n, -1)[pick]
    if bits == 4:
        q = np.stack([rows & 0x0F, rows >> 4], axis=-1).reshape(len(pick), -1, block)
    else:
        q = rows.reshape(len(pick), -1, block)
    if zp_name:
        zp = graph.array(zp_name)[pick]
        if bits == 4:
            zp = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(len(pick), -1)
        zp = zp[:, : q.shape[1]].astype(np.float32)
    else:
        zp = np.full(q.shape[:2], gb.default_zero(bits), np.float32)
    w = (q.astype(np.float32) - zp[..., None]) * scales[..., None]
    return pick, w.reshape(len(pick), -1)


def _mismatch(new: gb.Blocks, pick: Any, old: Any) -> float:
    mine = new.take_rows(pick).dequantize()[:, : old.shape[1]]
    scale = float(np.sqrt(np.mean(np.square(old)))) or 1.0
    return float(np.sqrt(np.mean(np.square(mine - old)))) / scale


def _matmul(graph: _Graph, node: Any, g: _Gguf, report: Report) -> None:
    b_name, s_name = node.input[1], node.input[2]
    zp_name = node.input[3] if len(node.input) > 3 else ""
    prefix = b_name.split(".MatMul.")[0]
    names = gguf_names(prefix, g)
    if names is None:
        report.fallback.append(f"{prefix} (no GGUF tensor known for it)")
        return
    types = "+".join(g.type_of(n) for n, _ in names)
    a = _attrs(node)
    try:
        blocks = gb.concat_rows([g.blocks(n, part) for n, part in names]).centered()
    except gb.NotMapped as exc:
        report.fallback.append(f"{prefix} ({types}: {exc})")
        return
    if (blocks.rows, blocks.cols) != (int(a["N"]), int(a["K"])):
        report.fallback.append(f"{prefix} ({types}: shape {blocks.rows}x{blocks.cols} differs)")
        return
    off = _mismatch(blocks, *_builder_weights(graph, b_name, s_name, zp_name, a))
    if off > MAX_MISMATCH:
        report.fallback.append(
            f"{prefix} ({types}: does not match the builder's weight, {off:.2f})"
        )
        return
    dtype = graph.array(s_name).dtype  # the graph's io dtype
    base = f"{prefix}.MatMul.gguf"
    inputs = [
        node.input[0],
        graph.add(f"{base}.weight", gb.pack_weight(blocks)),
        graph.add(f"{base}.scales", blocks.scale.astype(dtype)),
        graph.add(f"{base}.zero_points", gb.pack_zero_points(blocks)),
    ]
    rest = list(node.input[4:])
    del node.input[:]
    node.input.extend(inputs + rest)
    _set_attr(node, "bits", blocks.bits)
    _set_attr(node, "block_size", blocks.block_size)
    if blocks.min is not None and np.any(blocks.min):
        _add_min_product(graph, node, blocks, base, dtype)
        report.min_products += 1
    for name, _ in names:
        report.exact[g.type_of(name)] += 1


def _add_min_product(graph: _Graph, node: Any, blocks: gb.Blocks, base: str, dtype: Any) -> None:
    """node's output += blocksum(x) @ min.T, the block sums of x (one MatMul with
    a block-indicator matrix) shared by every node that reads the same x."""
    from onnx import helper

    x = node.input[0]
    nb = blocks.scale.shape[1]
    sums = graph.block_sums.get((x, blocks.block_size))
    if sums is None:
        sums = f"{x}/gguf_block_sums_{blocks.block_size}"
        indicator = np.kron(np.eye(nb, dtype=dtype), np.ones((blocks.block_size, 1), dtype=dtype))
        ones = graph.add(f"{base}.block_indicator", indicator)  # (K, n_blocks)
        graph.insert_before(node, [helper.make_node("MatMul", [x, ones], [sums], name=sums)])
        graph.block_sums[(x, blocks.block_size)] = sums
    out = node.output[0]
    main = f"{out}/gguf_main"
    node.output[0] = main
    mins = graph.add(f"{base}.mins", np.ascontiguousarray(blocks.min.T).astype(dtype))
    stem = node.name or base
    graph.insert_after(
        node,
        [
            helper.make_node("MatMul", [sums, mins], [f"{out}/gguf_min"], name=f"{stem}/gguf_min"),
            helper.make_node("Add", [main, f"{out}/gguf_min"], [out], name=f"{stem}/gguf_add"),
        ],
    )


def _embedding(graph: _Graph, node: Any, g: _Gguf, report: Report) -> None:
    """The token embedding's GatherBlockQuantized: the GGUF's blocks when they have
    no minimum (GatherBlockQuantized has integer zero points only)."""
    name = "token_embd.weight"
    t = g.tensors.get(name)
    if t is None:
        report.fallback.append("embed_tokens (the GGUF has no token_embd)")
        return
    try:
        blocks = g.blocks(name, "embed")
    except gb.NotMapped as exc:
        report.fallback.append(f"embed_tokens ({t.tensor_type.name}: {exc})")
        return
    if blocks.min is not None and np.any(blocks.min):
        report.fallback.append(f"embed_tokens ({t.tensor_type.name}: block minimums)")
        return
    a = _attrs(node)
    if int(a.get("gather_axis", 0)) != 0 or int(a.get("quantize_axis", 1)) != 1:
        report.fallback.append("embed_tokens (an unexpected GatherBlockQuantized layout)")
        return
    packed = gb.pack_weight(blocks)
    data = packed.reshape(blocks.rows, -1)
    source = graph.producer(node.input[0])
    tied = "lm_head.MatMul.gguf.weight"
    if (
        source is not None
        and source.op_type == "Reshape"
        and tied in graph.inits
        and "output.weight" not in g.tensors
        and graph.array(tied).shape == packed.shape
    ):
        # the builder shares lm_head's weights with the embedding: keep sharing them
        source.input[0] = tied
        source.input[1] = graph.add("embed_tokens.gguf.shape", np.array(data.shape, np.int64))
        data_name = source.output[0]
        graph.forget_shape(data_name)
    else:
        data_name = graph.add("embed_tokens.gguf.weight", data)
    dtype = graph.array(node.input[2]).dtype
    inputs = [
        data_name,
        node.input[1],
        graph.add("embed_tokens.gguf.scales", blocks.scale.astype(dtype)),
        graph.add("embed_tokens.gguf.zero_points", gb.pack_zero_points(blocks)),
    ]
    del node.input[:]
    node.input.extend(inputs)
    _set_attr(node, "bits", blocks.bits)
    _set_attr(node, "block_size", blocks.block_size)
    report.exact[t.tensor_type.name] += 1


def _save(model: Any, model_dir: Path, work: Path) -> None:
    """Write the model (weights in model.onnx.data) and replace the builder's files."""
    import onnx

    staged = work / "transcoded"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    onnx.save_model(
        model,
        str(staged / MODEL_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=MODEL_FILE + DATA_SUFFIX,
        size_threshold=1024,
    )
    for name in (MODEL_FILE, MODEL_FILE + DATA_SUFFIX):
        (staged / name).replace(model_dir / name)
