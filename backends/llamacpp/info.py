"""The llama.cpp backend as the registry describes it (imports no llama_cpp)."""

from __future__ import annotations

from edged.backends.info import BackendInfo, MiB

INFO = BackendInfo(
    name="llama.cpp",
    formats=("gguf",),
    module="llama_cpp",
    distribution="llama-cpp-python",
    engine="edged.backends.llamacpp.engine:load_engine",
    install_hint="run ./install.sh (it builds llama-cpp-python for this CPU)",
    devices=("cpu", "cuda"),
    cpu_rank=0,  # batching and saved session KV: first on the CPU until calibrated
    kv_element_bytes=(("cpu", 2.0), ("cuda", 2.0)),  # f16 K and V
    kv_types=("f16", "q8_0", "q4_0"),  # type_k/type_v (quantized V: flash attention)
    rpc=True,  # ggml's RPC backend: layers on `edged rpc-worker` machines
    runtime_bytes=48 * MiB,
    placement="edged.backends.llamacpp.placement:accelerator_choices",
    probe="edged.backends.llamacpp.probe:probe",
    apply_probe="edged.backends.llamacpp.probe:apply",
    teacher_forced="edged.backends.llamacpp.fidelity:open_teacher_forced",
    greedy="edged.backends.llamacpp.fidelity:LlamaGreedy",
    tokenizer="edged.backends.llamacpp.fidelity:tokenize",
    exact_reference="edged.backends.llamacpp.exact:write_exact",
)
