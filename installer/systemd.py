"""Linux: a systemd *user* unit (``~/.config/systemd/user/edged.service``).

The daemon runs as the logged-in user, starts at login (``default.target``),
restarts on a crash with back-off, and gives up (``failed``, visible in
``edged service status``) after ten starts in ten minutes. The daemon writes
its own log to ``EDGED_LOG_DIR/edged.log``; what it prints on stderr (a crash
before logging starts, a worker's native abort) goes to the journal.

Hardening is what a user manager can apply without user namespaces and without
breaking the daemon: ``NoNewPrivileges``, a private umask and a few seccomp
filters. Deliberately absent: ``PrivateTmp`` (the socket directory may be
``/tmp/runtime-UID`` when ``XDG_RUNTIME_DIR`` is unset, and clients outside the
unit must see it), ``ProtectHome``/``ProtectSystem`` (need mount namespaces a
user manager may not have; the registry lives in the home directory) and
``MemoryDenyWriteExecute`` (the OpenVINO and ONNX Runtime JITs need W+X pages).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from edged.installer.service_common import (
    MARKER,
    SERVICE_NAME,
    LogSources,
    Runner,
    ServiceError,
    ServiceSpec,
    ServiceStatus,
    check_replaceable,
    remove_ours,
    write_file,
)

UNIT = f"{SERVICE_NAME}.service"
# RestartSteps/RestartMaxDelaySec (exponential restart back-off) arrived in systemd 254.
BACKOFF_SINCE = 254
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_control(value: str, what: str) -> None:
    if _CONTROL.search(value):
        raise ServiceError(f"{what} contains a control character (newline?): {value!r}")


def quote_executable(path: str) -> str:
    """ExecStart's first word. systemd expands ``%`` specifiers there but not
    ``$`` variables, and refuses quotes and backslashes in an executable's name."""
    _no_control(path, "the Python path")
    if not path.startswith("/"):
        raise ServiceError(f"the Python path must be absolute, got {path!r}")
    bad = sorted({ch for ch in path if ch in "\"'\\"})
    if bad:
        raise ServiceError(
            f"systemd cannot run a program whose path contains {' '.join(bad)}: {path}; "
            "install edged in a virtual environment under a plainer path"
        )
    return '"' + path.replace("%", "%%") + '"'


def quote_argument(arg: str) -> str:
    """A later ExecStart word: C-style escapes in double quotes, ``%%`` and ``$$``."""
    _no_control(arg, "an argument")
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def quote_environment(name: str, value: str) -> str:
    """One ``Environment=`` assignment (specifiers expanded, variables not)."""
    _no_control(value, name)
    escaped = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%") + '"'


def render_unit(spec: ServiceSpec, systemd_version: int | None) -> str:
    """The unit file's text (pure: tests check it and run ``systemd-analyze verify``)."""
    python, *args = spec.argv
    exec_start = " ".join([quote_executable(python), *(quote_argument(a) for a in args)])
    if systemd_version is not None and systemd_version >= BACKOFF_SINCE:
        backoff = ["RestartSec=2s", "RestartSteps=6", "RestartMaxDelaySec=1min"]
    else:
        backoff = [
            f"# systemd {systemd_version or '?'} < {BACKOFF_SINCE}: fixed delay",
            "RestartSec=5s",
        ]
    lines = [
        f"# {MARKER}",
        "[Unit]",
        "Description=edged local LLM inference daemon",
        # ten starts in ten minutes and it stays down (failed) rather than crash-looping
        "StartLimitIntervalSec=10min",
        "StartLimitBurst=10",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={exec_start}",
        *(f"Environment={quote_environment(k, v)}" for k, v in spec.env),
        "Restart=on-failure",
        *backoff,
        # the daemon drains streams for up to 10 s on SIGTERM; its workers are in
        # the same cgroup and stop with it
        "TimeoutStopSec=30s",
        "KillMode=control-group",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "SystemCallArchitectures=native",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def unit_dir(home: Path, environ: Mapping[str, str]) -> Path:
    config = environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(config) / "systemd" / "user"


def parse_version(text: str) -> int | None:
    """252 from ``systemctl --version`` ("systemd 252 (252.38-1~deb12u1)")."""
    match = re.match(r"systemd (\d+)", text.strip())
    return int(match.group(1)) if match else None


class SystemdManager:
    name = "systemd"

    def __init__(self, home: Path, environ: Mapping[str, str], runner: Runner) -> None:
        self.dir = unit_dir(home, environ)
        self.path = self.dir / UNIT
        self.run = runner

    def files(self) -> list[Path]:
        return [self.path]

    def _ctl(self, *args: str) -> list[str]:
        return ["systemctl", "--user", *args]

    def usable(self) -> tuple[bool, str]:
        """Whether ``systemctl --user`` reaches a user manager (not in most containers)."""
        result = self.run(self._ctl("show-environment"))
        return result.ok, result.output()

    def _wants_links(self) -> list[Path]:
        return [p for p in self.dir.glob(f"*.wants/{UNIT}") if p.is_symlink()]

    def render(self, spec: ServiceSpec) -> str:
        return render_unit(spec, parse_version(self.run(["systemctl", "--version"]).stdout))

    def install(self, spec: ServiceSpec) -> list[str]:
        check_replaceable(self.path)
        write_file(self.path, self.render(spec))
        said = [f"wrote {self.path}"]
        ok, why = self.usable()
        steps = [
            self._ctl("daemon-reload"),
            self._ctl("enable", UNIT),
            self._ctl("restart", UNIT),
        ]
        if not ok:
            manual = " && ".join(" ".join(step) for step in steps)
            return [
                *said,
                f"systemctl --user is not usable here ({why}); to start the service, run "
                f"in your login session: {manual}",
            ]
        for step in steps:
            result = self.run(step)
            if not result.ok:
                raise ServiceError(f"`{' '.join(step)}` failed: {result.output()}")
            said.append(f"ran {' '.join(step)}")
        said.append(
            "the service starts at login and stops at logout; to keep it running "
            "without a login session: loginctl enable-linger"
        )
        return said

    def uninstall(self) -> list[str]:
        if not self.path.exists():
            return [f"not installed ({self.path} does not exist)"]
        ok, why = self.usable()
        said: list[str] = []
        if ok:
            result = self.run(self._ctl("disable", "--now", UNIT))
            if not result.ok:
                raise ServiceError(
                    f"`systemctl --user disable --now {UNIT}` failed: {result.output()}"
                )
            said.append(f"ran systemctl --user disable --now {UNIT}")
        else:
            for link in self._wants_links():  # what `enable` made, when done by hand
                link.unlink()
                said.append(f"removed {link}")
        remove_ours(self.path)
        said.append(f"removed {self.path}")
        if ok:
            self.run(self._ctl("daemon-reload"))
            self.run(self._ctl("reset-failed", UNIT))  # forget a failed state; may say none
            said.append("ran systemctl --user daemon-reload")
        else:
            said.append(
                f"systemctl --user is not usable here ({why}); if the service runs, stop it "
                f"in your login session: systemctl --user stop {UNIT} && "
                "systemctl --user daemon-reload"
            )
        return said

    def status(self) -> ServiceStatus:
        installed = self.path.exists()
        ok, why = self.usable()
        if not ok:
            return ServiceStatus(
                self.name,
                self.path,
                installed,
                enabled=bool(self._wants_links()) if installed else False,
                running=None,
                notes=[f"systemctl --user is not usable here ({why}): running state unknown"],
            )
        enabled = self.run(self._ctl("is-enabled", UNIT)).stdout.strip()
        active = self.run(self._ctl("is-active", UNIT)).stdout.strip()
        detail = self.run(self._ctl("status", UNIT, "--no-pager", "--lines=0"))
        return ServiceStatus(
            self.name,
            self.path,
            installed,
            enabled=enabled == "enabled",
            running=active == "active",
            detail=detail.stdout.strip(),
        )

    def log_sources(self, log_dir: Path, lines: int) -> LogSources:
        journal = ["journalctl", "--user", "--unit", UNIT, "--no-pager", "--lines", str(lines)]
        return LogSources(command=journal, files=[log_dir / "edged.log"])
