"""`edged rpc-worker`: lend this machine's CPU and memory to another daemon
through llama.cpp's own RPC server (ggml_backend_rpc_start_server).

The protocol has no authentication and no encryption, and its server has had
remote-code-execution bugs: the worker listens on loopback unless
``--allow-network`` is given, and then says why that is dangerous and what to
do instead. The daemon never starts a worker by itself.
"""

from __future__ import annotations

import argparse
import os
import signal

from edged.common import errors
from edged.common.endpoints import is_loopback, parse_endpoint
from edged.daemon.cli.context import Context

_DANGER = """\
edged: WARNING: --allow-network exposes the ggml RPC server on {endpoint}.
  The RPC protocol has NO authentication and NO encryption: anyone who can reach
  this port can use this machine's memory and CPU, read what is computed, and
  send it crafted tensors. Its server has had remote-code-execution bugs
  (CVE-2026-34159 among others). Prefer listening on loopback and reaching it
  through a tunnel only you can use:
    ssh -N -L 50052:127.0.0.1:50052 THIS_HOST   (on the daemon's machine), or
    WireGuard, listening on this machine's WireGuard address only.
  Never expose it to the internet or an untrusted network."""

_DESCRIPTION = """\
Run the ggml RPC server (ggml's own, in the llama-cpp-python ./install.sh
builds unless EDGED_LLAMA_RPC=0) on HOST:PORT, lending this machine's CPU and
memory to a daemon elsewhere that lists it in EDGED_RPC=HOST:PORT[,HOST:PORT...]. Runs in the
foreground until stopped (Ctrl-C). The daemon never starts one by itself.

It listens on a loopback address only, unless --allow-network is given: the RPC
protocol has no authentication and no encryption, and its server has had
remote-code-execution bugs. Across machines, keep it on loopback and use an SSH
tunnel (ssh -N -L PORT:127.0.0.1:PORT WORKER_HOST) or WireGuard."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rpc-worker",
        help="lend this machine to another daemon through the ggml RPC server",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:50052",
        help="where to listen (default 127.0.0.1:50052; loopback unless --allow-network)",
    )
    p.add_argument(
        "--allow-network",
        action="store_true",
        help="allow a non-loopback address (dangerous: no authentication, no encryption)",
    )
    p.add_argument(
        "--threads", type=int, default=0, metavar="N", help="CPU threads (default: all cores)"
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="let the server cache large tensors in DIR (rpc-server's -c)",
    )
    p.set_defaults(func=cmd_rpc_worker)


def check_listen(listen: str, allow_network: bool) -> str:
    """The endpoint to serve, or InvalidArgument for a non-loopback one without
    --allow-network (imports nothing heavy: testable without llama.cpp)."""
    host, port = parse_endpoint(listen)
    if not is_loopback(host) and not allow_network:
        raise errors.InvalidArgument(
            f"refusing to listen on {host}: it is not a loopback address, and the ggml RPC "
            "protocol has no authentication and no encryption (its server has had remote-"
            "code-execution bugs). Listen on 127.0.0.1 and reach it over an SSH tunnel "
            f"(ssh -N -L {port}:127.0.0.1:{port} THIS_HOST) or WireGuard; pass "
            "--allow-network only on a network you fully trust"
        )
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cmd_rpc_worker(ctx: Context, args: argparse.Namespace) -> int:
    endpoint = check_listen(args.listen, args.allow_network)
    if args.allow_network:
        ctx.err(_DANGER.format(endpoint=endpoint).removeprefix("edged: "))
    threads = args.threads if args.threads > 0 else (os.cpu_count() or 1)
    from edged.backends.llamacpp import rpc

    rpc.library()  # a build without RPC fails here, with how to rebuild
    ctx.out(f"edged rpc-worker: ggml RPC server on {endpoint} ({threads} threads)")
    ctx.stdout.flush()
    # the server blocks in C: let Ctrl-C and SIGTERM end the process directly
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    rpc.serve(endpoint, threads=threads, cache_dir=args.cache_dir)
    return 0
