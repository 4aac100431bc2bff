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
the layers), and on the CPU by calibration (:class:`Measured`), else by each
backend's ``cpu_rank`` (README "Hardware and backends" documents the order).

Calibrated CPU choices rank by fidelity first, then speed:

- fidelity: a choice is within the threshold when its top-1 agreement with the
  model's reference is at least :data:`FIDELITY_THRESHOLD`, or no more than
  :data:`FIDELITY_MARGIN` below the most faithful measured choice's (the
  reference itself counts as 1.0). A choice below it ranks after every choice
  within it (and after the ones not measured), whatever its speed. An override
  that asks for a backend still gets it (overrides rank first).
- speed: the worst of its two speed ratios against the fastest choice, at one
  stream and at the daemon's parallelism (``streams`` requests at once), is the
  score, highest first: the choice that is never far behind the best, whether
  one client or several are asking.

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

# A choice is within the fidelity threshold when its top-1 next-token agreement
# with the reference (the model's most faithful computation) is at least this,
FIDELITY_THRESHOLD = 0.99
# or no more than this below the most faithful choice's. Over the 1,024 tokens
# calibration compares, two choices' agreements differ by about 0.008 (one
# standard error) from where their near-ties fall alone: 0.02 is 2.5 of those.
# Small models never reach 0.99 against exact arithmetic (SmolLM2 135M: 0.954
# on llama.cpp, 0.968 on the transcoded ONNX model; bench/README "choice").
FIDELITY_MARGIN = 0.02

__all__ = [
    "FIDELITY_MARGIN",
    "FIDELITY_THRESHOLD",
    "Choice",
    "Measured",
    "Overrides",
    "VariantInfo",
    "device_matches",
    "pick_overrides",
    "rank_backends",
]


@dataclass(frozen=True)
class Measured:
    """What calibration measured for one (backend, device)."""

    tokens_per_second: float  # decode, one stream
    aggregate_tokens_per_second: float = 0.0  # decode, `streams` requests at once
    streams: int = 1
    agreement: float | None = None  # top-1 agreement with the reference; None: not measured
    is_reference: bool = False  # it is the reference itself
    fidelity: str = ""  # the measured fidelity in words, for the reasons

    def score(self, best_single: float, best_aggregate: float) -> float:
        """The worse of its speed ratios against the fastest (1.0: fastest at both)."""
        ratios = []
        if best_single > 0:
            ratios.append(self.tokens_per_second / best_single)
        if best_aggregate > 0 and self.aggregate_tokens_per_second > 0:
            ratios.append(self.aggregate_tokens_per_second / best_aggregate)
        return min(ratios) if ratios else 0.0


def _agreement(m: Measured) -> float | None:
    return 1.0 if m.is_reference else m.agreement


def fidelity_bar(measured: Mapping[str, Measured]) -> float:
    """The top-1 agreement a choice needs: :data:`FIDELITY_THRESHOLD`, or
    :data:`FIDELITY_MARGIN` below the most faithful measured choice when lower."""
    known = [a for a in map(_agreement, measured.values()) if a is not None]
    if not known:
        return FIDELITY_THRESHOLD
    return round(min(FIDELITY_THRESHOLD, max(known) - FIDELITY_MARGIN), 6)


def faithful(measured: Mapping[str, Measured]) -> dict[str, bool | None]:
    """Per backend: within the fidelity threshold (None: fidelity not measured)."""
    bar = fidelity_bar(measured)
    agreement = _agreement
    out: dict[str, bool | None] = {}
    for name, m in measured.items():
        a = agreement(m)
        out[name] = None if a is None else a >= bar
    return out


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


def _cpu_choice(
    ctx: PlacementContext,
    backend: str,
    measured: Measured | None,
    order: Sequence[str],
    *,
    faithful: bool | None = None,
    bar: float = FIDELITY_THRESHOLD,
    score: float = 0.0,
) -> Choice:
    v, problems = ctx.base_checks(backend)
    if v is None or problems:
        return Choice(backend, "cpu", False, tuple(problems), tier=TIER_CPU)
    est = ctx.estimate(backend, v, "cpu")
    need, hw = est.total_bytes, ctx.hw
    reasons = [
        f"{v.format} variant {v.name!r} on the CPU: needs about {human_gib(need)} "
        f"(weights {human_gib(est.weights_bytes)}, "
        f"KV {human_gib(est.kv_bytes)} as {ctx.kv_type_for(backend)}, "
        f"overhead {human_gib(est.overhead_bytes)})"
    ]
    if hw.memory_total and need > hw.memory_total:
        reasons.append(f"more than this machine's {human_gib(hw.memory_total)} of RAM")
        return Choice(backend, "cpu", False, tuple(reasons), "no", need, variant=v.name)
    if hw.memory_available and need > hw.memory_available:
        reasons.append(
            f"only {human_gib(hw.memory_available)} free now: idle models are unloaded to make room"
        )
    m = measured
    tps = m.tokens_per_second if m is not None else 0.0
    if m is not None and tps > 0:
        speed = f"calibrated on this machine: {tps:.1f} tokens/s decode at 1 stream"
        if m.streams > 1 and m.aggregate_tokens_per_second > 0:
            speed += f", {m.aggregate_tokens_per_second:.1f} at {m.streams} streams together"
        reasons.append(f"{speed} (score {score:.2f}: its worse ratio to the fastest)")
        if m.fidelity:
            reasons.append(m.fidelity)
        if faithful is False:
            reasons.append(
                f"below the fidelity threshold (top-1 agreement {bar:.3f} with the reference: "
                f"{FIDELITY_THRESHOLD}, or within {FIDELITY_MARGIN} of the most faithful "
                "choice): used only when asked for, whatever its speed"
            )
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
        aggregate_tokens_per_second=m.aggregate_tokens_per_second if m is not None else 0.0,
        streams=m.streams if m is not None else 0,
        faithful=faithful,
        fidelity_bar=bar if faithful is not None else 0.0,
    )


def rank_backends(
    hw: HardwareProfile,
    variants: Sequence[VariantInfo],
    backends: Iterable[Survey],
    *,
    context_length: int,
    sequences: int,
    overrides: Overrides = Overrides(),
    calibrations: Mapping[tuple[str, str], Measured] | None = None,
    kv_type: str = "f16",
) -> list[Choice]:
    """Every (backend, device) option for this model here, best first.

    ``calibrations`` maps (backend, device) to what calibration measured.
    Available options come first; every unavailable one says why.
    """
    specs = {b.name: b for b in backends}
    ctx = PlacementContext(hw, variants, specs, context_length, sequences, kv_type)
    calib = dict(calibrations or {})
    choices: list[Choice] = []
    for b in specs.values():
        if b.info.placement:
            place: Callable[[PlacementContext], list[Choice]] = load_hook(b.info.placement)
            choices.extend(place(ctx))
    order = cpu_order(specs.values())
    on_cpu = {
        name: m
        for (name, device), m in calib.items()
        if device == "cpu" and name in specs and m.tokens_per_second > 0
    }
    within = faithful(on_cpu)
    bar = fidelity_bar(on_cpu)
    best_single = max((m.tokens_per_second for m in on_cpu.values()), default=0.0)
    best_aggregate = max((m.aggregate_tokens_per_second for m in on_cpu.values()), default=0.0)
    scores = {n: m.score(best_single, best_aggregate) for n, m in on_cpu.items()}
    for name in order:
        if "cpu" in specs[name].info.devices:
            choices.append(
                _cpu_choice(
                    ctx,
                    name,
                    on_cpu.get(name),
                    order,
                    faithful=within.get(name),
                    bar=bar,
                    score=scores.get(name, 0.0),
                )
            )
    choices = [_apply_overrides(c, overrides) for c in choices]

    def key(ic: tuple[int, Choice]) -> tuple[int, int, int, int, float, int, int]:
        i, c = ic
        cpu = c.tier == TIER_CPU
        fidelity_class = {True: 0, None: 1, False: 2}[c.faithful] if cpu else 0
        return (
            0 if c.available else 1,
            0 if _matches(c, overrides) else 1,
            c.tier,
            fidelity_class,  # within the threshold, not measured, below it
            -scores.get(c.backend, 0.0) if cpu else 0.0,  # calibrated: best score first
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
