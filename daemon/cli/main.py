"""The ``edged`` command line: argument parsing and dispatch.

Every failure ends as one ``edged: <message>`` line on stderr and exit status
1 (130 after Ctrl-C); never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import grpc

from edged.common import errors
from edged.daemon.cli import (
    create,
    embed,
    models,
    remote,
    render,
    rpc,
    run,
    serve,
    service,
    system,
)
from edged.daemon.cli import store as store_cli
from edged.daemon.cli import tokens as tokens_cli
from edged.daemon.cli.context import Context

_EPILOG = """\
The daemon is reached on its unix socket (EDGED_SOCKET, default
RUNTIME_DIR/edged.sock), or on loopback TCP with --tcp / EDGED_TCP using the
bearer token in --token-file / EDGED_TOKEN_FILE (that file may also hold a
scoped token from `edged token create`). A client command starts the
daemon in the background when none is running (output in LOG_DIR/serve.out)
unless --no-autostart is given. Run `edged COMMAND --help` for a command's
options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edged",
        description="Local LLM inference daemon and its command line client.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edged {system.client_version()}")
    parser.add_argument(
        "--no-autostart",
        dest="autostart",
        action="store_false",
        help="do not start the daemon when none is running",
    )
    parser.add_argument(
        "--tcp",
        dest="client_tcp",
        metavar="HOST:PORT",
        help="reach the daemon over loopback TCP instead of the unix socket [env EDGED_TCP]",
    )
    parser.add_argument(
        "--token-file",
        dest="client_token_file",
        metavar="PATH",
        type=Path,
        help="bearer token file for TCP [env EDGED_TOKEN_FILE]",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    serve.register(sub)
    run.register(sub)
    models.register(sub)
    create.register(sub)
    system.register(sub)
    store_cli.register(sub)
    service.register(sub)
    tokens_cli.register(sub)
    embed.register(sub)
    remote.register(sub)
    rpc.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `edged run MODEL --verbose why is the sky blue`: words after an
        # option belong to the prompt, as with ollama; anything else is an error.
        if args.command != "run" or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.prompt += extra
    if args.command is None:
        parser.print_help()
        return 0
    ctx = Context.from_args(args)
    try:
        return int(args.func(ctx, args))
    except errors.EdgedError as exc:
        ctx.err(f"edged: {exc}")
        return 1
    except grpc.RpcError as exc:
        ctx.err(f"edged: {render.rpc_message(exc)}")
        return 1
    except KeyboardInterrupt:
        ctx.err("")
        return 130
    except BrokenPipeError:
        # `edged list | head`: the reader went away; say nothing, and keep
        # the interpreter's final flush of stdout from failing again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
