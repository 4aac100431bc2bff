"""Protobuf views of hardware, choices, estimates and calibrations.

System.Hardware builds its reply with :func:`hardware_response`; Models.Show
fills its ``backends`` and ``memory`` fields with :func:`ranking_fields`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from edged.backends.memory import MemoryEstimate
from edged.backends.placement import Choice
from edged.common.hardware_profile import HardwareProfile
from edged.daemon.calibration import Calibration, Fidelity
from edged.daemon.hardware.ranking import FIDELITY_THRESHOLD
from edged.v1 import edged_pb2 as pb


def choice_pb(c: Choice, calibrations: Iterable[Calibration] = ()) -> pb.BackendChoice:
    """``calibrations``: the model's cached ones (the choice's fidelity comes from them)."""
    cal = next((x for x in calibrations if (x.backend, x.device) == (c.backend, c.device)), None)
    out = pb.BackendChoice(
        backend=c.backend,
        device=c.device,
        available=c.available,
        reasons=list(c.reasons),
        fit=c.fit,
        memory_bytes=max(0, c.memory_bytes),
        gpu_layers=max(0, c.gpu_layers),
        calibrated_tokens_per_second=c.tokens_per_second,
        variant=c.variant,
        aggregate_tokens_per_second=c.aggregate_tokens_per_second,
        streams=c.streams,
    )
    if cal is not None and cal.fidelity is not None:
        out.fidelity.CopyFrom(
            fidelity_pb(cal.fidelity, within=c.faithful is True, bar=c.fidelity_bar)
        )
    return out


def fidelity_pb(f: Fidelity, *, within: bool = False, bar: float = 0.0) -> pb.Fidelity:
    return pb.Fidelity(
        measure=f.measure,
        agreement=f.agreement,
        mean_kl=f.mean_kl,
        perplexity=f.perplexity,
        perplexity_reference=f.perplexity_reference,
        tokens=max(0, f.tokens),
        reference=f.reference,
        error=f.error,
        within_threshold=within,
        threshold=bar or FIDELITY_THRESHOLD,
    )


def memory_pb(est: MemoryEstimate | None) -> pb.MemoryEstimate | None:
    if est is None:
        return None
    return pb.MemoryEstimate(
        weights_bytes=est.weights_bytes,
        kv_bytes=est.kv_bytes,
        overhead_bytes=est.overhead_bytes,
        total_bytes=est.total_bytes,
        kv_type=est.kv_type,
    )


def calibration_pb(c: Calibration) -> pb.Calibration:
    out = pb.Calibration(
        model_digest=c.model_digest,
        backend=c.backend,
        device=c.device,
        backend_version=c.backend_version,
        decode_tokens_per_second=c.decode_tokens_per_second,
        prefill_tokens_per_second=c.prefill_tokens_per_second,
        measured_unix_ms=c.measured_unix_ms,
        streams=max(0, c.streams),
        aggregate_tokens_per_second=c.aggregate_tokens_per_second,
        kv_type=c.kv_type,
    )
    if c.fidelity is not None:
        out.fidelity.CopyFrom(fidelity_pb(c.fidelity))
    return out


def hardware_response(
    hw: HardwareProfile,
    *,
    model: str = "",
    choices: Sequence[Choice] = (),
    calibrations: Iterable[Calibration] = (),
    notes: Iterable[str] = (),
) -> pb.HardwareResponse:
    cals = tuple(calibrations)
    return pb.HardwareResponse(
        os=hw.os,
        arch=hw.arch,
        cpu=hw.cpu,
        cpu_cores=hw.cores,
        cpu_threads=hw.threads,
        cpu_features=sorted(hw.cpu_features),
        memory_total_bytes=hw.memory_total,
        memory_available_bytes=hw.memory_available,
        gpus=[g.name for g in hw.nvidia_gpus]
        + [f"{d.name}: {d.full_name}" for d in hw.openvino_devices if d.kind != "cpu"],
        backends=[choice_pb(c, cals) for c in choices],
        isa=[
            pb.IsaFeature(name=f.name, reported=f.reported, usable=f.usable, note=f.note)
            for f in hw.isa
        ],
        nvidia_gpus=[
            pb.NvidiaGpu(
                index=g.index,
                name=g.name,
                vram_total_bytes=g.vram_total,
                vram_free_bytes=g.vram_free,
                driver=g.driver,
                compute_capability=g.compute_capability,
            )
            for g in hw.nvidia_gpus
        ],
        openvino_devices=[
            pb.AcceleratorDevice(
                name=d.name, full_name=d.full_name, type=d.type, properties=dict(d.properties)
            )
            for d in hw.openvino_devices
        ],
        onnx_providers=list(hw.onnx_providers),
        llama_gpu_offload=hw.llama_gpu_offload,
        notes=[*hw.notes, *notes],
        model=model,
        calibrations=[calibration_pb(c) for c in cals],
    )


def ranking_fields(
    choices: Sequence[Choice],
    estimate: MemoryEstimate | None,
    calibrations: Sequence[Calibration] = (),
) -> dict[str, Any]:
    """``backends`` (ranked, rejected ones with their reasons) and ``memory`` (the
    estimate for the chosen backend) for a ShowModelResponse."""
    fields: dict[str, Any] = {"backends": [choice_pb(c, calibrations) for c in choices]}
    memory = memory_pb(estimate)
    if memory is not None:
        fields["memory"] = memory
    return fields
