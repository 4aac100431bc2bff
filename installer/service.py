"""``edged service install|uninstall|status|logs``: the daemon as a login service.

One manager per platform, each with a pure renderer and a side-effecting part
that runs the platform's tool through a runner:

=======  ===============================================  =====================
system   what install writes                              then runs
=======  ===============================================  =====================
Linux    ``$XDG_CONFIG_HOME/systemd/user/edged.service``  ``systemctl --user``
         (systemd user unit, :mod:`.systemd`)             daemon-reload, enable,
                                                          restart
macOS    ``~/Library/LaunchAgents/org.edged.daemon.plist``  ``launchctl bootstrap``
         (launchd agent, :mod:`.launchd`)
Windows  ``%LOCALAPPDATA%\\edged\\service\\edged-task.xml``  ``schtasks /Create /XML``
         (scheduled task at logon, :mod:`.windows`)
=======  ===============================================  =====================

Uninstall removes exactly the file install wrote (and what the platform tool
made from it); the log directory stays.
"""

from __future__ import annotations

import os
import platform
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from edged.installer.launchd import LaunchdManager
from edged.installer.service_common import (
    LogSources,
    Runner,
    ServiceError,
    ServiceSpec,
    ServiceStatus,
    run_command,
    service_environment,
)
from edged.installer.systemd import SystemdManager
from edged.installer.windows import WindowsTaskManager

__all__ = [
    "Manager",
    "ServiceError",
    "ServiceSpec",
    "ServiceStatus",
    "follow",
    "manager_for",
    "service_environment",
    "tail",
]


class Manager(Protocol):
    name: str

    def files(self) -> list[Path]: ...

    def render(self, spec: ServiceSpec) -> str: ...

    def install(self, spec: ServiceSpec) -> list[str]: ...

    def uninstall(self) -> list[str]: ...

    def status(self) -> ServiceStatus: ...

    def log_sources(self, log_dir: Path, lines: int) -> LogSources: ...


def manager_for(
    system: str | None = None,
    *,
    home: Path | None = None,
    environ: Mapping[str, str] | None = None,
    runner: Runner = run_command,
    uid: int | None = None,
) -> Manager:
    """The service manager of ``system`` (``platform.system()`` by default)."""
    system = system or platform.system()
    home = home if home is not None else Path.home()
    environ = environ if environ is not None else os.environ
    if system == "Linux":
        return SystemdManager(home, environ, runner)
    if system == "Darwin":
        getuid = getattr(os, "getuid", None)
        return LaunchdManager(home, uid if uid is not None else getuid() if getuid else 0, runner)
    if system == "Windows":
        return WindowsTaskManager(home, environ, runner)
    raise ServiceError(f"edged cannot install a service on {system or 'this system'}")


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file ([] when it does not exist)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
    except FileNotFoundError:
        return []


def follow(
    path: Path,
    write: Callable[[str], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
    keep_going: Callable[[], bool] = lambda: True,
) -> None:
    """Print lines appended to ``path`` as they come (``tail -F``: a rotated or
    re-created file is reopened from its start)."""
    position: int | None = None
    identity: tuple[int, int] | None = None
    while keep_going():
        try:
            st = path.stat()
        except FileNotFoundError:
            identity = identity or (-1, -1)  # appears later: read it from its start
            sleep(0.5)
            continue
        if identity != (st.st_dev, st.st_ino) or (position or 0) > st.st_size:
            # first look: start at the end; a new file: from its start
            position = st.st_size if identity is None else 0
            identity = (st.st_dev, st.st_ino)
        if st.st_size > (position or 0):
            with path.open("rb") as fh:
                fh.seek(position or 0)
                chunk = fh.read()
            complete = chunk.rfind(b"\n") + 1  # print whole lines only
            if complete:
                position = (position or 0) + complete
                for line in chunk[:complete].decode("utf-8", "replace").splitlines():
                    write(line)
        sleep(0.5)
