"""LoadSpec.device/gpu_layers -> llama.cpp's model params (no GPU needed).

The real CUDA path needs an NVIDIA GPU and a CUDA build of llama.cpp; here the
parameters handed to ``llama_model_load_from_file`` are captured instead.
"""

from __future__ import annotations

from typing import Any

import llama_cpp as lc
import pytest

from edged.backends.base import LoadSpec
from edged.backends.llamacpp import engine
from edged.backends.llamacpp.engine import offloaded_layers
from edged.backends.llamacpp.native import NativeModel, Offload, offload_for
from edged.common.errors import FailedPrecondition, InvalidModelFile


@pytest.mark.parametrize(
    ("device", "layers", "expected"),
    [
        ("cpu", 0, Offload(0)),
        ("cpu", 99, Offload(0)),  # the CPU ignores gpu_layers
        ("", -1, Offload(0)),
        ("cuda", 0, Offload(-1)),  # not said: all
        ("cuda:0", -1, Offload(-1, 0)),
        ("cuda:1", 12, Offload(12, 1)),  # partial offload on GPU 1 only
    ],
)
def test_offload_for(device: str, layers: int, expected: Offload) -> None:
    assert offload_for(device, layers) == expected


@pytest.mark.parametrize("device", ["npu", "gpu.0", "cuda:x"])
def test_offload_for_refuses_devices_llama_cpp_does_not_run(device: str) -> None:
    with pytest.raises(FailedPrecondition, match="cuda"):
        offload_for(device, 0)


def test_offloaded_layers_counts_the_output_layer() -> None:
    assert offloaded_layers(0, 30) == 0
    assert offloaded_layers(-1, 30) == 31
    assert offloaded_layers(10, 30) == 10
    assert offloaded_layers(999, 30) == 31


def test_params_reach_llama_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int, int]] = []

    def fake_load(path: bytes, params: Any) -> None:
        seen.append((params.n_gpu_layers, params.main_gpu, params.split_mode))
        return None  # "could not load": NativeModel raises after recording

    monkeypatch.setattr(lc, "llama_model_load_from_file", fake_load)
    for offload in (Offload(0), Offload(-1), Offload(20, 1)):
        with pytest.raises(InvalidModelFile):
            NativeModel.load("/nonexistent.gguf", offload=offload)
    default_split = lc.llama_model_default_params().split_mode
    assert seen == [
        (0, 0, default_split),
        (-1, 0, default_split),
        (20, 1, lc.LLAMA_SPLIT_MODE_NONE),
    ]


def test_cuda_without_a_cuda_build_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "gpu_offload_supported", lambda: False)
    spec = LoadSpec("/nonexistent.gguf", "sha256:" + "0" * 64, 512, 1, device="cuda:0")
    with pytest.raises(FailedPrecondition, match="built without CUDA"):
        engine.LlamaEngine(spec)
