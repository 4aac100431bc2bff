"""Backend selection is a pure function: table-tested here."""

from __future__ import annotations

import pytest

from edged.daemon.hardware import HardwareProfile, probe, select_backends


def hw(**kw: object) -> HardwareProfile:
    base = dict(
        os="linux",
        arch="x86_64",
        cpu="test",
        cores=2,
        threads=2,
        cpu_features=frozenset({"avx2"}),
        memory_total=8 << 30,
        memory_available=4 << 30,
    )
    base.update(kw)
    return HardwareProfile(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("profile", "formats", "installed", "cuda", "first"),
    [
        (hw(), ["gguf"], ["llama.cpp"], False, ("llama.cpp", "cpu", True)),
        (
            hw(nvidia_gpus=("H100, 80GB",)),
            ["gguf"],
            ["llama.cpp"],
            True,
            ("llama.cpp", "cuda:0", True),
        ),
        (
            hw(nvidia_gpus=("H100, 80GB",)),
            ["gguf"],
            ["llama.cpp"],
            False,
            ("llama.cpp", "cpu", True),
        ),
        (hw(), ["gguf"], [], False, ("llama.cpp", "cpu", False)),
        (hw(), ["onnx"], ["llama.cpp"], False, ("llama.cpp", "cpu", False)),
    ],
)
def test_selection_table(
    profile: HardwareProfile,
    formats: list[str],
    installed: list[str],
    cuda: bool,
    first: tuple[str, str, bool],
) -> None:
    choices = select_backends(profile, formats, installed, llama_cuda=cuda)
    c = choices[0]
    assert (c.backend, c.device, c.available) == first
    assert all(ch.reasons for ch in choices)


def test_gpu_without_cuda_build_says_why() -> None:
    choices = select_backends(hw(nvidia_gpus=("A100",)), ["gguf"], ["llama.cpp"], llama_cuda=False)
    gpu = next(c for c in choices if c.device.startswith("cuda"))
    assert not gpu.available and any("without CUDA" in r for r in gpu.reasons)


def test_probe_reads_this_machine() -> None:
    p = probe()
    assert p.threads >= 1 and p.memory_total > 0 and p.cpu
