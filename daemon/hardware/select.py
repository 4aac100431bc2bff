"""Backend selection: a pure function from facts to a ranked list of choices.

:func:`rank_backends` takes the hardware profile, the model's variants (format,
size, header facts), the backends edged knows (installed or not), the context
and sequence count a load would use, the user's overrides and the CPU
calibration figures, and returns every (backend, device) pair it considered,
best first, each with the reasons ``edged hw`` and ``edged show`` print. It
reads nothing and imports nothing heavy, so it is table-tested with recorded
hardware profiles (tests/unit/fixtures/hardware/).

Default order (documented for users in README "Hardware and backends"):

1. llama.cpp on an NVIDIA GPU (most free VRAM first) when the whole model, its
   KV cache and compute buffers fit in free VRAM.
2. The same with a partial offload when at least half the layers fit.
3. OpenVINO on an Intel discrete GPU, then on an integrated GPU, then on an
   NPU (the NPU needs an OpenVINO IR variant: GenAI cannot compile a GGUF for it).
4. The CPU: the backend that calibration measured fastest for this model on
   this machine; without calibration the static order llama.cpp (batching,
   saved session KV), OpenVINO (continuous batching), ONNX Runtime (one
   stream per request, no saved session KV).
5. A partial NVIDIA offload with fewer than half the layers on the GPU.

Overrides (request > per-model settings > EDGED_BACKEND/EDGED_DEVICE): only
matching options stay available; the others are listed as rejected because
of the override. An override that matches nothing runnable is not silently
ignored: the first choice is then unavailable and the caller reports why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from edged.daemon.memory import (
    ModelFacts,
    estimate_memory,
    gpu_need,
    layers_that_fit,
)

from .profile import AcceleratorDevice, HardwareProfile, NvidiaGpu

GiB = float(1 << 30)

# Device kinds each engine in edged runs on (not what the library could do).
ENGINE_DEVICES: dict[str, tuple[str, ...]] = {
    "llama.cpp": ("cpu", "cuda"),
    "onnxruntime": ("cpu",),
    "openvino": ("cpu", "gpu", "npu"),
}
CPU_STATIC_ORDER = ("llama.cpp", "openvino", "onnxruntime")
NPU_FORMATS = ("openvino",)  # OpenVINO IR; GenAI compiles GGUF for CPU/GPU only
MIN_COMPUTE_CAPABILITY = (5, 0)  # llama.cpp's CUDA build targets

# Tiers (lower is better), see the module docstring.
_T_CUDA, _T_CUDA_PARTIAL, _T_DGPU, _T_IGPU, _T_NPU, _T_CPU, _T_CUDA_FEW = range(7)


@dataclass(frozen=True)
class BackendSpec:
    """A backend edged knows, as the registry describes it."""

    name: str
    formats: tuple[str, ...]
    installed: bool
    install_hint: str = ""
    version: str = ""


@dataclass(frozen=True)
class VariantInfo:
    name: str  # "gguf", "onnx-int4-cpu"
    format: str  # "gguf", "onnx", "openvino"
    size: int  # bytes on disk
    facts: ModelFacts | None = None  # from the header; None: size stands in for weights


@dataclass(frozen=True)
class Overrides:
    backend: str = ""
    device: str = ""
    source: str = ""  # where they came from, for the reasons ("request", ...)


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
    tier: int = field(default=_T_CPU, compare=False, repr=False)


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


def _gib(n: int | float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):.0f} MiB"


class _Ctx:
    def __init__(
        self,
        hw: HardwareProfile,
        variants: Sequence[VariantInfo],
        backends: Mapping[str, BackendSpec],
        context_length: int,
        sequences: int,
    ) -> None:
        self.hw, self.variants, self.backends = hw, variants, backends
        self.context_length, self.sequences = context_length, sequences

    def variant_for(self, backend: str, device_kind: str) -> tuple[VariantInfo | None, str]:
        spec = self.backends.get(backend)
        formats = spec.formats if spec else ()
        if device_kind == "npu":
            formats = tuple(f for f in formats if f in NPU_FORMATS)
        for v in self.variants:
            if v.format in formats:
                return v, ""
        have = ", ".join(sorted({v.format for v in self.variants})) or "none"
        if device_kind == "npu" and spec and "gguf" in spec.formats:
            return None, (
                "the NPU needs an OpenVINO IR variant (GenAI compiles GGUF for CPU and GPU "
                f"only); this model has: {have}"
            )
        hint = ""
        if "onnx" in formats and any(v.format == "gguf" for v in self.variants):
            hint = " (edged convert MODEL --to onnx makes one)"
        return None, f"no {'/'.join(formats) or '?'} variant (this model has: {have}){hint}"

    def facts(self, v: VariantInfo) -> ModelFacts:
        return v.facts if v.facts is not None else ModelFacts(weights_bytes=v.size)


def _base_checks(ctx: _Ctx, backend: str, kind: str) -> tuple[VariantInfo | None, list[str]]:
    """Installed? a variant it runs? Reasons it cannot run (empty: it can)."""
    problems: list[str] = []
    spec = ctx.backends.get(backend)
    if spec is None:
        return None, [f"edged has no {backend} backend"]
    if not spec.installed:
        problems.append(f"{backend} is not installed: {spec.install_hint}".rstrip(": "))
    v, why = ctx.variant_for(backend, kind)
    if v is None:
        problems.append(why)
    return v, problems


def _cuda_choice(ctx: _Ctx, gpu: NvidiaGpu) -> Choice:
    device = f"cuda:{gpu.index}"
    name = gpu.name if gpu.name.upper().startswith("NVIDIA") else f"NVIDIA {gpu.name}"
    head = f"{name} ({_gib(gpu.vram_free)} free of {_gib(gpu.vram_total)})"
    v, problems = _base_checks(ctx, "llama.cpp", "cuda")
    if not ctx.hw.llama_gpu_offload:
        problems.append("the installed llama.cpp was built without CUDA (no GPU offload)")
    cc = gpu.compute_capability
    if cc:
        try:
            major, minor = (int(x) for x in cc.split(".")[:2])
            if (major, minor) < MIN_COMPUTE_CAPABILITY:
                problems.append(
                    f"compute capability {cc} is older than llama.cpp's CUDA minimum 5.0"
                )
        except ValueError:
            pass
    if v is None or problems:
        return Choice("llama.cpp", device, False, (head, *problems), fit="", tier=_T_CUDA)
    facts = ctx.facts(v)
    total_layers = facts.n_layer

    def need(layers: int) -> int:
        return gpu_need(
            facts,
            context_length=ctx.context_length,
            sequences=ctx.sequences,
            gpu_layers=layers,
            device=device,
        )

    full = need(total_layers or 1)
    if not total_layers:  # shape unknown: all or nothing by size
        fits = full <= gpu.vram_free
        why = f"needs about {_gib(full)} of VRAM"
        if not fits:
            why += f", only {_gib(gpu.vram_free)} free"
        return Choice(
            "llama.cpp",
            device,
            fits,
            (head, why),
            fit="fits" if fits else "no",
            memory_bytes=full,
            gpu_layers=-1 if fits else 0,
            variant=v.name,
            tier=_T_CUDA,
        )
    n = layers_that_fit(
        facts,
        gpu.vram_free,
        context_length=ctx.context_length,
        sequences=ctx.sequences,
        device=device,
    )
    if n >= total_layers:
        return Choice(
            "llama.cpp",
            device,
            True,
            (
                head,
                f"the whole model fits: {_gib(full)} of VRAM for weights, KV "
                f"({ctx.context_length} tokens x {ctx.sequences}) and buffers; all "
                f"{total_layers} layers offloaded",
            ),
            fit="fits",
            memory_bytes=full,
            gpu_layers=total_layers + 1,
            variant=v.name,
            tier=_T_CUDA,
        )
    if n == 0:
        return Choice(
            "llama.cpp",
            device,
            False,
            (
                head,
                f"not even one layer fits: one layer and the buffers need "
                f"{_gib(need(1))} of VRAM, the whole model {_gib(full)}",
            ),
            fit="no",
            memory_bytes=full,
            variant=v.name,
            tier=_T_CUDA,
        )
    few = n * 2 < total_layers
    why = (
        f"only {n} of {total_layers} layers fit ({_gib(need(n))} of VRAM; the whole model "
        f"needs {_gib(full)}): partial offload, the other layers run on the CPU"
    )
    if few:
        why += "; fewer than half on the GPU, so the CPU ranks first"
    return Choice(
        "llama.cpp",
        device,
        True,
        (head, why),
        fit="partial",
        memory_bytes=need(n),
        gpu_layers=n,
        variant=v.name,
        tier=_T_CUDA_FEW if few else _T_CUDA_PARTIAL,
    )


def _ov_accel_choice(ctx: _Ctx, dev: AcceleratorDevice) -> Choice:
    kind, device = dev.kind, dev.device
    label = f"OpenVINO {dev.name}: {dev.full_name or 'unnamed'}" + (
        f" ({dev.type})" if dev.type else ""
    )
    tier = _T_NPU if kind == "npu" else (_T_DGPU if dev.type == "discrete" else _T_IGPU)
    v, problems = _base_checks(ctx, "openvino", kind)
    if v is None or problems:
        return Choice("openvino", device, False, (label, *problems), tier=tier)
    est = estimate_memory(
        ctx.facts(v),
        context_length=ctx.context_length,
        sequences=ctx.sequences,
        backend="openvino",
        device=kind,
    )
    need = est.total_bytes
    total = int(dev.prop("GPU_DEVICE_TOTAL_MEM_SIZE") or dev.prop("NPU_DEVICE_TOTAL_MEM_SIZE") or 0)
    shared = dev.type != "discrete"
    if shared:
        budget, where = ctx.hw.memory_available, "shared system memory available"
    else:
        budget, where = int(total * 0.9), "of the device's memory (90% of it)"
    if budget and need > budget:
        return Choice(
            "openvino",
            device,
            False,
            (label, f"needs about {_gib(need)}, {_gib(budget)} {where}"),
            fit="no",
            memory_bytes=need,
            variant=v.name,
            tier=tier,
        )
    order = {
        _T_DGPU: "a discrete Intel GPU ranks above an integrated GPU and the CPU",
        _T_IGPU: "an integrated GPU ranks above the NPU and the CPU",
        _T_NPU: "the NPU ranks above the CPU",
    }[tier]
    return Choice(
        "openvino",
        device,
        True,
        (label, f"needs about {_gib(need)}", order),
        fit="fits" if budget else "",
        memory_bytes=need,
        variant=v.name,
        tier=tier,
    )


def _cpu_choice(ctx: _Ctx, backend: str, tps: float) -> Choice:
    v, problems = _base_checks(ctx, backend, "cpu")
    if v is None or problems:
        return Choice(backend, "cpu", False, tuple(problems), tier=_T_CPU)
    est = estimate_memory(
        ctx.facts(v),
        context_length=ctx.context_length,
        sequences=ctx.sequences,
        backend=backend,
        device="cpu",
    )
    need, hw = est.total_bytes, ctx.hw
    reasons = [
        f"{v.format} variant {v.name!r} on the CPU: needs about {_gib(need)} "
        f"(weights {_gib(est.weights_bytes)}, KV {_gib(est.kv_bytes)}, "
        f"overhead {_gib(est.overhead_bytes)})"
    ]
    if hw.memory_total and need > hw.memory_total:
        reasons.append(f"more than this machine's {_gib(hw.memory_total)} of RAM")
        return Choice(backend, "cpu", False, tuple(reasons), "no", need, variant=v.name)
    if hw.memory_available and need > hw.memory_available:
        reasons.append(
            f"only {_gib(hw.memory_available)} free now: idle models are unloaded to make room"
        )
    if tps > 0:
        reasons.append(f"calibrated on this machine: {tps:.1f} tokens/s decode")
    else:
        reasons.append(
            "not calibrated (edged hw --calibrate MODEL measures it); CPU order without "
            "calibration: " + " > ".join(CPU_STATIC_ORDER)
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
        tier=_T_CPU,
    )


def _missing_devices(hw: HardwareProfile) -> list[Choice]:
    """Rejected placeholders that say why no accelerator option exists."""
    out: list[Choice] = []
    if not hw.nvidia_gpus:
        why = "no NVIDIA GPU found"
        nv = next((n for n in hw.notes if n.startswith("NVIDIA")), "")
        out.append(
            Choice("llama.cpp", "cuda", False, (why + (f" ({nv})" if nv else ""),), tier=_T_CUDA)
        )
    kinds = {d.kind for d in hw.openvino_devices}
    ov_note = next((n for n in hw.notes if n.startswith("OpenVINO")), "")
    for kind, label in (("gpu", "Intel GPU"), ("npu", "NPU")):
        if kind not in kinds:
            why = f"OpenVINO lists no {label}" if hw.openvino_devices else f"no {label} found"
            if ov_note:
                why += f" ({ov_note})"
            tier = _T_NPU if kind == "npu" else _T_IGPU
            out.append(Choice("openvino", kind, False, (why,), tier=tier))
    return out


def rank_backends(
    hw: HardwareProfile,
    variants: Sequence[VariantInfo],
    backends: Iterable[BackendSpec],
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
    ctx = _Ctx(hw, variants, specs, context_length, sequences)
    calib = dict(calibrations or {})
    choices: list[Choice] = []
    for gpu in sorted(hw.nvidia_gpus, key=lambda g: (-g.vram_free, g.index)):
        choices.append(_cuda_choice(ctx, gpu))
        if "CUDAExecutionProvider" in hw.onnx_providers and "onnxruntime" in specs:
            choices.append(
                Choice(
                    "onnxruntime",
                    f"cuda:{gpu.index}",
                    False,
                    (
                        "ONNX Runtime lists the CUDA execution provider, but edged's ONNX "
                        "engine runs on the CPU only",
                    ),
                    tier=_T_CUDA,
                )
            )
    for dev in hw.openvino_devices:
        if dev.kind in ("gpu", "npu"):
            choices.append(_ov_accel_choice(ctx, dev))
    choices.extend(_missing_devices(hw))
    cpu_backends = [b for b in CPU_STATIC_ORDER if b in specs]
    cpu_backends += sorted(b for b in specs if b not in CPU_STATIC_ORDER)
    for backend in cpu_backends:
        if "cpu" in ENGINE_DEVICES.get(backend, ("cpu",)):
            choices.append(_cpu_choice(ctx, backend, calib.get((backend, "cpu"), 0.0)))
    choices = [_apply_overrides(c, overrides) for c in choices]

    def key(ic: tuple[int, Choice]) -> tuple[int, int, int, float, int, int]:
        i, c = ic
        cpu = c.tier == _T_CPU
        static = CPU_STATIC_ORDER.index(c.backend) if c.backend in CPU_STATIC_ORDER else 9
        return (
            0 if c.available else 1,
            0 if _matches(c, overrides) else 1,
            c.tier,
            -c.tokens_per_second if cpu else 0.0,  # calibrated: fastest first
            static if cpu else 0,
            i,
        )

    ranked = [c for _, c in sorted(enumerate(choices), key=key)]
    return ranked


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
