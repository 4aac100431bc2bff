"""What the memory estimate and backend placement need to know about a model
variant, read from its header or config files without loading it.

``model_facts(path, fmt)`` reads a GGUF header (:mod:`edged.common.gguf`), an
ONNX Runtime GenAI folder's ``genai_config.json``
(:mod:`edged.common.onnx_folder`) or an OpenVINO IR folder's Hugging Face
``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edged.common import onnx_folder
from edged.common.gguf import read_gguf_info
from edged.common.jsonfile import positive_int, read_json_object

FORMAT_GGUF = "gguf"
FORMAT_ONNX = "onnx"
FORMAT_SAFETENSORS = "safetensors"  # a Hugging Face folder: config.json + *.safetensors
FORMAT_OPENVINO_IR = "openvino"
IR_CONFIG = "config.json"

# llama.cpp's encoder-only architectures: sentence embedders by construction.
ENCODER_ARCHITECTURES = frozenset(
    {
        "bert",
        "modern-bert",
        "nomic-bert",
        "nomic-bert-moe",
        "neo-bert",
        "jina-bert-v2",
        "jina-bert-v3",
        "eurobert",
        "gemma-embedding",
        "t5encoder",
    }
)


def is_embedding_model(architecture: str, declares_pooling: bool) -> bool:
    """An encoder architecture, or a GGUF that says how to pool its states."""
    return architecture in ENCODER_ARCHITECTURES or declares_pooling


def is_embedding_metadata(metadata: dict[str, str]) -> bool:
    """The same rule over a GGUF's metadata (``general.architecture`` and
    ``<arch>.pooling_type``)."""
    arch = metadata.get("general.architecture", "")
    return is_embedding_model(arch, bool(metadata.get(f"{arch}.pooling_type")))


@dataclass(frozen=True)
class ModelFacts:
    """What the estimate needs to know about one model variant.

    ``weights_bytes`` is required; the shape fields may be 0 when unknown (a
    format whose header we cannot read), and then the KV part is 0 too.
    ``layer_bytes`` is the average weight bytes of one repeating block (what
    one offloaded GPU layer costs); 0 means ``weights_bytes / n_layer``.
    """

    weights_bytes: int
    n_layer: int = 0
    n_embd: int = 0
    n_head: int = 0
    n_head_kv: int = 0
    head_dim_k: int = 0
    head_dim_v: int = 0
    n_ff: int = 0
    n_vocab: int = 0
    context_train: int = 0
    layer_bytes: int = 0

    @property
    def per_layer_bytes(self) -> int:
        if self.layer_bytes:
            return self.layer_bytes
        return self.weights_bytes // self.n_layer if self.n_layer else self.weights_bytes


def model_facts(path: Path, fmt: str) -> ModelFacts:
    """Read a variant's facts from its files (headers and configs only).

    ``path`` is the GGUF file, or the ONNX / OpenVINO IR folder. Raises
    :class:`~edged.common.errors.InvalidModelFile` when the header cannot be read.
    """
    if fmt == FORMAT_GGUF:
        return gguf_facts(path)
    if fmt == FORMAT_ONNX:
        return onnx_facts(path)
    return ir_facts(path)


def _int(meta: dict[str, str], key: str) -> int:
    try:
        return int(meta.get(key, "0"))
    except ValueError:
        return 0


def gguf_facts(path: Path) -> ModelFacts:
    info = read_gguf_info(path)
    meta, arch = info.metadata, info.architecture
    n_layer = _int(meta, f"{arch}.block_count")
    n_embd = _int(meta, f"{arch}.embedding_length")
    n_head = _int(meta, f"{arch}.attention.head_count")
    n_head_kv = _int(meta, f"{arch}.attention.head_count_kv") or n_head
    head = n_embd // n_head if n_head else 0
    weights = sum(t.n_bytes for t in info.tensors) or info.file_size - info.data_offset
    blocks = sum(t.n_bytes for t in info.tensors if t.name.startswith("blk."))
    n_vocab = _int(meta, f"{arch}.vocab_size")
    if not n_vocab:
        emb = next((t for t in info.tensors if t.name == "token_embd.weight"), None)
        n_vocab = emb.dims[1] if emb is not None and len(emb.dims) > 1 else 0
    return ModelFacts(
        weights_bytes=weights,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=_int(meta, f"{arch}.attention.key_length") or head,
        head_dim_v=_int(meta, f"{arch}.attention.value_length") or head,
        n_ff=_int(meta, f"{arch}.feed_forward_length"),
        n_vocab=n_vocab,
        context_train=info.context_length or _int(meta, f"{arch}.context_length"),
        layer_bytes=blocks // n_layer if n_layer and blocks else 0,
    )


def _folder_bytes(folder: Path, suffixes: tuple[str, ...]) -> int:
    if folder.is_file():
        return folder.stat().st_size
    return sum(
        p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffixes)
    )


def _num(d: object, key: str) -> int:
    return positive_int(d.get(key)) if isinstance(d, dict) else 0


def onnx_facts(folder: Path) -> ModelFacts:
    """An ONNX Runtime GenAI folder (genai_config.json and the files it names)."""
    cfg = onnx_folder.read_config(folder)
    dec = onnx_folder.decoder_section(cfg)
    head = _num(dec, "head_size")
    return ModelFacts(
        weights_bytes=_folder_bytes(folder, onnx_folder.WEIGHT_SUFFIXES),
        n_layer=_num(dec, "num_hidden_layers"),
        n_embd=_num(dec, "hidden_size"),
        n_head=_num(dec, "num_attention_heads"),
        n_head_kv=_num(dec, "num_key_value_heads") or _num(dec, "num_attention_heads"),
        head_dim_k=head,
        head_dim_v=head,
        n_vocab=onnx_folder.vocab_size(cfg),
        context_train=onnx_folder.context_length(cfg),
    )


def ir_facts(folder: Path) -> ModelFacts:
    """An OpenVINO IR folder (openvino_model.xml/.bin + Hugging Face config.json)."""
    weights = _folder_bytes(folder, (".bin",))
    config = folder / IR_CONFIG
    if not config.is_file():
        return ModelFacts(weights_bytes=weights)
    cfg = read_json_object(config)
    n_embd, n_head = _num(cfg, "hidden_size"), _num(cfg, "num_attention_heads")
    head = _num(cfg, "head_dim") or (n_embd // n_head if n_head else 0)
    return ModelFacts(
        weights_bytes=weights,
        n_layer=_num(cfg, "num_hidden_layers"),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=_num(cfg, "num_key_value_heads") or n_head,
        head_dim_k=head,
        head_dim_v=head,
        n_ff=_num(cfg, "intermediate_size"),
        n_vocab=_num(cfg, "vocab_size"),
        context_train=_num(cfg, "max_position_embeddings"),
    )
