"""Where llama.cpp can run a model besides the CPU: NVIDIA GPUs, whole or by layers.

Full offload ranks first when the whole model, its KV cache and the compute
buffers fit in the GPU's free VRAM; a partial offload when at least half the
layers fit (below the CPU when fewer do). :func:`layers_that_fit` decides how
many repeating layers a GPU takes.
"""

from __future__ import annotations

from edged.backends.info import MiB
from edged.backends.llamacpp.info import INFO
from edged.backends.memory import CUDA_CONTEXT_BYTES, compute_bytes, device_kind, kv_bytes
from edged.backends.placement import (
    TIER_CUDA,
    TIER_CUDA_FEW,
    TIER_CUDA_PARTIAL,
    Choice,
    PlacementContext,
    human_gib,
)
from edged.common.hardware_profile import NvidiaGpu
from edged.common.model_facts import ModelFacts

MIN_COMPUTE_CAPABILITY = (5, 0)  # llama.cpp's CUDA build targets
NAME = INFO.name


def gpu_need(
    facts: ModelFacts,
    *,
    context_length: int,
    sequences: int,
    gpu_layers: int,
    device: str = "cuda:0",
    kv_type: str = "f16",
) -> int:
    """VRAM that offloading ``gpu_layers`` repeating layers takes: their
    weights and KV, the output layer once every layer is there, the compute
    buffer and the CUDA context."""
    n = max(0, min(gpu_layers, facts.n_layer or gpu_layers))
    weights = n * facts.per_layer_bytes
    if facts.n_layer and n >= facts.n_layer:
        weights = facts.weights_bytes  # llama.cpp then offloads the output layer too
    kv = kv_bytes(
        facts,
        context_length=context_length,
        sequences=sequences,
        backend=NAME,
        device=device,
        layers=n,
        kv_type=kv_type,
    )
    fixed = compute_bytes(facts, sequences=sequences)
    if device_kind(device) == "cuda":
        fixed += CUDA_CONTEXT_BYTES
    return weights + kv + fixed


def layers_that_fit(
    facts: ModelFacts,
    free_bytes: int,
    *,
    context_length: int,
    sequences: int,
    device: str = "cuda:0",
    reserve_bytes: int = 256 * MiB,
    kv_type: str = "f16",
) -> int:
    """The most repeating layers whose weights + KV fit in ``free_bytes`` of
    device memory, keeping ``reserve_bytes`` free (other processes, the
    driver's own growth). ``facts.n_layer`` means the whole model fits."""
    if not facts.n_layer:
        return 0
    budget = free_bytes - reserve_bytes
    best = 0
    for n in range(facts.n_layer + 1):
        need = gpu_need(
            facts,
            context_length=context_length,
            sequences=sequences,
            gpu_layers=n,
            device=device,
            kv_type=kv_type,
        )
        if need > budget:
            break
        best = n
    return best


def accelerator_choices(ctx: PlacementContext) -> list[Choice]:
    """One choice per NVIDIA GPU (most free VRAM first), or why there is none."""
    if not ctx.hw.nvidia_gpus:
        nv = next((n for n in ctx.hw.notes if n.startswith("NVIDIA")), "")
        why = "no NVIDIA GPU found" + (f" ({nv})" if nv else "")
        return [Choice(NAME, "cuda", False, (why,), tier=TIER_CUDA)]
    gpus = sorted(ctx.hw.nvidia_gpus, key=lambda g: (-g.vram_free, g.index))
    return [cuda_choice(ctx, gpu) for gpu in gpus]


def _problems(ctx: PlacementContext, gpu: NvidiaGpu) -> list[str]:
    problems: list[str] = []
    if not ctx.hw.llama_gpu_offload:
        problems.append("the installed llama.cpp was built without CUDA (no GPU offload)")
    cc = gpu.compute_capability
    if cc:
        try:
            major, minor = (int(x) for x in cc.split(".")[:2])
        except ValueError:
            return problems
        if (major, minor) < MIN_COMPUTE_CAPABILITY:
            problems.append(f"compute capability {cc} is older than llama.cpp's CUDA minimum 5.0")
    return problems


def cuda_choice(ctx: PlacementContext, gpu: NvidiaGpu) -> Choice:
    device = f"cuda:{gpu.index}"
    name = gpu.name if gpu.name.upper().startswith("NVIDIA") else f"NVIDIA {gpu.name}"
    head = f"{name} ({human_gib(gpu.vram_free)} free of {human_gib(gpu.vram_total)})"
    v, problems = ctx.base_checks(NAME)
    problems += _problems(ctx, gpu)
    if v is None or problems:
        return Choice(NAME, device, False, (head, *problems), fit="", tier=TIER_CUDA)
    facts = ctx.facts(v)
    total_layers = facts.n_layer

    def need(layers: int) -> int:
        return gpu_need(
            facts,
            context_length=ctx.context_length,
            sequences=ctx.sequences,
            gpu_layers=layers,
            device=device,
            kv_type=ctx.kv_type_for(NAME),
        )

    full = need(total_layers or 1)
    if not total_layers:  # shape unknown: all or nothing by size
        fits = full <= gpu.vram_free
        why = f"needs about {human_gib(full)} of VRAM"
        if not fits:
            why += f", only {human_gib(gpu.vram_free)} free"
        return Choice(
            NAME,
            device,
            fits,
            (head, why),
            fit="fits" if fits else "no",
            memory_bytes=full,
            gpu_layers=-1 if fits else 0,
            variant=v.name,
            tier=TIER_CUDA,
        )
    n = layers_that_fit(
        facts,
        gpu.vram_free,
        context_length=ctx.context_length,
        sequences=ctx.sequences,
        device=device,
        kv_type=ctx.kv_type_for(NAME),
    )
    if n >= total_layers:
        why = (
            f"the whole model fits: {human_gib(full)} of VRAM for weights, KV "
            f"({ctx.context_length} tokens x {ctx.sequences}) and buffers; all "
            f"{total_layers} layers offloaded"
        )
        return Choice(
            NAME,
            device,
            True,
            (head, why),
            fit="fits",
            memory_bytes=full,
            gpu_layers=total_layers + 1,
            variant=v.name,
            tier=TIER_CUDA,
        )
    if n == 0:
        why = (
            f"not even one layer fits: one layer and the buffers need "
            f"{human_gib(need(1))} of VRAM, the whole model {human_gib(full)}"
        )
        return Choice(
            NAME,
            device,
            False,
            (head, why),
            fit="no",
            memory_bytes=full,
            variant=v.name,
            tier=TIER_CUDA,
        )
    few = n * 2 < total_layers
    why = (
        f"only {n} of {total_layers} layers fit ({human_gib(need(n))} of VRAM; the whole "
        f"model needs {human_gib(full)}): partial offload, the other layers run on the CPU"
    )
    if few:
        why += "; fewer than half on the GPU, so the CPU ranks first"
    return Choice(
        NAME,
        device,
        True,
        (head, why),
        fit="partial",
        memory_bytes=need(n),
        gpu_layers=n,
        variant=v.name,
        tier=TIER_CUDA_FEW if few else TIER_CUDA_PARTIAL,
    )
