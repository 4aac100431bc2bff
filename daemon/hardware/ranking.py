"""Backend selection: a pure function from facts to a ranked list of choices.

:func:`rank_backends` takes the hardware profile, the model's variants (format,
size, header facts), the backends edged knows (installed or not), the context
and sequence count a load would use, the user's overrides and the CPU
calibration figures, and returns every (backend, device) pair it considered,
best first, each with the reasons ``edged hw`` and ``edged show`` print. It
reads nothing and imports nothing heavy, so it is table-tested with recorded
hardware profiles (tests/unit/fixtures/hardware/).

Each backend contributes its own accelerator choices (its ``placement`` hook,
``backends/<name>/placement.py``: NVIDIA GPUs for llama.cpp, Intel GPUs and
NPUs for OpenVINO); the CPU choices are the same for every backend. Choices
rank by tier (:mod:`edged.backends.placement`: full GPU offload, partial
offload, discrete GPU, integrated GPU, NPU, CPU, a GPU holding fewer than half
the layers), and on the CPU by calibrated speed, else by each backend's
``cpu_rank`` (README "Hardware and backends" documents the order for users).

Overrides (request > per-model settings > EDGED_BACKEND/EDGED_DEVICE): only
matching options stay available; the others are listed as rejected because
of the override. An override that matches nothing runnable is not silently
ignored: the first choice is then unavailable and the caller reports why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from edged.backends.info import load_hook
from edged.backends.placement import TIER_CPU, Choice, PlacementContext, VariantInfo, human_gib
from edged.backends.registry import Survey
from edged.common.hardware_profile import HardwareProfile

__all__ = [
    "Choice",
    "Overrides",
    "VariantInfo",
    "device_matches",
    "pick_overrides",
    "rank_backends",
]


@dataclass(frozen=True)
class Overrides:
    backend: str = ""
    device: str = ""
    source: str = ""  # where they came from, for the reasons ("request", ...)


def pick_overrides(*levels: Overrides) -> Overrides:
    """Merge override levels, highest precedence first (request, model, global).

    The backend comes from the first level that sets one; the device from the
    first level that sets one at or above that level (a device chosen for a
    lower level's backend does not leak onto a higher level's backend).
    """
    backend, device, source, cut = "", "", "", len(levels)
    for i, lv in enumerate(levels):
        if lv.backend:
            backend, source, cut = lv.backend, lv.source, i
            break
    for lv in levels[: cut + 1]:
        if lv.device:
            device = lv.device
            source = source or lv.source
            if lv.source and lv.source not in source:
                source = f"{source} / {lv.source}"
            break
    return Overrides(backend, device, source)


def device_matches(wanted: str, device: str) -> bool:
    """``wanted`` ("gpu", "cuda", "cuda:1", "npu", "gpu.1") names ``device``.

    A kind matches every device of that kind; "gpu" also matches CUDA devices.
    """
    wanted, device = wanted.lower(), device.lower()
    if wanted == device:
        return True
    kind = device.split(":")[0].split(".")[0]
    if wanted == kind:
        return True
    return wanted == "gpu" and kind == "cuda"


def cpu_order(backends: Iterable[Survey]) -> list[str]:
    """The CPU order without calibration: each backend's ``cpu_rank``."""
    return [b.name for b in sorted(backends, key=lambda b: (b.info.cpu_rank, b.name))]


def _cpu_choice(ctx: PlacementContext, backend: str, tps: float, order: Sequence[str]) -> Choice:
    v, problems = ctx.base_checks(backend)
    if v is None or problems:
        return Choice(backend, "cpu", False, tuple(problems), tier=TIER_CPU)
    est = ctx.estimate(backend, v, "cpu")
    need, hw = est.total_bytes, ctx.hw
    reasons = [
        f"{v.format} variant {v.name!r} on the CPU: needs about {human_gib(need)} "
        f"(weights {human_gib(est.weights_bytes)}, KV {human_gib(est.kv_bytes)}, "
        f"overhead {human_gib(est.overhead_bytes)})"
    ]
    if hw.memory_total and need > hw.memory_total:
        reasons.append(f"more than this machine's {human_gib(hw.memory_total)} of RAM")
        return Choice(backend, "cpu", False, tuple(reasons), "no", need, variant=v.name)
    if hw.memory_available and need > hw.memory_available:
        reasons.append(
            f"only {human_gib(hw.memory_available)} free now: idle models are unloaded to make room"
        )
    if tps > 0:
        reasons.append(f"calibrated on this machine: {tps:.1f} tokens/s decode")
    else:
        reasons.append(
            "not calibrated (edged hw --calibrate MODEL measures it); CPU order without "
            "calibration: " + " > ".join(order)
        )
    if hw.cpu_features:
        simd = sorted(hw.cpu_features & {"avx2", "avx512f", "avx512_vnni", "asimd", "sve"})
        if simd:
            reasons.append("CPU vector extensions: " + ", ".join(simd))
    return Choice(
        backend,
        "cpu",
        True,
        tuple(reasons),
        "fits",
        need,
        tokens_per_second=tps,
        variant=v.name,
        tier=TIER_CPU,
    )


def rank_backends(
    hw: HardwareProfile,
    variants: Sequence[VariantInfo],
    backends: Iterable[Survey],
    *,
    context_length: int,
    sequences: int,
    overrides: Overrides = Overrides(),
    calibrations: Mapping[tuple[str, str], float] | None = None,
) -> list[Choice]:
    """Every (backend, device) option for this model here, best first.

    ``calibrations`` maps (backend, device) to measured decode tokens/s.
    Available options come first; every unavailable one says why.
    """
    specs = {b.name: b for b in backends}
    ctx = PlacementContext(hw, variants, specs, context_length, sequences)
    calib = dict(calibrations or {})
    choices: list[Choice] = []
    for b in specs.values():
        if b.info.placement:
            place: Callable[[PlacementContext], list[Choice]] = load_hook(b.info.placement)
            choices.extend(place(ctx))
    order = cpu_order(specs.values())
    for name in order:
        if "cpu" in specs[name].info.devices:
            choices.append(_cpu_choice(ctx, name, calib.get((name, "cpu"), 0.0), order))
    choices = [_apply_overrides(c, overrides) for c in choices]

    def key(ic: tuple[int, Choice]) -> tuple[int, int, int, float, int, int]:
        i, c = ic
        cpu = c.tier == TIER_CPU
        return (
            0 if c.available else 1,
            0 if _matches(c, overrides) else 1,
            c.tier,
            -c.tokens_per_second if cpu else 0.0,  # calibrated: fastest first
            order.index(c.backend) if cpu and c.backend in order else 0,
            i,
        )

    return [c for _, c in sorted(enumerate(choices), key=key)]


def _matches(c: Choice, ov: Overrides) -> bool:
    if ov.backend and c.backend != ov.backend:
        return False
    return not ov.device or device_matches(ov.device, c.device)


def _apply_overrides(c: Choice, ov: Overrides) -> Choice:
    if not (ov.backend or ov.device) or _matches(c, ov):
        if (ov.backend or ov.device) and c.available:
            asked = " ".join(x for x in (ov.backend, ov.device and f"device {ov.device}") if x)
            return replace(
                c, reasons=(*c.reasons, f"asked for by {ov.source or 'override'}: {asked}")
            )
        return c
    asked = ov.backend if ov.backend and c.backend != ov.backend else f"device {ov.device}"
    why = f"not used: {ov.source or 'an override'} asks for {asked}"
    return replace(c, available=False, reasons=(*c.reasons, why))
