"""The memory estimate, checked against what llama.cpp itself allocates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edged.backends.info import MiB
from edged.backends.llamacpp.placement import gpu_need, layers_that_fit
from edged.backends.memory import estimate_memory, kv_bytes
from edged.common.errors import InvalidModelFile
from edged.common.model_facts import ModelFacts, model_facts

LLAMA = "llama.cpp"

SMOLLM2 = ModelFacts(
    weights_bytes=96_576_768, n_layer=30, n_embd=576, n_head=9, n_head_kv=3,
    head_dim_k=64, head_dim_v=64, n_ff=1536, n_vocab=49152, context_train=8192,
    layer_bytes=2_216_448,
)  # fmt: skip


@pytest.mark.parametrize(
    ("ctx", "seqs", "mib"),
    # llama.cpp's own log for SmolLM2 with the engine's context sizing
    # (n_ctx = context x sequences, unified KV): "KV buffer size = 180.00 MiB" ...
    [(2048, 4, 180.0), (4096, 4, 360.0), (4096, 1, 90.0), (16384, 1, 180.0)],
)
def test_kv_matches_llama_cpp(ctx: int, seqs: int, mib: float) -> None:
    # 16384 x 1 is capped at the model's training context (8192), as the engine does
    assert kv_bytes(SMOLLM2, context_length=ctx, sequences=seqs, backend=LLAMA) == int(mib * MiB)


def test_compute_buffer_matches_llama_cpp() -> None:
    est = estimate_memory(SMOLLM2, context_length=2048, sequences=4, backend=LLAMA)
    # "CPU compute buffer size = 98.25 MiB" + "CPU output buffer size = 0.75 MiB" + runtime
    assert est.overhead_bytes == int((98.25 + 0.75) * MiB) + 48 * MiB
    assert est.total_bytes == est.weights_bytes + est.kv_bytes + est.overhead_bytes


def test_backend_and_device_change_the_estimate() -> None:
    cpu = estimate_memory(SMOLLM2, context_length=4096, sequences=4, backend=LLAMA)
    onnx = estimate_memory(SMOLLM2, context_length=4096, sequences=4, backend="onnxruntime")
    cuda = estimate_memory(
        SMOLLM2, context_length=4096, sequences=4, backend=LLAMA, device="cuda:0"
    )
    assert onnx.kv_bytes == 2 * cpu.kv_bytes  # f32 KV
    assert cuda.overhead_bytes > cpu.overhead_bytes  # the CUDA context


def test_unknown_shape_counts_weights_only() -> None:
    est = estimate_memory(
        ModelFacts(weights_bytes=1 << 30), context_length=4096, sequences=4, backend=LLAMA
    )
    assert est.kv_bytes == 0 and est.weights_bytes == 1 << 30 and est.overhead_bytes > 0


def test_layers_that_fit_grow_with_memory_and_stop_at_all() -> None:
    big = ModelFacts(
        weights_bytes=4 << 30, n_layer=32, n_embd=4096, n_head=32, n_head_kv=8,
        head_dim_k=128, head_dim_v=128, n_ff=14336, n_vocab=128256, context_train=8192,
    )  # fmt: skip
    fits = [
        layers_that_fit(big, gib << 30, context_length=4096, sequences=1) for gib in range(1, 12)
    ]
    assert fits == sorted(fits) and fits[0] < 32 and fits[-1] == 32
    n = fits[3]
    need = gpu_need(big, context_length=4096, sequences=1, gpu_layers=n)
    assert need <= (4 << 30) - 256 * MiB
    assert gpu_need(big, context_length=4096, sequences=1, gpu_layers=n + 1) > need


def test_facts_from_onnx_and_ir_configs(tmp_path: Path) -> None:
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "model.onnx.data").write_bytes(b"\0" * 1000)
    (onnx / "genai_config.json").write_text(
        json.dumps(
            {
                "model": {
                    "context_length": 8192,
                    "vocab_size": 49152,
                    "decoder": {
                        "head_size": 64,
                        "hidden_size": 576,
                        "num_attention_heads": 9,
                        "num_hidden_layers": 30,
                        "num_key_value_heads": 3,
                    },
                }
            }
        )
    )
    f = model_facts(onnx, "onnx")
    assert (f.n_layer, f.n_head_kv, f.head_dim_k, f.weights_bytes) == (30, 3, 64, 1000)
    ir = tmp_path / "ir"
    ir.mkdir()
    (ir / "openvino_model.bin").write_bytes(b"\0" * 10)
    (ir / "config.json").write_text(
        json.dumps({"hidden_size": 576, "num_attention_heads": 9, "num_hidden_layers": 30})
    )
    g = model_facts(ir, "openvino")
    assert (g.n_layer, g.n_head_kv, g.head_dim_k, g.weights_bytes) == (30, 9, 64, 10)
    (onnx / "genai_config.json").write_text("not json")
    with pytest.raises(InvalidModelFile):
        model_facts(onnx, "onnx")


def test_a_quantized_kv_cache_lets_more_layers_fit_and_shrinks_the_cpu_estimate() -> None:
    """Placement sizes the KV cache as the load will get it (EDGED_KV_TYPE / setting)."""
    big = ModelFacts(
        weights_bytes=4 << 30,
        n_layer=32,
        n_embd=4096,
        n_head=32,
        n_head_kv=32,
        head_dim_k=128,
        head_dim_v=128,
        n_vocab=32000,
        context_train=32768,
    )
    kw = {"context_length": 32768, "sequences": 4}
    f16 = layers_that_fit(big, 12 << 30, **kw)  # type: ignore[arg-type]
    q8 = layers_that_fit(big, 12 << 30, kv_type="q8_0", **kw)  # type: ignore[arg-type]
    assert 0 < f16 < q8
    f16_need = gpu_need(big, gpu_layers=32, **kw)  # type: ignore[arg-type]
    q8_need = gpu_need(big, gpu_layers=32, kv_type="q8_0", **kw)  # type: ignore[arg-type]
    assert q8_need < f16_need
