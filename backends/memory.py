"""How much memory a model needs once loaded: weights + KV cache + overhead.

The scheduler calls :func:`estimate_memory` before it loads a model (to refuse
the load, or to unload idle models to make room) and backend placement calls
it to decide whether a model fits a device. Everything here is a pure
function of :class:`~edged.common.model_facts.ModelFacts` and the backend's
own tables (:class:`~edged.backends.info.BackendInfo`: bytes per KV element
by device kind, the worker's runtime memory).

How each part is sized (checked against llama.cpp's own load log for SmolLM2):

- weights: the tensor bytes of the file (llama.cpp maps the file; every page is
  touched by the first decode, so it all ends up resident).
- KV: ``2 (K and V) x n_layer x cells x n_head_kv x head_dim x bytes``, where
  ``cells = min(context_length, n_ctx_train) x sequences``: the llama.cpp engine
  makes one context of ``n_ctx_seq x n_seq`` cells; ONNX Runtime GenAI gives
  each running sequence its own ``max_length`` buffer, which adds up to the
  same cells. Element size: the backend's ``kv_element_bytes``, scaled by the
  KV type (q8_0: 34/32 bytes, q4_0: 18/32, as against f16's 2).
- overhead: the compute buffer (llama.cpp reserves about ``n_ubatch x 4 x
  (n_vocab + 2 n_embd)`` bytes on the CPU: exactly the 98.25 MiB its log prints
  for SmolLM2 with n_ubatch 512; mostly the logits of a full batch), the output
  buffer (``sequences x n_vocab x 4``), plus the worker process's runtime
  (the backend's ``runtime_bytes``) and, on a CUDA device, the CUDA context.

Example::

    facts = model_facts(Path("smollm2.gguf"), "gguf")
    est = estimate_memory(facts, context_length=4096, sequences=4, backend="llama.cpp")
    est.total_bytes  # what the load will take, bytes
"""

from __future__ import annotations

from dataclasses import dataclass

from edged.backends.info import MiB
from edged.backends.registry import backend_info
from edged.common.model_facts import ModelFacts

CUDA_CONTEXT_BYTES = 384 * MiB  # VRAM a CUDA context takes before any buffer
UBATCH = 512  # tokens per micro-batch (the llama.cpp engine's PREFILL_CHUNK)
# Bytes per KV element by KV type, relative to f16's 2: a q8_0 block holds 32
# values in 34 bytes (an f16 scale + 32 int8), a q4_0 block in 18 (scale + 16)
KV_TYPE_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_bytes: int
    overhead_bytes: int
    kv_type: str = "f16"  # what the KV part is sized for

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
    backend: str,
    device: str = "cpu",
    layers: int | None = None,
    kv_type: str = "f16",
) -> int:
    """The KV cache for ``layers`` (default all) layers; ``kv_type`` other than
    f16 (only on a backend offering it) scales the backend's element size."""
    n_layer = facts.n_layer if layers is None else min(layers, facts.n_layer)
    if not n_layer or not facts.n_head_kv:
        return 0
    head = facts.head_dim_k + facts.head_dim_v
    elem = backend_info(backend).kv_bytes(device_kind(device))
    elem *= KV_TYPE_BYTES.get(kv_type, 2.0) / KV_TYPE_BYTES["f16"]
    cells = context_cells(facts, context_length, sequences)
    return int(n_layer * cells * facts.n_head_kv * head * elem)


def compute_bytes(facts: ModelFacts, *, sequences: int) -> int:
    """Scratch buffers: the compute buffer of a full micro-batch plus the output buffer."""
    if not facts.n_vocab:
        return 64 * MiB
    width = facts.n_vocab + 2 * facts.n_embd
    return UBATCH * 4 * width + max(1, sequences) * facts.n_vocab * 4


def estimate_memory(
    facts: ModelFacts,
    *,
    context_length: int,
    sequences: int,
    backend: str,
    device: str = "cpu",
    kv_type: str = "f16",
) -> MemoryEstimate:
    """Memory a worker needs for this model, context and sequence count.

    ``context_length`` is tokens per sequence (EDGED_CONTEXT or the request's),
    ``sequences`` the sequences resident at once (EDGED_PARALLEL), ``kv_type``
    the KV cache's element type (EDGED_KV_TYPE or the model's). The result
    is the whole need, wherever it lives.
    """
    kv = kv_bytes(
        facts,
        context_length=context_length,
        sequences=sequences,
        backend=backend,
        device=device,
        kv_type=kv_type,
    )
    overhead = compute_bytes(facts, sequences=sequences) + backend_info(backend).runtime_bytes
    if device_kind(device) == "cuda":
        overhead += CUDA_CONTEXT_BYTES
    return MemoryEstimate(facts.weights_bytes, kv, overhead, kv_type)
