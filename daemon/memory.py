"""How much memory a model needs once loaded: weights + KV cache + overhead.

The scheduler calls :func:`estimate_memory` before it loads a model (to refuse
the load, or to unload idle models to make room) and backend selection calls it
to decide whether a model fits a GPU. Everything here is a pure function of
:class:`ModelFacts` except :func:`model_facts`, which reads them from a model
file's header (a GGUF header, an ONNX ``genai_config.json``, an OpenVINO IR
``config.json``) without loading the model.

How each part is sized (checked against llama.cpp's own load log for SmolLM2):

- weights: the tensor bytes of the file (llama.cpp maps the file; every page is
  touched by the first decode, so it all ends up resident).
- KV: ``2 (K and V) x n_layer x cells x n_head_kv x head_dim x bytes``, where
  ``cells = min(context_length, n_ctx_train) x sequences``: the llama.cpp engine
  makes one context of ``n_ctx_seq x n_seq`` cells with a unified KV cache
  (``backends/llamacpp/engine.py``); ONNX Runtime GenAI gives each running
  sequence its own ``max_length`` buffer, which adds up to the same cells.
  Element size per backend/device: :data:`KV_BYTES`.
- overhead: the compute buffer (llama.cpp reserves about ``n_ubatch x 4 x
  (n_vocab + 2 n_embd)`` bytes on the CPU: exactly the 98.25 MiB its log prints
  for SmolLM2 with n_ubatch 512; mostly the logits of a full batch), the output
  buffer (``sequences x n_vocab x 4``), plus the worker process's runtime
  (:data:`RUNTIME_BYTES`, measured: a Python worker with llama.cpp imported is
  ~41 MiB before the model) and, on a CUDA device, the CUDA context.

Example::

    facts = model_facts(Path("smollm2.gguf"), "gguf")
    est = estimate_memory(facts, context_length=4096, sequences=4)
    est.total_bytes  # what the load will take, bytes
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edged.daemon.errors import InvalidModelFile

MiB = 1 << 20

# Bytes per KV element by (backend, device kind). llama.cpp keeps f16 K/V;
# ONNX Runtime GenAI's int4 CPU models keep f32 (their io dtype), f16 on CUDA;
# OpenVINO's CPU plugin stores the KV cache as u8 (+ per-token scales) and its
# GPU plugin as f16.
KV_BYTES: dict[tuple[str, str], float] = {
    ("llama.cpp", "cpu"): 2.0,
    ("llama.cpp", "cuda"): 2.0,
    ("onnxruntime", "cpu"): 4.0,
    ("onnxruntime", "cuda"): 2.0,
    ("openvino", "cpu"): 1.0,
    ("openvino", "gpu"): 2.0,
    ("openvino", "npu"): 2.0,
}
DEFAULT_KV_BYTES = 2.0

# Resident memory of a worker process before the model: interpreter, edged,
# the backend library. Measured on this project's workers (see module doc).
RUNTIME_BYTES: dict[str, int] = {
    "llama.cpp": 48 * MiB,
    "onnxruntime": 96 * MiB,
    "openvino": 192 * MiB,
}
DEFAULT_RUNTIME_BYTES = 96 * MiB
CUDA_CONTEXT_BYTES = 384 * MiB  # VRAM a CUDA context takes before any buffer
UBATCH = 512  # the llama.cpp engine's n_batch = n_ubatch (PREFILL_CHUNK)


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


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.overhead_bytes


def device_kind(device: str) -> str:
    """``"cuda:1"`` -> ``"cuda"``, ``"GPU.0"`` -> ``"gpu"``, ``""`` -> ``"cpu"``."""
    return (device.split(":")[0].split(".")[0] or "cpu").lower()


def context_cells(facts: ModelFacts, context_length: int, sequences: int) -> int:
    """KV cells the engines allocate: per-sequence context (capped at the
    model's training context, as the engines do) times sequences."""
    ctx = max(1, context_length)
    if facts.context_train:
        ctx = min(ctx, facts.context_train)
    return ctx * max(1, sequences)


def kv_bytes(
    facts: ModelFacts,
    *,
    context_length: int,
    sequences: int,
    backend: str = "llama.cpp",
    device: str = "cpu",
    layers: int | None = None,
) -> int:
    """The KV cache for ``layers`` (default all) layers."""
    n_layer = facts.n_layer if layers is None else min(layers, facts.n_layer)
    if not n_layer or not facts.n_head_kv:
        return 0
    head = facts.head_dim_k + facts.head_dim_v
    elem = KV_BYTES.get((backend, device_kind(device)), DEFAULT_KV_BYTES)
    cells = context_cells(facts, context_length, sequences)
    return int(n_layer * cells * facts.n_head_kv * head * elem)


def compute_bytes(facts: ModelFacts, *, sequences: int) -> int:
    """Scratch buffers: llama.cpp's compute buffer plus its output buffer."""
    if not facts.n_vocab:
        return 64 * MiB
    width = facts.n_vocab + 2 * facts.n_embd
    return UBATCH * 4 * width + max(1, sequences) * facts.n_vocab * 4


def estimate_memory(
    facts: ModelFacts,
    *,
    context_length: int,
    sequences: int,
    backend: str = "llama.cpp",
    device: str = "cpu",
) -> MemoryEstimate:
    """Memory a worker needs for this model, context and sequence count.

    ``context_length`` is tokens per sequence (EDGED_CONTEXT or the request's),
    ``sequences`` the sequences resident at once (EDGED_PARALLEL). The result
    is the whole need, wherever it lives; :func:`gpu_split` divides it between
    a GPU and the host for a partial offload.
    """
    kv = kv_bytes(
        facts,
        context_length=context_length,
        sequences=sequences,
        backend=backend,
        device=device,
    )
    overhead = compute_bytes(facts, sequences=sequences)
    overhead += RUNTIME_BYTES.get(backend, DEFAULT_RUNTIME_BYTES)
    if device_kind(device) == "cuda":
        overhead += CUDA_CONTEXT_BYTES
    return MemoryEstimate(facts.weights_bytes, kv, overhead)


def gpu_need(
    facts: ModelFacts,
    *,
    context_length: int,
    sequences: int,
    gpu_layers: int,
    backend: str = "llama.cpp",
    device: str = "cuda:0",
) -> int:
    """VRAM that offloading ``gpu_layers`` repeating layers takes: their
    weights and KV, the output layer once every layer is there, the compute
    buffer and the CUDA context."""
    n = max(0, min(gpu_layers, facts.n_layer or gpu_layers))
    weights = n * facts.per_layer_bytes
    if facts.n_layer and n >= facts.n_layer:
        weights = facts.weights_bytes  # llama.cpp then offloads the output layer too
    kv = kv_bytes(
        facts,
        context_length=context_length,
        sequences=sequences,
        backend=backend,
        device=device,
        layers=n,
    )
    fixed = compute_bytes(facts, sequences=sequences)
    if device_kind(device) == "cuda":
        fixed += CUDA_CONTEXT_BYTES
    return weights + kv + fixed


def layers_that_fit(
    facts: ModelFacts,
    free_bytes: int,
    *,
    context_length: int,
    sequences: int,
    backend: str = "llama.cpp",
    device: str = "cuda:0",
    reserve_bytes: int = 256 * MiB,
) -> int:
    """The most repeating layers whose weights + KV fit in ``free_bytes`` of
    device memory, keeping ``reserve_bytes`` free (other processes, the
    driver's own growth). ``facts.n_layer`` means the whole model fits."""
    if not facts.n_layer:
        return 0
    budget = free_bytes - reserve_bytes
    best = 0
    for n in range(facts.n_layer + 1):
        need = gpu_need(
            facts,
            context_length=context_length,
            sequences=sequences,
            gpu_layers=n,
            backend=backend,
            device=device,
        )
        if need > budget:
            break
        best = n
    return best


# ---------------------------------------------------------------- reading facts


def model_facts(path: Path, fmt: str) -> ModelFacts:
    """Read a variant's facts from its files (headers and configs only).

    ``path`` is the GGUF file, or the ONNX / OpenVINO IR folder. Raises
    :class:`InvalidModelFile` when the header cannot be read.
    """
    if fmt == "gguf":
        return _gguf_facts(path)
    if fmt == "onnx":
        return _onnx_facts(path)
    return _folder_facts(path)


def _int(meta: dict[str, str], key: str) -> int:
    try:
        return int(meta.get(key, "0"))
    except ValueError:
        return 0


def _gguf_facts(path: Path) -> ModelFacts:
    from edged.models_registry.gguf import read_gguf_info

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


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModelFile(f"could not read {path.name}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidModelFile(f"{path.name} is not a JSON object")
    return data


def _num(d: object, key: str) -> int:
    value = d.get(key) if isinstance(d, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _onnx_facts(folder: Path) -> ModelFacts:
    cfg = _read_json(folder / "genai_config.json")
    model = cfg.get("model")
    model = model if isinstance(model, dict) else {}
    dec = model.get("decoder")
    head = _num(dec, "head_size")
    return ModelFacts(
        weights_bytes=_folder_bytes(folder, (".onnx", ".data", ".onnx_data", ".bin")),
        n_layer=_num(dec, "num_hidden_layers"),
        n_embd=_num(dec, "hidden_size"),
        n_head=_num(dec, "num_attention_heads"),
        n_head_kv=_num(dec, "num_key_value_heads") or _num(dec, "num_attention_heads"),
        head_dim_k=head,
        head_dim_v=head,
        n_vocab=_num(model, "vocab_size"),
        context_train=_num(model, "context_length"),
    )


def _folder_facts(folder: Path) -> ModelFacts:
    """An OpenVINO IR folder (openvino_model.xml/.bin + Hugging Face config.json)."""
    weights = _folder_bytes(folder, (".bin",))
    config = folder / "config.json"
    if not config.is_file():
        return ModelFacts(weights_bytes=weights)
    cfg = _read_json(config)
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
