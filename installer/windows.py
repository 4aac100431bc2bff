"""Windows: a Task Scheduler task run at the user's logon.

Registered from an XML definition (``schtasks /Create /XML``) kept in
``%LOCALAPPDATA%\\edged\\service``. The task runs ``pythonw -m
edged.installer.launch`` (no console window), which sets the service's
variables, appends the daemon's output to ``LOG_DIR\\service.out`` and
restarts it after a crash with back-off; the task's own RestartOnFailure
(every minute, ten times) covers a launcher that fails to start.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path, PureWindowsPath

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

NS = "http://schemas.microsoft.com/windows/2004/02/mit/task"
TASK = SERVICE_NAME
LAUNCHER = "edged.installer.launch"
SERVICE_LOG = "service.out"
RESTART_INTERVAL = "PT1M"  # Task Scheduler's minimum
RESTART_COUNT = 10
ENCODING = "utf-16"  # what schtasks /XML reads reliably (with its BOM)


def launcher_arguments(spec: ServiceSpec, log_file: str) -> list[str]:
    args = ["-m", LAUNCHER, "--log", log_file]
    for name, value in spec.env:
        args += ["--env", f"{name}={value}"]
    return args


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    node = ET.SubElement(parent, f"{{{NS}}}{tag}")
    if text is not None:
        node.text = text
    return node


def render_task_xml(spec: ServiceSpec, user_id: str, command: str) -> str:
    """The task definition (pure). ``command`` is the interpreter to start
    (pythonw.exe where there is one); arguments are quoted for CreateProcess."""
    log_file = str(PureWindowsPath(spec.log_dir) / SERVICE_LOG)
    arguments = subprocess.list2cmdline(launcher_arguments(spec, log_file))
    ET.register_namespace("", NS)
    task = ET.Element(f"{{{NS}}}Task", {"version": "1.2"})
    info = _sub(task, "RegistrationInfo")
    _sub(info, "Description", f"edged local LLM inference daemon. {MARKER}")
    _sub(info, "URI", f"\\{TASK}")
    logon = _sub(_sub(task, "Triggers"), "LogonTrigger")
    _sub(logon, "Enabled", "true")
    _sub(logon, "UserId", user_id)
    principal = _sub(_sub(task, "Principals"), "Principal")
    principal.set("id", "Author")
    _sub(principal, "UserId", user_id)
    _sub(principal, "LogonType", "InteractiveToken")
    _sub(principal, "RunLevel", "LeastPrivilege")
    settings = _sub(task, "Settings")
    for tag, value in (
        ("MultipleInstancesPolicy", "IgnoreNew"),
        ("DisallowStartIfOnBatteries", "false"),
        ("StopIfGoingOnBatteries", "false"),
        ("AllowHardTerminate", "true"),
        ("StartWhenAvailable", "true"),
        ("RunOnlyIfNetworkAvailable", "false"),
        ("AllowStartOnDemand", "true"),
        ("Enabled", "true"),
        ("Hidden", "false"),
        ("RunOnlyIfIdle", "false"),
        ("ExecutionTimeLimit", "PT0S"),  # no limit: a daemon
        ("Priority", "7"),
    ):
        _sub(settings, tag, value)
    idle = _sub(settings, "IdleSettings")
    _sub(idle, "StopOnIdleEnd", "false")
    _sub(idle, "RestartOnIdle", "false")
    restart = _sub(settings, "RestartOnFailure")
    _sub(restart, "Interval", RESTART_INTERVAL)
    _sub(restart, "Count", str(RESTART_COUNT))
    actions = _sub(task, "Actions")
    actions.set("Context", "Author")
    exec_ = _sub(actions, "Exec")
    _sub(exec_, "Command", command)
    _sub(exec_, "Arguments", arguments)
    _sub(exec_, "WorkingDirectory", str(PureWindowsPath(spec.log_dir)))
    body = ET.tostring(task, encoding="unicode")
    text = f'<?xml version="1.0" encoding="UTF-16"?>\n{body}\n'
    back = ET.fromstring(body).find(f"{{{NS}}}Actions/{{{NS}}}Exec/{{{NS}}}Arguments")
    if back is None or back.text != arguments:
        raise ServiceError("the task XML does not read back as written")  # pragma: no cover
    return text


def task_dir(home: Path, environ: Mapping[str, str]) -> Path:
    local = environ.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
    return Path(local) / "edged" / "service"


def user_id(environ: Mapping[str, str]) -> str:
    user = environ.get("USERNAME")
    if not user:
        raise ServiceError("USERNAME is not set: cannot name the user the task runs as")
    domain = environ.get("USERDOMAIN")
    return f"{domain}\\{user}" if domain else user


def windowless(python: str) -> str:
    """pythonw.exe beside python.exe, so logon opens no console window."""
    path = Path(python)
    quiet = path.with_name("pythonw.exe")
    return str(quiet) if path.name.lower() == "python.exe" and quiet.exists() else python


class WindowsTaskManager:
    name = "Task Scheduler"

    def __init__(self, home: Path, environ: Mapping[str, str], runner: Runner) -> None:
        self.path = task_dir(home, environ) / f"{TASK}-task.xml"
        self.environ = environ
        self.run = runner

    def files(self) -> list[Path]:
        return [self.path]

    def render(self, spec: ServiceSpec) -> str:
        return render_task_xml(spec, user_id(self.environ), windowless(spec.python))

    def install(self, spec: ServiceSpec) -> list[str]:
        check_replaceable(self.path, encoding=ENCODING)
        xml = self.render(spec)
        spec.log_dir.mkdir(parents=True, exist_ok=True)  # the task's working directory
        write_file(self.path, xml, encoding=ENCODING)
        said = [f"wrote {self.path}"]
        create = ["schtasks", "/Create", "/TN", TASK, "/XML", str(self.path), "/F"]
        for cmd in (create, ["schtasks", "/Run", "/TN", TASK]):
            result = self.run(cmd)
            if not result.ok:
                raise ServiceError(f"`{' '.join(cmd)}` failed: {result.output()}")
            said.append(f"ran {' '.join(cmd)}")
        return said

    def uninstall(self) -> list[str]:
        if not self.path.exists():
            return [f"not installed ({self.path} does not exist)"]
        said = []
        self.run(["schtasks", "/End", "/TN", TASK])  # fails when not running; fine
        delete = ["schtasks", "/Delete", "/TN", TASK, "/F"]
        result = self.run(delete)
        if not result.ok:
            raise ServiceError(f"`{' '.join(delete)}` failed: {result.output()}")
        said.append(f"ran {' '.join(delete)}")
        remove_ours(self.path, encoding=ENCODING)
        return [*said, f"removed {self.path}"]

    def status(self) -> ServiceStatus:
        installed = self.path.exists()
        result = self.run(["schtasks", "/Query", "/TN", TASK, "/FO", "LIST", "/V"])
        fields: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
        state = fields.get("Status", "")
        return ServiceStatus(
            self.name,
            self.path,
            installed,
            enabled=result.ok and fields.get("Scheduled Task State", "Enabled") == "Enabled",
            running=result.ok and state == "Running",
            detail="\n".join(f"{k}: {fields[k]}" for k in ("Status", "Last Result") if k in fields),
        )

    def log_sources(self, log_dir: Path, lines: int) -> LogSources:
        return LogSources(command=None, files=[log_dir / SERVICE_LOG, log_dir / "edged.log"])
