"""What the per-platform service installers share: the spec, results, the runner.

Rendering a unit/plist/task file is a pure function of a :class:`ServiceSpec`
(tests check the files on any OS); every side effect on the platform's service
manager goes through a :data:`Runner`, so tests record the commands instead of
running them.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SERVICE_NAME = "edged"
DAEMON_MODULE = "edged.daemon"
# The first line of every file we write: uninstall removes only files carrying it,
# and install refuses to overwrite a file without it.
MARKER = "Written by `edged service install`; remove it with `edged service uninstall`."

# Variables the service inherits from the installing shell: edged's own runtime
# settings and where the Hugging Face hub lives. Never credentials (HF_TOKEN and
# proxies with passwords stay out of files on disk; pass what is needed with --env).
_PASSED_PREFIXES = ("EDGED_",)
_PASSED_NAMES = ("HF_ENDPOINT", "HF_HOME")
# Build-time knobs of installer/llama_build.py: meaningless to the daemon.
_BUILD_ONLY = ("EDGED_LLAMA_CUDA", "EDGED_LLAMA_CMAKE_ARGS", "EDGED_WHEEL_CACHE")


class ServiceError(Exception):
    """An install/uninstall step failed; the message says what to do."""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def output(self) -> str:
        return (self.stderr.strip() or self.stdout.strip()) or f"exit status {self.returncode}"


Runner = Callable[[Sequence[str]], CommandResult]


def run_command(cmd: Sequence[str]) -> CommandResult:
    """The real runner: capture output; a missing program is exit status 127."""
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        return CommandResult(127, "", f"{cmd[0]}: command not found")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return CommandResult(126, "", f"{cmd[0]}: {exc}")
    return CommandResult(out.returncode, out.stdout, out.stderr)


@dataclass(frozen=True)
class ServiceSpec:
    """What the service runs: ``python -m edged.daemon`` with these variables."""

    python: str  # absolute path of the interpreter edged is installed in
    log_dir: Path  # the daemon's own log directory (EDGED_LOG_DIR)
    env: tuple[tuple[str, str], ...] = ()

    @property
    def argv(self) -> tuple[str, ...]:
        return (self.python, "-m", DAEMON_MODULE)


def service_environment(
    environ: Mapping[str, str], extra: Sequence[str] = ()
) -> tuple[tuple[str, str], ...]:
    """The variables to put in the service: edged's (and the hub's) from
    ``environ``, then each ``NAME=VALUE`` of ``extra`` (later wins)."""
    chosen: dict[str, str] = {}
    for name, value in environ.items():
        passed = name.startswith(_PASSED_PREFIXES) or name in _PASSED_NAMES
        if passed and name not in _BUILD_ONLY and value:
            chosen[name] = value
    for item in extra:
        name, sep, value = item.partition("=")
        if not sep or not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise ServiceError(f"--env takes NAME=VALUE, got {item!r}")
        chosen[name] = value
    for name, value in chosen.items():
        if any(ord(ch) < 32 for ch in value):
            raise ServiceError(f"{name}'s value has a control character (newline?)")
    return tuple(sorted(chosen.items()))


@dataclass(frozen=True)
class ServiceStatus:
    manager: str  # "systemd", "launchd", "Task Scheduler"
    path: Path  # the unit/plist/task file
    installed: bool
    enabled: bool | None = None  # None: cannot tell here
    running: bool | None = None
    detail: str = ""  # the platform tool's own words
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """LSB-style: 0 running, 3 installed but not running, 4 not installed."""
        if not self.installed:
            return 4
        return 0 if self.running else 3


@dataclass(frozen=True)
class LogSources:
    """Where the service's output goes: a command that shows the platform's log
    (journalctl), and files (the daemon's own log, launchd's stdout/stderr)."""

    command: list[str] | None
    files: list[Path]


def write_file(path: Path, text: str, *, encoding: str = "utf-8", mode: int = 0o644) -> None:
    """Write ``path`` whole or not at all (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ours(path: Path, *, encoding: str = "utf-8") -> bool:
    """Whether ``path`` was written by ``edged service install``."""
    try:
        return MARKER in path.read_text(encoding=encoding, errors="replace")
    except OSError:
        return False


def check_replaceable(path: Path, *, encoding: str = "utf-8") -> None:
    if (path.exists() or path.is_symlink()) and not ours(path, encoding=encoding):
        raise ServiceError(
            f"{path} exists and was not written by edged; move it away first "
            "(edged will not overwrite a service file it did not write)"
        )


def remove_ours(path: Path, *, encoding: str = "utf-8") -> bool:
    """Remove ``path`` when it is ours; False when there is none."""
    if not (path.exists() or path.is_symlink()):
        return False
    if not ours(path, encoding=encoding):
        raise ServiceError(f"{path} was not written by edged; leaving it in place")
    path.unlink()
    return True
