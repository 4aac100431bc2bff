"""Backend selection: table tests over recorded hardware profiles (fixtures/hardware)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from edged.backends.registry import Survey, backend_info
from edged.common.hardware_profile import profile_from_dict, profile_to_dict
from edged.common.model_facts import ModelFacts
from edged.daemon.hardware import (
    Choice,
    HardwareProfile,
    Overrides,
    VariantInfo,
    pick_overrides,
    rank_backends,
)
from edged.daemon.hardware.ranking import (
    FIDELITY_MARGIN,
    FIDELITY_THRESHOLD,
    Measured,
    device_matches,
    faithful,
    fidelity_bar,
)

NONE = Overrides()
FIXTURES = Path(__file__).parent / "fixtures" / "hardware"

# SmolLM2-135M Q4_1 as read from its GGUF header.
SMOLLM2 = ModelFacts(
    weights_bytes=96_576_768, n_layer=30, n_embd=576, n_head=9, n_head_kv=3,
    head_dim_k=64, head_dim_v=64, n_ff=1536, n_vocab=49152, context_train=8192,
    layer_bytes=2_216_448,
)  # fmt: skip
# An 8B llama-3 Q4_K_M (shape from its config; ~4.6 GiB of weights).
LLAMA8B = ModelFacts(
    weights_bytes=4_920_734_000, n_layer=32, n_embd=4096, n_head=32, n_head_kv=8,
    head_dim_k=128, head_dim_v=128, n_ff=14336, n_vocab=128256, context_train=131072,
    layer_bytes=136_000_000,
)  # fmt: skip

ALL = (
    Survey(backend_info("llama.cpp"), True, "0.3.36"),
    Survey(backend_info("onnxruntime"), True, "0.18.0"),
    # an OpenVINO that also loads IR folders (what the NPU needs)
    Survey(replace(backend_info("openvino"), formats=("gguf", "openvino")), True, "2026.4"),
)


def profile(name: str) -> HardwareProfile:
    return profile_from_dict(json.loads((FIXTURES / f"{name}.json").read_text()))


def gguf(facts: ModelFacts = SMOLLM2) -> list[VariantInfo]:
    return [VariantInfo("gguf", "gguf", facts.weights_bytes + 2_000_000, facts)]


def rank(
    hw: HardwareProfile,
    variants: list[VariantInfo] | None = None,
    backends: tuple[Survey, ...] = ALL,
    *,
    ctx: int = 4096,
    seqs: int = 4,
    overrides: Overrides = NONE,
    calibrations: Mapping[tuple[str, str], float | Measured] | None = None,
    kv_type: str = "f16",
) -> list[Choice]:
    measured = {
        k: v if isinstance(v, Measured) else Measured(v) for k, v in (calibrations or {}).items()
    }
    choices = rank_backends(
        hw,
        variants if variants is not None else gguf(),
        backends,
        context_length=ctx,
        sequences=seqs,
        overrides=overrides,
        calibrations=measured,
        kv_type=kv_type,
    )
    # invariants of every ranking: available ones first, every rejection explained
    avail = [c.available for c in choices]
    assert avail == sorted(avail, reverse=True)
    assert all(c.reasons for c in choices)
    return choices


def first(choices: list[Choice]) -> tuple[str, str, bool]:
    c = choices[0]
    return c.backend, c.device, c.available


def find(choices: list[Choice], backend: str, device: str) -> Choice:
    return next(c for c in choices if c.backend == backend and c.device == device)


def test_fixtures_round_trip() -> None:
    for path in FIXTURES.glob("*.json"):
        hw = profile_from_dict(json.loads(path.read_text()))
        assert profile_from_dict(profile_to_dict(hw)) == hw, path.name


# ------------------------------------------------------------------ CPU only


def test_cpu_only_uncalibrated_uses_the_static_order() -> None:
    choices = rank(profile("cpu_only"))
    assert first(choices) == ("llama.cpp", "cpu", True)
    assert [c.backend for c in choices if c.available] == ["llama.cpp", "openvino"]
    assert any("not calibrated" in r for r in choices[0].reasons)
    onnx = find(choices, "onnxruntime", "cpu")
    assert not onnx.available and any("edged convert" in r for r in onnx.reasons)
    cuda = find(choices, "llama.cpp", "cuda")
    assert not cuda.available and "no NVIDIA GPU" in cuda.reasons[0]
    assert "NVML Shared Library Not Found" in cuda.reasons[0]
    assert not find(choices, "openvino", "gpu").available
    assert not find(choices, "openvino", "npu").available


def test_cpu_only_calibration_picks_the_faster_backend() -> None:
    choices = rank(
        profile("cpu_only"), calibrations={("openvino", "cpu"): 15.0, ("llama.cpp", "cpu"): 3.5}
    )
    assert first(choices) == ("openvino", "cpu", True)
    assert choices[0].tokens_per_second == 15.0
    assert any("calibrated on this machine: 15.0" in r for r in choices[0].reasons)
    assert choices[1].backend == "llama.cpp"


def test_a_calibrated_backend_ranks_before_an_uncalibrated_one() -> None:
    choices = rank(profile("cpu_only"), calibrations={("openvino", "cpu"): 1.0})
    assert first(choices) == ("openvino", "cpu", True)


def test_a_faster_choice_below_the_fidelity_threshold_ranks_after_a_faithful_one() -> None:
    cals = {
        ("openvino", "cpu"): Measured(150.0, 300.0, 4, agreement=0.90),
        ("llama.cpp", "cpu"): Measured(100.0, 150.0, 4, is_reference=True),
    }
    choices = rank(profile("cpu_only"), calibrations=cals)
    assert first(choices) == ("llama.cpp", "cpu", True)
    ov = find(choices, "openvino", "cpu")
    assert ov.available and ov.faithful is False and choices[0].faithful is True
    assert any("below the fidelity threshold" in r for r in ov.reasons)
    # ...unless it is asked for
    asked = rank(profile("cpu_only"), calibrations=cals, overrides=Overrides("openvino", "", "x"))
    assert first(asked) == ("openvino", "cpu", True)


def test_faithful_choices_rank_by_their_worse_speed_ratio() -> None:
    # llama.cpp: 110 alone, 158 at 4 (0.58 of the best aggregate); openvino: 83 and
    # 272 (0.75 of the best single) -> openvino's worst ratio is better.
    cals = {
        ("llama.cpp", "cpu"): Measured(110.0, 158.0, 4, is_reference=True),
        ("openvino", "cpu"): Measured(83.0, 272.0, 4, agreement=0.995),
    }
    choices = rank(profile("cpu_only"), calibrations=cals)
    assert first(choices) == ("openvino", "cpu", True)
    assert any("83.0 tokens/s decode at 1 stream, 272.0 at 4" in r for r in choices[0].reasons)
    assert Measured(110.0, 158.0, 4).score(110.0, 272.0) == pytest.approx(158 / 272)
    # one stream only (EDGED_PARALLEL=1): the single-stream figure decides
    single = {k: replace(m, aggregate_tokens_per_second=0.0, streams=1) for k, m in cals.items()}
    assert first(rank(profile("cpu_only"), calibrations=single)) == ("llama.cpp", "cpu", True)


def test_when_no_choice_reaches_the_threshold_the_most_faithful_counts_as_within() -> None:
    cals = {
        ("llama.cpp", "cpu"): Measured(50.0, agreement=0.95),
        ("openvino", "cpu"): Measured(90.0, agreement=0.80),
    }
    choices = rank(profile("cpu_only"), calibrations=cals)
    assert first(choices) == ("llama.cpp", "cpu", True)
    assert choices[0].faithful is True and find(choices, "openvino", "cpu").faithful is False
    assert faithful({"a": Measured(1.0, agreement=0.999), "b": Measured(1.0)}) == {
        "a": True,
        "b": None,
    }


def test_against_exact_arithmetic_a_choice_within_the_margin_of_the_best_is_faithful() -> None:
    # The figures bench.choice measured against the exact F32 reference. SmolLM2:
    # llama.cpp 0.954, the transcoded ONNX model 0.968 -> both within 0.02, so
    # speed decides (llama.cpp: 1.6x ONNX's aggregate).
    smol = {
        "llama.cpp": Measured(123.3, 164.7, 4, agreement=0.954),
        "onnxruntime": Measured(121.6, 99.9, 4, agreement=0.968),
    }
    assert fidelity_bar(smol) == pytest.approx(0.968 - FIDELITY_MARGIN)
    assert faithful(smol) == {"llama.cpp": True, "onnxruntime": True}
    # Gemma 3: llama.cpp 0.939, ONNX 0.967 -> llama.cpp is below, whatever its speed
    gemma = {
        "llama.cpp": Measured(64.8, 118.8, 4, agreement=0.939),
        "onnxruntime": Measured(76.2, 56.9, 4, agreement=0.967),
        "openvino": Measured(200.0, 300.0, 4, agreement=0.677),
    }
    assert faithful(gemma) == {"llama.cpp": False, "onnxruntime": True, "openvino": False}
    # 0.99 is always within, however close the best comes to 1
    assert faithful({"a": Measured(1.0, is_reference=True), "b": Measured(1.0, agreement=0.99)})[
        "b"
    ]
    assert not faithful(
        {"a": Measured(1.0, is_reference=True), "b": Measured(1.0, agreement=0.979)}
    )["b"]
    assert fidelity_bar({}) == FIDELITY_THRESHOLD


def test_the_ranking_says_which_bar_a_choice_was_held_to() -> None:
    cals = {
        ("llama.cpp", "cpu"): Measured(64.8, 118.8, 4, agreement=0.939),
        ("openvino", "cpu"): Measured(76.2, 56.9, 4, agreement=0.967),
    }
    choices = rank(profile("cpu_only"), calibrations=cals)
    assert first(choices) == ("openvino", "cpu", True)
    lc = find(choices, "llama.cpp", "cpu")
    assert lc.faithful is False and lc.fidelity_bar == pytest.approx(0.947)
    assert any("top-1 agreement 0.947 with the reference" in r for r in lc.reasons)
    # not calibrated: no bar
    assert find(rank(profile("cpu_only")), "llama.cpp", "cpu").fidelity_bar == 0.0


def test_an_unmeasured_fidelity_ranks_between_within_and_below() -> None:
    cals = {
        ("llama.cpp", "cpu"): Measured(10.0, agreement=0.5),
        ("openvino", "cpu"): Measured(5.0),  # fidelity failed or not measured
    }
    # the only measured one counts as within (nothing better was measured)
    assert first(rank(profile("cpu_only"), calibrations=cals)) == ("llama.cpp", "cpu", True)
    cals[("onnxruntime", "cpu")] = Measured(1.0, agreement=0.999)
    choices = rank(profile("cpu_only"), calibrations=cals)
    avail = [c.backend for c in choices if c.available]
    assert avail == ["openvino", "llama.cpp"]  # onnxruntime has no ONNX variant here


def test_the_estimate_sizes_the_kv_cache_as_the_load_gets_it() -> None:
    f16 = find(rank(profile("cpu_only")), "llama.cpp", "cpu")
    q8 = find(rank(profile("cpu_only"), kv_type="q8_0"), "llama.cpp", "cpu")
    assert q8.memory_bytes < f16.memory_bytes
    assert any("as q8_0" in r for r in q8.reasons) and any("as f16" in r for r in f16.reasons)
    # a backend without KV quantization keeps its own KV layout
    ov = find(rank(profile("cpu_only"), kv_type="q8_0"), "openvino", "cpu")
    assert any("as f16" in r for r in ov.reasons)


def test_cpu_memory_estimate_and_too_big_for_ram() -> None:
    hw = profile("cpu_only")
    c = rank(hw)[0]
    assert c.fit == "fits" and 300 << 20 < c.memory_bytes < 700 << 20
    tiny = replace(hw, memory_total=2 << 30, memory_available=1 << 30)
    choices = rank(tiny, gguf(LLAMA8B))
    llama = find(choices, "llama.cpp", "cpu")
    assert not llama.available and llama.fit == "no"
    assert any("RAM" in r for r in llama.reasons)


# ------------------------------------------------------------------ NVIDIA


def test_nvidia_dgpu_beats_the_intel_igpu() -> None:
    choices = rank(profile("nvidia_dgpu_intel_igpu"))
    assert first(choices) == ("llama.cpp", "cuda:0", True)
    top = choices[0]
    assert top.fit == "fits" and top.gpu_layers == SMOLLM2.n_layer + 1
    assert "RTX 4090" in top.reasons[0]
    igpu = find(choices, "openvino", "gpu")
    assert igpu.available and choices.index(igpu) == 1
    ort_cuda = find(choices, "onnxruntime", "cuda:0")
    assert not ort_cuda.available and "CPU only" in ort_cuda.reasons[0]


def test_nvidia_without_a_cuda_build_says_why() -> None:
    hw = replace(profile("nvidia_dgpu_intel_igpu"), llama_gpu_offload=False)
    choices = rank(hw)
    cuda = find(choices, "llama.cpp", "cuda:0")
    assert not cuda.available and any("without CUDA" in r for r in cuda.reasons)
    assert first(choices) == ("openvino", "gpu", True)


def test_small_vram_gpu_few_layers_ranks_after_the_cpu() -> None:
    choices = rank(profile("small_vram_gpu"), gguf(LLAMA8B))
    assert first(choices) == ("llama.cpp", "cpu", True)
    cuda = find(choices, "llama.cpp", "cuda:0")
    assert cuda.available and cuda.fit == "partial"
    assert 0 < cuda.gpu_layers < LLAMA8B.n_layer // 2
    why = " ".join(cuda.reasons)
    assert f"of {LLAMA8B.n_layer} layers fit" in why and "CPU ranks first" in why


def test_small_vram_gpu_holds_a_small_model_whole() -> None:
    choices = rank(profile("small_vram_gpu"))
    assert first(choices) == ("llama.cpp", "cuda:0", True)
    assert choices[0].fit == "fits"


def test_partial_offload_with_most_layers_ranks_first() -> None:
    hw = profile("small_vram_gpu")
    gpu = replace(hw.nvidia_gpus[0], vram_total=6 << 30, vram_free=5 << 30)
    choices = rank(replace(hw, nvidia_gpus=(gpu,)), gguf(LLAMA8B))
    top = choices[0]
    assert (top.backend, top.device, top.fit) == ("llama.cpp", "cuda:0", "partial")
    assert LLAMA8B.n_layer // 2 <= top.gpu_layers < LLAMA8B.n_layer
    # less context means more layers fit
    smaller = rank(replace(hw, nvidia_gpus=(gpu,)), gguf(LLAMA8B), ctx=1024, seqs=1)[0]
    assert smaller.gpu_layers > top.gpu_layers


def test_gpu_that_cannot_hold_one_layer_is_rejected() -> None:
    hw = profile("small_vram_gpu")
    gpu = replace(hw.nvidia_gpus[0], vram_free=300 << 20)
    choices = rank(replace(hw, nvidia_gpus=(gpu,)), gguf(LLAMA8B))
    cuda = find(choices, "llama.cpp", "cuda:0")
    assert not cuda.available and cuda.fit == "no"
    assert any("not even one layer" in r for r in cuda.reasons)
    assert first(choices) == ("llama.cpp", "cpu", True)


def test_two_gpus_most_free_vram_first() -> None:
    hw = profile("nvidia_dgpu_intel_igpu")
    busy = replace(hw.nvidia_gpus[0], index=1, name="NVIDIA RTX A2000", vram_free=1 << 30)
    choices = rank(replace(hw, nvidia_gpus=(busy, hw.nvidia_gpus[0])))
    assert [c.device for c in choices[:2]] == ["cuda:0", "cuda:1"]


# ------------------------------------------------------------------ Intel GPU / NPU


def test_intel_igpu_and_npu_only() -> None:
    choices = rank(profile("intel_igpu_npu"))
    assert first(choices) == ("openvino", "gpu", True)
    assert any("integrated GPU ranks above" in r for r in choices[0].reasons)
    npu = find(choices, "openvino", "npu")
    assert not npu.available and any("OpenVINO IR" in r for r in npu.reasons)
    assert choices[1].device == "cpu"


def test_npu_with_an_ir_variant_ranks_between_igpu_and_cpu() -> None:
    ir = VariantInfo("openvino-int4", "openvino", 90_000_000, SMOLLM2)
    choices = rank(profile("intel_igpu_npu"), [*gguf(), ir])
    devices = [c.device for c in choices if c.available]
    assert devices[:3] == ["gpu", "npu", "cpu"]
    assert find(choices, "openvino", "npu").variant == "openvino-int4"


def test_discrete_intel_gpu_beats_the_integrated_one() -> None:
    choices = rank(profile("intel_arc_dgpu_igpu"))
    assert [c.device for c in choices[:3]] == ["gpu.1", "gpu.0", "cpu"]
    assert "discrete" in choices[0].reasons[0]


def test_openvino_not_installed_says_how_to_install() -> None:
    backends = (ALL[0], ALL[1], replace(ALL[2], installed=False))
    choices = rank(profile("intel_igpu_npu"), backends=backends)
    assert first(choices) == ("llama.cpp", "cpu", True)
    gpu = find(choices, "openvino", "gpu")
    assert not gpu.available and any("pip install" in r for r in gpu.reasons)


# ------------------------------------------------------------------ overrides


def test_override_precedence_request_model_global() -> None:
    req, model, glob = (
        Overrides("onnxruntime", "", "the request"),
        Overrides("openvino", "gpu", "the model"),
        Overrides("llama.cpp", "cuda:0", "EDGED_BACKEND"),
    )
    assert pick_overrides(req, model, glob).backend == "onnxruntime"
    assert pick_overrides(req, model, glob).device == ""  # the model's device was for openvino
    assert pick_overrides(Overrides(), model, glob) == Overrides("openvino", "gpu", "the model")
    assert pick_overrides(Overrides(), Overrides(), glob).backend == "llama.cpp"
    # a request naming only a device keeps the model's backend
    only_device = pick_overrides(Overrides("", "cpu", "the request"), model, glob)
    assert (only_device.backend, only_device.device) == ("openvino", "cpu")


def test_backend_override_wins_over_the_hardware_default() -> None:
    ov = Overrides("openvino", "", "the request")
    choices = rank(profile("nvidia_dgpu_intel_igpu"), overrides=ov)
    assert first(choices) == ("openvino", "gpu", True)
    cuda = find(choices, "llama.cpp", "cuda:0")
    assert not cuda.available and "the request asks for openvino" in cuda.reasons[-1]


def test_device_override_cpu_on_a_gpu_machine() -> None:
    ov = Overrides("", "cpu", "EDGED_BACKEND/EDGED_DEVICE")
    choices = rank(profile("nvidia_dgpu_intel_igpu"), overrides=ov)
    assert first(choices) == ("llama.cpp", "cpu", True)
    assert any("asked for by EDGED_BACKEND/EDGED_DEVICE" in r for r in choices[0].reasons)


def test_override_that_cannot_run_is_not_silently_ignored() -> None:
    ov = Overrides("onnxruntime", "", "the request")
    choices = rank(profile("cpu_only"), overrides=ov)
    assert first(choices) == ("onnxruntime", "cpu", False)
    assert any("no onnx variant" in r for r in choices[0].reasons)


@pytest.mark.parametrize(
    ("wanted", "device", "ok"),
    [
        ("gpu", "gpu.1", True),
        ("gpu", "cuda:0", True),
        ("cuda", "cuda:1", True),
        ("cuda:0", "cuda:1", False),
        ("npu", "gpu", False),
        ("CPU", "cpu", True),
    ],
)
def test_device_matching(wanted: str, device: str, ok: bool) -> None:
    assert device_matches(wanted, device) is ok
