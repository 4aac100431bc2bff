"""Where a backend can run a model on this machine: the vocabulary of placement.

Backend selection (:mod:`edged.daemon.hardware.ranking`) ranks
:class:`Choice` values. The CPU choices are the same for every backend; the
accelerator choices (an NVIDIA GPU for llama.cpp, an Intel GPU or NPU for
OpenVINO) are each backend's own knowledge, so each backend that has them
names a ``placement`` function in its :class:`~edged.backends.info.BackendInfo`
(``backends/<name>/placement.py``) that turns a :class:`PlacementContext`
into choices, with the reasons ``edged hw`` prints. Nothing here reads the
machine or imports a backend library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edged.backends.base import kv_type_offered
from edged.backends.memory import MemoryEstimate, estimate_memory
from edged.backends.registry import Survey
from edged.common.hardware_profile import HardwareProfile
from edged.common.model_facts import ModelFacts

GiB = float(1 << 30)

# Tiers (lower ranks first). See README "Hardware and backends".
TIER_CUDA = 0  # the whole model on an NVIDIA GPU
TIER_CUDA_PARTIAL = 1  # at least half the layers on it
TIER_DGPU = 2  # a discrete GPU (OpenVINO)
TIER_IGPU = 3  # an integrated GPU
TIER_NPU = 4  # an NPU
TIER_CPU = 5  # the CPU: the calibrated fastest backend first
TIER_CUDA_FEW = 6  # fewer than half the layers on an NVIDIA GPU


@dataclass(frozen=True)
class VariantInfo:
    name: str  # "gguf", "onnx-int4-cpu"
    format: str  # "gguf", "onnx", "openvino"
    size: int  # bytes on disk
    facts: ModelFacts | None = None  # from the header; None: size stands in for weights


@dataclass(frozen=True)
class Choice:
    backend: str
    device: str
    available: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)
    fit: str = ""  # "fits", "partial", "no", "" (unknown)
    memory_bytes: int = 0  # estimated need on that device
    gpu_layers: int = 0  # layers offloaded; -1 = all (count unknown)
    tokens_per_second: float = 0.0  # calibrated decode speed, 0 = not calibrated
    variant: str = ""  # the variant it would load
    aggregate_tokens_per_second: float = 0.0  # calibrated, `streams` requests at once
    streams: int = 0  # the parallelism of the aggregate figure (0 = not calibrated)
    # within the fidelity threshold (daemon.hardware.ranking); None = not measured
    faithful: bool | None = None
    # the top-1 agreement `faithful` was judged against (0 = not measured)
    fidelity_bar: float = 0.0
    tier: int = field(default=TIER_CPU, compare=False, repr=False)


def human_gib(n: int | float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):.0f} MiB"


class PlacementContext:
    """The facts one ranking works from: the machine, the model's variants, the
    backends (installed or not), and the context and sequences a load would use."""

    def __init__(
        self,
        hw: HardwareProfile,
        variants: Sequence[VariantInfo],
        backends: Mapping[str, Survey],
        context_length: int,
        sequences: int,
        kv_type: str = "f16",
    ) -> None:
        self.hw, self.variants, self.backends = hw, variants, backends
        self.context_length, self.sequences = context_length, sequences
        self.kv_type = kv_type  # asked for (setting / EDGED_KV_TYPE); f16 where not offered

    def variant_for(
        self, backend: str, formats: Sequence[str] | None = None
    ) -> tuple[VariantInfo | None, str]:
        """The first variant ``backend`` loads (among ``formats`` when given, a
        device's own restriction), or None and why not."""
        spec = self.backends.get(backend)
        usable = tuple(spec.info.formats) if spec else ()
        if formats is not None:
            usable = tuple(f for f in usable if f in formats)
        for v in self.variants:
            if v.format in usable:
                return v, ""
        have = ", ".join(sorted({v.format for v in self.variants})) or "none"
        hint = ""
        if (
            spec
            and spec.info.converts_to in usable
            and any(v.format == "gguf" for v in self.variants)
        ):
            hint = f" (edged convert MODEL --to {spec.info.converts_to} makes one)"
        return None, f"no {'/'.join(usable) or '?'} variant (this model has: {have}){hint}"

    def facts(self, v: VariantInfo) -> ModelFacts:
        return v.facts if v.facts is not None else ModelFacts(weights_bytes=v.size)

    def kv_type_for(self, backend: str) -> str:
        """The KV cache type a load on ``backend`` gets (the scheduler's rule)."""
        spec = self.backends.get(backend)
        return kv_type_offered(self.kv_type, spec.info.kv_types if spec is not None else ())

    def estimate(self, backend: str, v: VariantInfo, device: str) -> MemoryEstimate:
        return estimate_memory(
            self.facts(v),
            context_length=self.context_length,
            sequences=self.sequences,
            backend=backend,
            device=device,
            kv_type=self.kv_type_for(backend),
        )

    def base_checks(
        self, backend: str, formats: Sequence[str] | None = None
    ) -> tuple[VariantInfo | None, list[str]]:
        """Installed? a variant it runs? Reasons it cannot run (empty: it can)."""
        problems: list[str] = []
        spec = self.backends.get(backend)
        if spec is None:
            return None, [f"edged has no {backend} backend"]
        if not spec.installed:
            problems.append(f"{backend} is not installed: {spec.info.install_hint}".rstrip(": "))
        v, why = self.variant_for(backend, formats)
        if v is None:
            problems.append(why)
        return v, problems
