"""System commands: hw, version."""

from __future__ import annotations

import argparse
import importlib.metadata

import grpc

from edged.daemon import errors
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
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_hw)

    p = sub.add_parser(
        "version",
        help="show the client and daemon versions",
        description="Show the client's version and, when a daemon runs, the daemon's.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_version)


def _hw_text(hw: pb.HardwareResponse) -> str:
    threads = f"{hw.cpu_cores} cores, {hw.cpu_threads} threads"
    memory = (
        f"{render.human_bytes(hw.memory_available_bytes)} available "
        f"of {render.human_bytes(hw.memory_total_bytes)}"
    )
    rows = [
        ("OS", f"{hw.os} ({hw.arch})"),
        ("CPU", f"{hw.cpu or 'unknown'} ({threads})"),
        ("CPU features", " ".join(hw.cpu_features) or "-"),
        ("Memory", memory),
        ("GPUs", ", ".join(hw.gpus) or "none"),
    ]
    lines = [f"{key:<14}{value}" for key, value in rows]
    lines += ["", "Backends (best first; * = used by default):"]
    chosen = next((i for i, b in enumerate(hw.backends) if b.available), None)
    for i, b in enumerate(hw.backends):
        mark = "*" if i == chosen else " "
        state = "available" if b.available else "not available"
        lines.append(f"  {mark} {b.backend} on {b.device or '-'}: {state}")
        lines += [f"      - {reason}" for reason in b.reasons]
    if not hw.backends:
        lines.append("  (none)")
    return "\n".join(lines)


def cmd_hw(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client().system.Hardware(pb.HardwareRequest())
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
    if daemon is None:
        ctx.err(f"edged: warning: could not reach the daemon: {problem}")
    return 0
