"""System commands: hw, version."""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Sequence

import grpc

from edged.backends import registry
from edged.common import errors
from edged.daemon.cli import render
from edged.daemon.cli.context import Context
from edged.v1 import edged_pb2 as pb


def client_version() -> str:
    try:
        return importlib.metadata.version("edged")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "hw",
        help="show the hardware and the backend chosen for it",
        description="Show this machine's hardware and every backend, best first, with reasons.",
    )
    p.add_argument(
        "--model",
        "-m",
        default="",
        help="rank the backends for this model (default: smollm2 when pulled)",
    )
    p.add_argument(
        "--calibrate",
        nargs="?",
        const=True,
        default=False,
        metavar="MODEL",
        help="measure every CPU backend on the model again (a short real generation each)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_hw)

    p = sub.add_parser(
        "version",
        help="show the client and daemon versions",
        description="Show the client's version and, when a daemon runs, the daemon's.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_version)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _hw_text(hw: pb.HardwareResponse) -> str:
    memory = (
        f"{render.human_bytes(hw.memory_available_bytes)} available "
        f"of {render.human_bytes(hw.memory_total_bytes)}"
    )
    rows = [
        ("OS", f"{hw.os} ({hw.arch})"),
        ("CPU", hw.cpu or "unknown"),
        ("Cores", f"{hw.cpu_cores} physical, {hw.cpu_threads} logical"),
        ("Memory", memory),
    ]
    lines = [f"{key:<14}{value}" for key, value in rows]
    if hw.isa:
        lines += ["", "Instruction sets (reported by the CPU / usable by a process):"]
        isa = [("  " + f.name, _yes(f.reported), _yes(f.usable), f.note) for f in hw.isa]
        lines += render.table(("  name", "reported", "usable", "note"), isa).splitlines()
    lines.append("")
    gpus = [
        f"  {g.index}: {g.name}, {render.human_bytes(g.vram_free_bytes)} free of "
        f"{render.human_bytes(g.vram_total_bytes)}, driver {g.driver or '?'}, "
        f"compute capability {g.compute_capability or '?'}"
        for g in hw.nvidia_gpus
    ]
    lines += ["NVIDIA GPUs" + ("" if gpus else "   none"), *gpus]
    devices = []
    for d in hw.openvino_devices:
        kind = f" ({d.type})" if d.type else ""
        devices.append(f"  {d.name}: {d.full_name or '-'}{kind}")
        devices += [f"      {k} = {v}" for k, v in sorted(d.properties.items())]
    lines += ["OpenVINO devices" + ("" if devices else "   none"), *devices]
    lines.append(f"ONNX Runtime providers   {', '.join(hw.onnx_providers) or 'none'}")
    # llama_gpu_offload: whether the build of the backend that runs on CUDA can offload
    cuda = next((b.name for b in registry.BACKENDS if "cuda" in b.devices), "CUDA")
    lines.append(f"{cuda + ' GPU offload':<25}{_yes(hw.llama_gpu_offload)}")
    if hw.notes:
        lines += ["", "Notes:", *(f"  - {n}" for n in hw.notes)]
    lines.append("")
    title = f"Backends for {hw.model}" if hw.model else ("Backends" if hw.backends else "")
    lines += _backend_lines(hw.backends, title)
    if hw.calibrations:
        lines += [
            "",
            "Calibration (a 64-token prompt, then 32 tokens at temperature 0; tokens/s; "
            "fidelity over edged's evaluation text):",
        ]
        for c in hw.calibrations:
            together = (
                f", {c.aggregate_tokens_per_second:.1f} at {c.streams} streams together"
                if c.streams > 1
                else ""
            )
            fid = _fidelity_text(c.fidelity) if c.HasField("fidelity") else "fidelity not measured"
            kv = f", {c.kv_type} KV cache" if c.kv_type else ""
            lines.append(
                f"  {c.backend} {c.backend_version} on {c.device}{kv}: "
                f"decode {c.decode_tokens_per_second:.1f}{together}, prefill "
                f"{c.prefill_tokens_per_second:.1f}; {fid} "
                f"(measured {render.ago(c.measured_unix_ms)})"
            )
    return "\n".join(lines)


def _fidelity_text(f: pb.Fidelity) -> str:
    if f.measure == "reference":
        return "fidelity: the reference"
    if f.measure == "logits":
        return (
            f"top-1 agreement {f.agreement:.3f}, KL {f.mean_kl:.4f}, "
            f"perplexity {f.perplexity:.2f} vs {f.perplexity_reference:.2f}"
        )
    if f.measure == "greedy":
        return f"top-1 agreement {f.agreement:.3f} (greedy continuations)"
    return f"fidelity failed: {f.error}"


def _choice_line(b: pb.BackendChoice) -> str:
    facts = [b.fit] if b.fit else []
    if b.variant:
        facts.append(f"variant {b.variant}")
    if b.memory_bytes:
        facts.append(f"needs {render.human_bytes(b.memory_bytes)}")
    if b.gpu_layers:
        facts.append(f"{b.gpu_layers} layers on the GPU")
    if b.calibrated_tokens_per_second:
        speed = f"{b.calibrated_tokens_per_second:.1f} tokens/s at 1 stream"
        if b.streams > 1:
            speed += f", {b.aggregate_tokens_per_second:.1f} at {b.streams}"
        facts.append(speed)
    if b.HasField("fidelity"):
        facts.append(_fidelity_text(b.fidelity))
        if b.fidelity.measure and not b.fidelity.within_threshold:
            facts.append(f"BELOW the fidelity threshold ({b.fidelity.threshold:.3f})")
    return f"{b.backend} on {b.device or '-'}" + (f": {', '.join(facts)}" if facts else "")


def _backend_lines(backends: Sequence[pb.BackendChoice], title: str) -> list[str]:
    """The ranking: usable options best first (* = chosen), then the rejected ones."""
    if not title:
        return []
    usable = [b for b in backends if b.available]
    rejected = [b for b in backends if not b.available]
    lines = [f"{title} (best first; * = used by default):"]
    for i, b in enumerate(usable):
        lines.append(f"  {'*' if i == 0 else ' '} {_choice_line(b)}")
        lines += [f"      - {reason}" for reason in b.reasons]
    if not usable:
        lines.append("  (no backend can run it here)")
    if rejected:
        lines.append("  Rejected:")
        for b in rejected:
            lines.append(f"    x {_choice_line(b)}")
            lines += [f"      - {reason}" for reason in b.reasons]
    return lines


def backend_lines(backends: Sequence[pb.BackendChoice], title: str) -> list[str]:
    """For ``edged show``: the same ranking text as ``edged hw``."""
    return _backend_lines(backends, title)


def _uncalibrated(reply: pb.HardwareResponse) -> bool:
    """A model was ranked and some CPU backend that can run it has no figure."""
    return bool(reply.model) and any(
        b.available and b.device == "cpu" and not b.calibrated_tokens_per_second
        for b in reply.backends
    )


def cmd_hw(ctx: Context, args: argparse.Namespace) -> int:
    model = args.model
    if isinstance(args.calibrate, str):
        if model and model != args.calibrate:
            ctx.err("edged: error: --model and --calibrate name different models")
            return 2
        model = args.calibrate
    request = pb.HardwareRequest(model=model, calibrate=bool(args.calibrate))
    client = ctx.client()
    reply = client.system.Hardware(request)
    if not request.calibrate and _uncalibrated(reply):
        ctx.err(
            f"edged: measuring the CPU backends for {reply.model} once on this machine "
            "(cached; `edged hw --calibrate` measures again)..."
        )
        request.calibrate = True
        request.model = reply.model
        reply = client.system.Hardware(request)
    if args.json:
        render.print_json(render.to_dict(reply), ctx.stdout)
    else:
        ctx.out(_hw_text(reply))
    return 0


def cmd_version(ctx: Context, args: argparse.Namespace) -> int:
    """Never starts a daemon just to ask its version."""
    daemon: pb.VersionResponse | None = None
    problem = ""
    try:
        daemon = ctx.client(autostart=False).system.Version(pb.VersionRequest(), timeout=10)
    except errors.EdgedError as exc:
        problem = str(exc)
    except grpc.RpcError as exc:
        problem = render.rpc_message(exc)
    if args.json:
        render.print_json(
            {
                "client": {"version": client_version()},
                "daemon": render.to_dict(daemon) if daemon is not None else None,
            },
            ctx.stdout,
        )
    else:
        ctx.out(f"client version {client_version()}")
        if daemon is not None:
            ctx.out(f"daemon version {daemon.version} (api {daemon.api})")
            ctx.out(f"HTTP API {daemon.http_url or 'off'}")
    if daemon is None:
        ctx.err(f"edged: warning: could not reach the daemon: {problem}")
    return 0
