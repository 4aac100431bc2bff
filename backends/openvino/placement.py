"""Where OpenVINO can run a model besides the CPU: Intel GPUs and NPUs.

A discrete GPU ranks above an integrated one, which ranks above the NPU; all
of them above the CPU. The NPU needs an OpenVINO IR variant (GenAI compiles a
GGUF for the CPU and GPU only).
"""

from __future__ import annotations

from edged.backends.openvino.info import INFO
from edged.backends.placement import (
    TIER_DGPU,
    TIER_IGPU,
    TIER_NPU,
    Choice,
    PlacementContext,
    human_gib,
)
from edged.common.hardware_profile import AcceleratorDevice

NAME = INFO.name
NPU_FORMATS = ("openvino",)  # OpenVINO IR
_ORDER = {
    TIER_DGPU: "a discrete Intel GPU ranks above an integrated GPU and the CPU",
    TIER_IGPU: "an integrated GPU ranks above the NPU and the CPU",
    TIER_NPU: "the NPU ranks above the CPU",
}


def accelerator_choices(ctx: PlacementContext) -> list[Choice]:
    """One choice per OpenVINO GPU or NPU, and why a kind is missing."""
    hw = ctx.hw
    out = [device_choice(ctx, d) for d in hw.openvino_devices if d.kind in ("gpu", "npu")]
    kinds = {d.kind for d in hw.openvino_devices}
    note = next((n for n in hw.notes if n.startswith("OpenVINO")), "")
    for kind, label in (("gpu", "Intel GPU"), ("npu", "NPU")):
        if kind not in kinds:
            why = f"OpenVINO lists no {label}" if hw.openvino_devices else f"no {label} found"
            if note:
                why += f" ({note})"
            out.append(
                Choice(NAME, kind, False, (why,), tier=TIER_NPU if kind == "npu" else TIER_IGPU)
            )
    return out


def device_choice(ctx: PlacementContext, dev: AcceleratorDevice) -> Choice:
    kind, device = dev.kind, dev.device
    label = f"OpenVINO {dev.name}: {dev.full_name or 'unnamed'}" + (
        f" ({dev.type})" if dev.type else ""
    )
    tier = TIER_NPU if kind == "npu" else (TIER_DGPU if dev.type == "discrete" else TIER_IGPU)
    v, problems = ctx.base_checks(NAME, NPU_FORMATS if kind == "npu" else None)
    if v is None and kind == "npu":
        have = ", ".join(sorted({x.format for x in ctx.variants})) or "none"
        problems[-1] = (
            "the NPU needs an OpenVINO IR variant (GenAI compiles GGUF for CPU and GPU "
            f"only); this model has: {have}"
        )
    if v is None or problems:
        return Choice(NAME, device, False, (label, *problems), tier=tier)
    need = ctx.estimate(NAME, v, kind).total_bytes
    total = int(dev.prop("GPU_DEVICE_TOTAL_MEM_SIZE") or dev.prop("NPU_DEVICE_TOTAL_MEM_SIZE") or 0)
    if dev.type != "discrete":
        budget, where = ctx.hw.memory_available, "shared system memory available"
    else:
        budget, where = int(total * 0.9), "of the device's memory (90% of it)"
    if budget and need > budget:
        why = f"needs about {human_gib(need)}, {human_gib(budget)} {where}"
        return Choice(NAME, device, False, (label, why), "no", need, variant=v.name, tier=tier)
    return Choice(
        NAME,
        device,
        True,
        (label, f"needs about {human_gib(need)}", _ORDER[tier]),
        fit="fits" if budget else "",
        memory_bytes=need,
        variant=v.name,
        tier=tier,
    )
