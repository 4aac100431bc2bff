"""The ONNX Runtime GenAI backend as the registry describes it (imports no onnxruntime)."""

from __future__ import annotations

from edged.backends.info import BackendInfo, MiB

INFO = BackendInfo(
    name="onnxruntime",
    formats=("onnx",),
    module="onnxruntime_genai",
    distribution="onnxruntime-genai",
    engine="edged.backends.onnx.engine:OnnxEngine",
    install_hint="pip install 'edged[onnx]' (onnxruntime-genai)",
    devices=("cpu",),
    cpu_rank=2,  # one stream per request, no saved session KV
    # int4 CPU models keep f32 K/V (their io dtype), f16 on CUDA
    kv_element_bytes=(("cpu", 4.0), ("cuda", 2.0)),
    runtime_bytes=96 * MiB,
    kv_types=("f16",),  # its own KV layout only: no KV quantization choice
    aliases=("onnx",),
    converts_to="onnx",
    placement="edged.backends.onnx.placement:accelerator_choices",
    probe="edged.backends.onnx.probe:probe",
    apply_probe="edged.backends.onnx.probe:apply",
    teacher_forced="edged.backends.onnx.fidelity:OnnxTeacherForced",
)
