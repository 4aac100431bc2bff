"""macOS: a launchd agent (``~/Library/LaunchAgents/org.edged.daemon.plist``).

Loaded into the user's GUI domain (``launchctl bootstrap gui/UID``): it starts
at login (``RunAtLoad``), is restarted when it exits unsuccessfully
(``KeepAlive.SuccessfulExit = false``) at most once per ``ThrottleInterval``
seconds, and its stdout/stderr go to ``~/Library/Logs/edged`` beside the
daemon's own ``edged.log``.
"""

from __future__ import annotations

import plistlib
from pathlib import Path
from typing import Any

from edged.installer.service_common import (
    MARKER,
    CommandResult,
    LogSources,
    Runner,
    ServiceError,
    ServiceSpec,
    ServiceStatus,
    check_replaceable,
    remove_ours,
    write_file,
)

LABEL = "org.edged.daemon"
THROTTLE_S = 10
STDOUT_LOG = "launchd.out.log"
STDERR_LOG = "launchd.err.log"


def plist_dict(spec: ServiceSpec) -> dict[str, Any]:
    return {
        "Label": LABEL,
        # launchd ignores keys it does not know: this one says who wrote the file
        "Comment": MARKER,
        "ProgramArguments": list(spec.argv),
        "EnvironmentVariables": dict(spec.env),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_S,
        "ProcessType": "Background",
        "StandardOutPath": str(spec.log_dir / STDOUT_LOG),
        "StandardErrorPath": str(spec.log_dir / STDERR_LOG),
    }


def render_plist(spec: ServiceSpec) -> str:
    """The agent's plist (pure). Checked by parsing it back: what launchd reads
    is exactly what was meant, whatever the paths contain."""
    meant = plist_dict(spec)
    text = plistlib.dumps(meant, fmt=plistlib.FMT_XML, sort_keys=True).decode()
    if plistlib.loads(text.encode()) != meant:
        raise ServiceError("the launchd plist does not read back as written")  # pragma: no cover
    return text


class LaunchdManager:
    name = "launchd"

    def __init__(self, home: Path, uid: int, runner: Runner) -> None:
        self.path = home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        self.domain = f"gui/{uid}"
        self.target = f"{self.domain}/{LABEL}"
        self.run = runner

    def files(self) -> list[Path]:
        return [self.path]

    def _must(self, cmd: list[str]) -> CommandResult:
        result = self.run(cmd)
        if not result.ok:
            raise ServiceError(f"`{' '.join(cmd)}` failed: {result.output()}")
        return result

    def render(self, spec: ServiceSpec) -> str:
        return render_plist(spec)

    def install(self, spec: ServiceSpec) -> list[str]:
        check_replaceable(self.path)
        text = self.render(spec)
        spec.log_dir.mkdir(parents=True, exist_ok=True)  # launchd does not create it
        write_file(self.path, text)
        # an older copy may be loaded: unload it (fails when none is; fine)
        self.run(["launchctl", "bootout", self.target])
        self._must(["launchctl", "enable", self.target])
        self._must(["launchctl", "bootstrap", self.domain, str(self.path)])
        return [
            f"wrote {self.path}",
            f"ran launchctl enable {self.target}",
            f"ran launchctl bootstrap {self.domain} {self.path}",
        ]

    def uninstall(self) -> list[str]:
        if not self.path.exists():
            return [f"not installed ({self.path} does not exist)"]
        said = []
        if self.run(["launchctl", "bootout", self.target]).ok:
            said.append(f"ran launchctl bootout {self.target}")
        remove_ours(self.path)
        return [*said, f"removed {self.path}"]

    def status(self) -> ServiceStatus:
        installed = self.path.exists()
        printed = self.run(["launchctl", "print", self.target])
        loaded = printed.ok
        running = loaded and any(
            line.strip() == "state = running" for line in printed.stdout.splitlines()
        )
        detail = "\n".join(
            line.strip()
            for line in printed.stdout.splitlines()
            if line.strip().startswith(("state =", "pid =", "last exit code =", "runs ="))
        )
        return ServiceStatus(
            self.name, self.path, installed, enabled=loaded, running=running, detail=detail
        )

    def log_sources(self, log_dir: Path, lines: int) -> LogSources:
        names = (STDERR_LOG, STDOUT_LOG, "edged.log")
        return LogSources(command=None, files=[log_dir / name for name in names])
