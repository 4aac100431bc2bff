"""``edged service install|uninstall|status|logs``: run the daemon at login."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from edged.common import errors
from edged.daemon import config
from edged.daemon.cli.context import Context
from edged.installer import service

_DESCRIPTION = """\
Run the daemon as a login service of this user: a systemd user unit on Linux,
a launchd agent on macOS, a scheduled task on Windows. It starts at login and
is restarted after a crash with back-off. The service gets the EDGED_* settings
(and HF_ENDPOINT, HF_HOME) of the shell that installs it, plus --env NAME=VALUE."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "service",
        help="install the daemon as a login service (systemd, launchd, Task Scheduler)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    install = actions.add_parser(
        "install",
        help="write the service file, enable and start it",
        description="Write the service file, enable it at login and start it now (again).",
    )
    install.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one more variable for the service (repeatable), e.g. LD_LIBRARY_PATH",
    )
    install.add_argument(
        "--dry-run",
        action="store_true",
        help="print the file that would be written; change nothing",
    )
    install.set_defaults(func=cmd_install)
    uninstall = actions.add_parser(
        "uninstall",
        help="stop and disable the service, remove its file",
        description="Stop and disable the service and remove the file install wrote (logs stay).",
    )
    uninstall.set_defaults(func=cmd_uninstall)
    status = actions.add_parser(
        "status",
        help="whether the service is installed, enabled and running",
        description="Exit status: 0 running, 3 installed but not running, 4 not installed.",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    logs = actions.add_parser(
        "logs",
        help="the service's log (journal, launchd output) and the daemon's edged.log",
        description="Show the platform's log of the service, then the end of the daemon's log.",
    )
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines of each (default 50)")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="then keep printing the daemon's log"
    )
    logs.set_defaults(func=cmd_logs)


def _manager() -> service.Manager:
    try:
        return service.manager_for()
    except service.ServiceError as exc:
        raise errors.FailedPrecondition(str(exc)) from exc


def _log_dir() -> Path:
    try:
        return config.load_paths().log_dir
    except ValueError as exc:
        raise errors.InvalidArgument(str(exc)) from exc


def spec_from_environment(extra: list[str]) -> service.ServiceSpec:
    try:
        env = service.service_environment(os.environ, extra)
    except service.ServiceError as exc:
        raise errors.InvalidArgument(str(exc)) from exc
    # not resolved: a venv's python is a link, and the venv is found through it
    python = str(Path(sys.executable).absolute())
    return service.ServiceSpec(python=python, log_dir=_log_dir(), env=env)


def cmd_install(ctx: Context, args: argparse.Namespace) -> int:
    spec = spec_from_environment(args.env)
    manager = _manager()
    if args.dry_run:
        try:
            text = manager.render(spec)
        except service.ServiceError as exc:
            raise errors.FailedPrecondition(str(exc)) from exc
        ctx.out(f"# {manager.files()[0]}")
        ctx.out(text.rstrip("\n"))
        return 0
    try:
        said = manager.install(spec)
    except service.ServiceError as exc:
        raise errors.FailedPrecondition(str(exc)) from exc
    for line in said:
        ctx.out(line)
    return 0


def cmd_uninstall(ctx: Context, args: argparse.Namespace) -> int:
    try:
        said = _manager().uninstall()
    except service.ServiceError as exc:
        raise errors.FailedPrecondition(str(exc)) from exc
    for line in said:
        ctx.out(line)
    return 0


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else "yes" if value else "no"


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    st = _manager().status()
    if args.json:
        ctx.out(
            json.dumps(
                {
                    "manager": st.manager,
                    "path": str(st.path),
                    "installed": st.installed,
                    "enabled": st.enabled,
                    "running": st.running,
                    "detail": st.detail,
                    "notes": st.notes,
                },
                indent=2,
            )
        )
        return st.exit_code
    ctx.out(f"{'manager':<10}{st.manager}")
    ctx.out(f"{'file':<10}{st.path}{'' if st.installed else ' (not installed)'}")
    ctx.out(f"{'enabled':<10}{_yes_no(st.enabled)}")
    ctx.out(f"{'running':<10}{_yes_no(st.running)}")
    for note in st.notes:
        ctx.out(f"note: {note}")
    if st.detail:
        ctx.out("")
        ctx.out(st.detail)
    return st.exit_code


def cmd_logs(ctx: Context, args: argparse.Namespace) -> int:
    if args.lines < 1:
        raise errors.InvalidArgument(f"--lines must be at least 1, got {args.lines}")
    log_dir = _log_dir()
    sources = _manager().log_sources(log_dir, args.lines)
    if sources.command is not None:
        ctx.out(f"==> {' '.join(sources.command)} <==")
        try:
            shown = subprocess.run(
                sources.command, capture_output=True, text=True, timeout=60, check=False
            )
            ctx.out((shown.stdout or shown.stderr).rstrip("\n"))
        except (OSError, subprocess.TimeoutExpired) as exc:
            ctx.out(f"(cannot read the journal: {exc})")
    for path in sources.files:
        lines = service.tail(path, args.lines)
        ctx.out(f"==> {path} <==" if lines else f"==> {path} (empty or missing) <==")
        for line in lines:
            ctx.out(line)
    if args.follow:
        ctx.stdout.flush()

        def write(line: str) -> None:
            ctx.out(line)
            ctx.stdout.flush()

        service.follow(log_dir / "edged.log", write)
    return 0
