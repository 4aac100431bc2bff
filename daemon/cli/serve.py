"""``edged serve``: run the daemon in the foreground."""

from __future__ import annotations

import argparse
import os
from collections import ChainMap

from edged.common import errors
from edged.daemon import config
from edged.daemon.cli.context import Context

# flag dest -> the environment variable it overrides (see edged.daemon.config)
_FLAGS: tuple[tuple[str, str, str, str], ...] = (
    ("--data-dir", "EDGED_DATA_DIR", "DIR", "model registry and sessions"),
    ("--cache-dir", "EDGED_CACHE_DIR", "DIR", "caches (session KV on disk, downloads)"),
    ("--log-dir", "EDGED_LOG_DIR", "DIR", "daemon log files"),
    ("--runtime-dir", "EDGED_RUNTIME_DIR", "DIR", "directory of the unix socket (made 0700)"),
    ("--socket", "EDGED_SOCKET", "PATH", "unix socket path (default RUNTIME_DIR/edged.sock)"),
    ("--tcp", "EDGED_TCP", "HOST:PORT", "also listen on loopback TCP (bearer token required)"),
    ("--token-file", "EDGED_TOKEN_FILE", "PATH", "bearer token for TCP clients (0600)"),
    (
        "--http",
        "EDGED_HTTP",
        "HOST:PORT|off",
        "HTTP listener for OpenAI/Ollama/Anthropic clients (default 127.0.0.1:11435)",
    ),
    ("--threads", "EDGED_THREADS", "N", "decode threads per worker (default: physical cores)"),
    ("--context", "EDGED_CONTEXT", "N", "context length in tokens per sequence (default 4096)"),
    (
        "--parallel",
        "EDGED_PARALLEL",
        "N",
        "sequences per model: resident sessions and streams decoded together (default 4)",
    ),
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the daemon in the foreground",
        description=(
            "Run the edged daemon in the foreground until interrupted. Each flag "
            "overrides the environment variable named in its help; other settings "
            "(EDGED_KEEP_ALIVE, EDGED_QUEUE_SIZE, EDGED_KV_RAM_MB, EDGED_KV_DISK_MB, "
            "EDGED_STREAM_INTERVAL_MS, ...; the README lists them all) come from the "
            "environment only."
        ),
    )
    for flag, env, metavar, text in _FLAGS:
        kind = int if env in ("EDGED_THREADS", "EDGED_CONTEXT") else str
        p.add_argument(flag, metavar=metavar, type=kind, help=f"{text} [env {env}]")
    p.set_defaults(func=cmd_serve)


def server_config(args: argparse.Namespace) -> config.ServerConfig:
    """``config.load_server`` with each given flag in place of its variable.

    Going through the same loader keeps derived defaults (the socket under
    ``--runtime-dir``) and validation (ranges of ``--threads``) in one place.
    """
    given: dict[str, str] = {}
    for flag, env, _, _ in _FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            given[env] = str(value)
    try:
        return config.load_server(ChainMap(given, dict(os.environ)))
    except ValueError as exc:
        raise errors.InvalidArgument(str(exc)) from exc


def cmd_serve(ctx: Context, args: argparse.Namespace) -> int:
    cfg = server_config(args)
    from edged.daemon.server import run_server

    return int(run_server(cfg))
