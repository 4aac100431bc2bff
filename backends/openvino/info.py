"""The OpenVINO GenAI backend as the registry describes it (imports no openvino)."""

from __future__ import annotations

from edged.backends.info import BackendInfo, MiB

INFO = BackendInfo(
    # Runs a GGUF directly (llama/qwen2/qwen3 architectures). Its engine also
    # loads an OpenVINO IR folder, but the store has no IR variant yet.
    name="openvino",
    formats=("gguf",),
    module="openvino_genai",
    distribution="openvino-genai",
    engine="edged.backends.openvino.engine:OpenVinoEngine",
    install_hint="run ./install.sh --openvino (pip install 'edged[openvino]')",
    devices=("cpu", "gpu", "npu"),
    cpu_rank=1,  # continuous batching, prefix cache for sessions
    # the CPU plugin stores KV as u8 (+ per-token scales), the GPU plugin as f16
    kv_element_bytes=(("cpu", 1.0), ("gpu", 2.0), ("npu", 2.0)),
    runtime_bytes=192 * MiB,
    kv_types=("f16",),  # its own KV layout only: no KV quantization choice
    placement="edged.backends.openvino.placement:accelerator_choices",
    probe="edged.backends.openvino.probe:probe",
    apply_probe="edged.backends.openvino.probe:apply",
    # openvino-genai returns tokens, not logits: compared by greedy continuations
    greedy="edged.backends.openvino.fidelity:OpenVinoGreedy",
)
