"""`edged service`: the generated systemd unit, launchd plist and scheduled task,
and the commands install/uninstall/status run (recorded by a fake runner; the
unit is also checked by the real ``systemd-analyze verify``)."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import pytest

from edged.installer import launchd, systemd, windows
from edged.installer.service import follow, manager_for, tail
from edged.installer.service_common import (
    MARKER,
    CommandResult,
    ServiceError,
    ServiceSpec,
    service_environment,
)

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


class Recorder:
    """A runner that records each command and answers from a table of
    command-prefix -> result (first match wins; default: success, no output)."""

    def __init__(self, answers: dict[str, CommandResult] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[str] = []

    def __call__(self, cmd: Sequence[str]) -> CommandResult:
        line = " ".join(cmd)
        self.calls.append(line)
        for prefix, result in self.answers.items():
            if line.startswith(prefix):
                return result
        return CommandResult(0)


NO_BUS = CommandResult(1, "", "Failed to connect to bus: No medium found")
V252 = CommandResult(0, "systemd 252 (252.38-1~deb12u1)\n+PAM +AUDIT\n")
V255 = CommandResult(0, "systemd 255 (255.4-1ubuntu8)\n")


def spec(tmp_path: Path, python: str = "/opt/edged/.venv/bin/python", **env: str) -> ServiceSpec:
    return ServiceSpec(python=python, log_dir=tmp_path / "logs", env=tuple(sorted(env.items())))


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


# ---------------------------------------------------------------- systemd unit


def test_unit_runs_the_daemon_with_restart_and_backoff(tmp_path: Path) -> None:
    unit = systemd.render_unit(spec(tmp_path, EDGED_CONTEXT="8192"), 255)
    lines = unit.splitlines()
    assert lines[0] == f"# {MARKER}"
    assert 'ExecStart="/opt/edged/.venv/bin/python" "-m" "edged.daemon"' in lines
    assert 'Environment="EDGED_CONTEXT=8192"' in lines
    for expected in (
        "Restart=on-failure",
        "RestartSec=2s",
        "RestartSteps=6",
        "RestartMaxDelaySec=1min",
        "StartLimitIntervalSec=10min",
        "StartLimitBurst=10",
        "NoNewPrivileges=yes",
        "UMask=0077",
        "WantedBy=default.target",
        "TimeoutStopSec=30s",
    ):
        assert expected in lines, expected
    # the socket directory may be in /tmp and must stay visible to clients
    assert not any(line.startswith(("PrivateTmp", "ProtectHome")) for line in lines)


def test_old_systemd_gets_a_fixed_delay_not_unknown_keys(tmp_path: Path) -> None:
    unit = systemd.render_unit(spec(tmp_path), 252)
    assert "RestartSec=5s" in unit.splitlines()
    assert "RestartSteps=" not in unit
    assert "RestartMaxDelaySec=" not in unit
    assert "RestartSteps=" not in systemd.render_unit(spec(tmp_path), None)


def test_exec_and_environment_escaping() -> None:
    assert systemd.quote_executable("/home/a b/100%/$HOME/py") == '"/home/a b/100%%/$HOME/py"'
    assert systemd.quote_argument('a "b" \\ 5% $X') == '"a \\"b\\" \\\\ 5%% $$X"'
    assert systemd.quote_environment("K", 'x "y" %h $z') == '"K=x \\"y\\" %%h $z"'
    for bad in ('/home/o"q/py', "/home/o'q/py", "/home/back\\slash/py"):
        with pytest.raises(ServiceError, match="systemd cannot run a program whose path"):
            systemd.quote_executable(bad)
    with pytest.raises(ServiceError, match="absolute"):
        systemd.quote_executable("python")
    with pytest.raises(ServiceError, match="control character"):
        systemd.quote_argument("a\nExecStartPre=/bin/evil")
    with pytest.raises(ServiceError, match="control character"):
        systemd.quote_environment("K", "a\nb")


def _verify(unit_path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR") or str(runtime))
    return subprocess.run(
        [SYSTEMD_ANALYZE, "--user", "verify", str(unit_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _local_systemd_version() -> int | None:
    out = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True)
    return systemd.parse_version(out.stdout)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit_with_awkward_paths(tmp_path: Path) -> None:
    # a real interpreter behind a path with a space, a percent sign and a dollar:
    # verify fails ("not executable") unless ExecStart names exactly this file
    odd = tmp_path / "my venv %h $HOME" / "bin"
    odd.mkdir(parents=True)
    (odd / "python").symlink_to(sys.executable)
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    unit = unit_dir / systemd.UNIT
    the_spec = ServiceSpec(
        python=str(odd / "python"),
        log_dir=tmp_path / "logs",
        env=(("EDGED_DATA_DIR", str(tmp_path / 'data "x" 50%')), ("HF_ENDPOINT", "https://m")),
    )
    version = _local_systemd_version()
    unit.write_text(systemd.render_unit(the_spec, version))
    out = _verify(unit, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr.strip() == "", out.stderr  # not even a warning

    (odd / "python").unlink()  # the check is real: a missing interpreter fails
    out = _verify(unit, tmp_path)
    assert out.returncode != 0 and "is not executable" in out.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_on_the_backoff_unit(tmp_path: Path) -> None:
    """The unit for systemd >= 254 verifies too; an older systemd-analyze may
    only call RestartSteps/RestartMaxDelaySec unknown (it ignores them)."""
    unit = tmp_path / systemd.UNIT
    unit.write_text(systemd.render_unit(spec(tmp_path, python=sys.executable), 255))
    out = _verify(unit, tmp_path)
    assert out.returncode == 0, out.stderr
    complaints = [line for line in out.stderr.splitlines() if line.strip()]
    version = _local_systemd_version() or 0
    if version >= systemd.BACKOFF_SINCE:
        assert complaints == []
    else:
        assert len(complaints) == 2
        assert all("Unknown key" in c and "Restart" in c for c in complaints), complaints


# ------------------------------------------------------- systemd install/uninstall


def test_install_enables_and_starts_and_uninstall_removes_exactly_that(tmp_path: Path) -> None:
    home = tmp_path / "home"
    other = home / ".config" / "systemd" / "user" / "other.service"
    other.parent.mkdir(parents=True)
    other.write_text("[Service]\nExecStart=/bin/true\n")
    before = files_under(home)
    runner = Recorder({"systemctl --version": V255})
    manager = manager_for("Linux", home=home, environ={}, runner=runner)
    said = manager.install(spec(tmp_path))

    unit = home / ".config" / "systemd" / "user" / "edged.service"
    assert files_under(home) == before | {str(unit.relative_to(home))}
    assert "RestartSteps=6" in unit.read_text()
    assert runner.calls == [
        "systemctl --version",
        "systemctl --user show-environment",
        "systemctl --user daemon-reload",
        "systemctl --user enable edged.service",
        "systemctl --user restart edged.service",
    ]
    assert said[0] == f"wrote {unit}" and "loginctl enable-linger" in said[-1]

    runner.calls.clear()
    manager.uninstall()
    assert runner.calls == [
        "systemctl --user show-environment",
        "systemctl --user disable --now edged.service",
        "systemctl --user daemon-reload",
        "systemctl --user reset-failed edged.service",
    ]
    assert files_under(home) == before
    assert other.read_text() == "[Service]\nExecStart=/bin/true\n"


def test_xdg_config_home_is_honoured(tmp_path: Path) -> None:
    manager = manager_for(
        "Linux",
        home=tmp_path,
        environ={"XDG_CONFIG_HOME": str(tmp_path / "cfg")},
        runner=Recorder(),
    )
    assert manager.files() == [tmp_path / "cfg" / "systemd" / "user" / "edged.service"]


def test_without_a_user_manager_install_writes_the_file_and_says_what_to_run(
    tmp_path: Path,
) -> None:
    runner = Recorder({"systemctl --version": V252, "systemctl --user show-environment": NO_BUS})
    manager = manager_for("Linux", home=tmp_path, environ={}, runner=runner)
    said = manager.install(spec(tmp_path))
    unit = tmp_path / ".config" / "systemd" / "user" / "edged.service"
    assert unit.is_file() and "RestartSec=5s" in unit.read_text()
    assert not any("enable" in call for call in runner.calls)  # nothing ran
    assert "No medium found" in said[-1]
    assert said[-1].endswith(
        "systemctl --user daemon-reload && systemctl --user enable edged.service && "
        "systemctl --user restart edged.service"
    )

    # the user enabled it by hand later; uninstall (still no manager) removes both
    wants = unit.parent / "default.target.wants" / "edged.service"
    wants.parent.mkdir()
    wants.symlink_to(unit)
    said = manager.uninstall()
    assert not unit.exists() and not wants.is_symlink()
    assert f"removed {wants}" in said and "systemctl --user stop edged.service" in said[-1]


def test_install_step_failure_is_reported(tmp_path: Path) -> None:
    failing = CommandResult(1, "", "Failed to enable unit: Unit file edged.service is masked.")
    runner = Recorder({"systemctl --user enable": failing})
    manager = manager_for("Linux", home=tmp_path, environ={}, runner=runner)
    with pytest.raises(ServiceError, match=r"enable edged\.service` failed: .*masked"):
        manager.install(spec(tmp_path))


def test_a_unit_edged_did_not_write_is_never_overwritten_or_removed(tmp_path: Path) -> None:
    unit = tmp_path / ".config" / "systemd" / "user" / "edged.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/usr/local/bin/my-edged\n")
    manager = manager_for("Linux", home=tmp_path, environ={}, runner=Recorder())
    with pytest.raises(ServiceError, match="was not written by edged"):
        manager.install(spec(tmp_path))
    with pytest.raises(ServiceError, match="not written by edged; leaving it"):
        manager.uninstall()
    assert unit.read_text() == "[Service]\nExecStart=/usr/local/bin/my-edged\n"


def test_reinstall_replaces_our_own_unit(tmp_path: Path) -> None:
    manager = manager_for("Linux", home=tmp_path, environ={}, runner=Recorder())
    manager.install(spec(tmp_path, EDGED_CONTEXT="2048"))
    manager.install(spec(tmp_path, EDGED_CONTEXT="8192"))
    text = manager.files()[0].read_text()
    assert "EDGED_CONTEXT=8192" in text and "2048" not in text


def test_uninstall_when_not_installed(tmp_path: Path) -> None:
    runner = Recorder()
    said = manager_for("Linux", home=tmp_path, environ={}, runner=runner).uninstall()
    assert said[0].startswith("not installed") and runner.calls == []


def test_systemd_status(tmp_path: Path) -> None:
    runner = Recorder(
        {
            "systemctl --user is-enabled": CommandResult(0, "enabled\n"),
            "systemctl --user is-active": CommandResult(0, "active\n"),
            "systemctl --user status": CommandResult(0, "edged.service - edged\n Active: active"),
        }
    )
    manager = manager_for("Linux", home=tmp_path, environ={}, runner=runner)
    assert manager.status().exit_code == 4  # not installed
    manager.install(spec(tmp_path))
    st = manager.status()
    assert (st.installed, st.enabled, st.running, st.exit_code) == (True, True, True, 0)
    assert "Active: active" in st.detail

    runner.answers["systemctl --user is-active"] = CommandResult(3, "failed\n")
    assert manager.status().exit_code == 3

    runner.answers = {"systemctl --user show-environment": NO_BUS}
    st = manager.status()
    assert st.running is None and st.enabled is False and "No medium found" in st.notes[0]


# ------------------------------------------------------------------ environment


def test_service_environment_passes_edged_settings_only() -> None:
    environ = {
        "EDGED_DATA_DIR": "/data",
        "EDGED_TCP": "",  # empty: not set
        "EDGED_LLAMA_CUDA": "1",  # build-time only
        "EDGED_WHEEL_CACHE": "/w",
        "HF_ENDPOINT": "https://mirror",
        "HF_TOKEN": "hf_secret",
        "PATH": "/usr/bin",
        "HOME": "/root",
    }
    env = service_environment(environ, ["LD_LIBRARY_PATH=/usr/local/cuda/lib64", "HF_ENDPOINT=x"])
    assert env == (
        ("EDGED_DATA_DIR", "/data"),
        ("HF_ENDPOINT", "x"),
        ("LD_LIBRARY_PATH", "/usr/local/cuda/lib64"),
    )
    for bad in ("NOVALUE", "=x", "1A=b", "A-B=c"):
        with pytest.raises(ServiceError, match="NAME=VALUE"):
            service_environment({}, [bad])
    with pytest.raises(ServiceError, match="control character"):
        service_environment({"EDGED_X": "a\nb"})


# ----------------------------------------------------------------------- launchd


def test_plist_reads_back_with_awkward_paths(tmp_path: Path) -> None:
    logs = tmp_path / "Library" / "Logs" / 'edged & <co> "q" 100%'
    the_spec = ServiceSpec(
        python="/Users/a b/.venv/bin/python", log_dir=logs, env=(("EDGED_CONTEXT", "<8192>"),)
    )
    text = launchd.render_plist(the_spec)
    assert MARKER in text
    data = plistlib.loads(text.encode())
    assert data["Label"] == "org.edged.daemon"
    assert data["ProgramArguments"] == ["/Users/a b/.venv/bin/python", "-m", "edged.daemon"]
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] == {"SuccessfulExit": False}
    assert data["ThrottleInterval"] == 10
    assert data["StandardOutPath"] == str(logs / "launchd.out.log")
    assert data["StandardErrorPath"] == str(logs / "launchd.err.log")
    assert data["EnvironmentVariables"] == {"EDGED_CONTEXT": "<8192>"}


def test_launchd_install_uninstall_status(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    before = files_under(home)
    runner = Recorder({"launchctl bootout": CommandResult(3, "", "No such process")})
    manager = manager_for("Darwin", home=home, environ={}, runner=runner, uid=501)
    the_spec = spec(tmp_path)
    manager.install(the_spec)
    plist = home / "Library" / "LaunchAgents" / "org.edged.daemon.plist"
    assert plistlib.loads(plist.read_bytes())["Label"] == "org.edged.daemon"
    assert the_spec.log_dir.is_dir()  # launchd does not create the log directory
    assert runner.calls == [
        "launchctl bootout gui/501/org.edged.daemon",
        "launchctl enable gui/501/org.edged.daemon",
        f"launchctl bootstrap gui/501 {plist}",
    ]

    runner.answers = {
        "launchctl print": CommandResult(
            0, "gui/501/org.edged.daemon = {\n\tstate = running\n\tpid = 4242\n\truns = 1\n}\n"
        )
    }
    st = manager.status()
    assert (st.installed, st.running, st.exit_code) == (True, True, 0)
    assert "pid = 4242" in st.detail

    runner.calls.clear()
    manager.uninstall()
    assert runner.calls == ["launchctl bootout gui/501/org.edged.daemon"]
    assert files_under(home) == before

    runner.answers = {"launchctl print": CommandResult(113, "", "Could not find service")}
    assert manager.status().exit_code == 4


def test_launchd_bootstrap_failure_is_reported(tmp_path: Path) -> None:
    runner = Recorder({"launchctl bootstrap": CommandResult(5, "", "Bootstrap failed: 5: I/O")})
    manager = manager_for("Darwin", home=tmp_path, environ={}, runner=runner, uid=501)
    with pytest.raises(ServiceError, match="Bootstrap failed: 5"):
        manager.install(spec(tmp_path))


# ----------------------------------------------------------------------- Windows


def _task_field(root: ET.Element, path: str) -> str | None:
    ns = {"t": windows.NS}
    node = root.find(path, ns)
    return None if node is None else node.text


def test_task_xml(tmp_path: Path) -> None:
    the_spec = ServiceSpec(
        python=r"C:\Users\A B\edged\.venv\Scripts\python.exe",
        log_dir=Path(r"C:\Users\A B\AppData\Local\edged\Logs"),
        env=(("EDGED_DATA_DIR", r"D:\models & more"),),
    )
    text = windows.render_task_xml(the_spec, r"HOST\a b", r"C:\Py Dir\pythonw.exe")
    root = ET.fromstring(text.encode("utf-16"))
    assert root.tag == f"{{{windows.NS}}}Task"
    assert _task_field(root, "t:Triggers/t:LogonTrigger/t:UserId") == r"HOST\a b"
    assert _task_field(root, "t:Principals/t:Principal/t:LogonType") == "InteractiveToken"
    assert _task_field(root, "t:Principals/t:Principal/t:RunLevel") == "LeastPrivilege"
    assert _task_field(root, "t:Settings/t:RestartOnFailure/t:Interval") == "PT1M"
    assert _task_field(root, "t:Settings/t:RestartOnFailure/t:Count") == "10"
    assert _task_field(root, "t:Settings/t:ExecutionTimeLimit") == "PT0S"
    assert _task_field(root, "t:Settings/t:DisallowStartIfOnBatteries") == "false"
    assert _task_field(root, "t:Actions/t:Exec/t:Command") == r"C:\Py Dir\pythonw.exe"
    assert _task_field(root, "t:Actions/t:Exec/t:Arguments") == (
        r'-m edged.installer.launch --log "C:\Users\A B\AppData\Local\edged\Logs\service.out" '
        r'--env "EDGED_DATA_DIR=D:\models & more"'
    )
    assert MARKER in (_task_field(root, "t:RegistrationInfo/t:Description") or "")


def test_windows_install_uninstall_status(tmp_path: Path) -> None:
    environ = {
        "LOCALAPPDATA": str(tmp_path / "Local"),
        "USERNAME": "ann",
        "USERDOMAIN": "HOST",
    }
    runner = Recorder()
    manager = manager_for("Windows", home=tmp_path, environ=environ, runner=runner)
    manager.install(spec(tmp_path))
    xml_file = tmp_path / "Local" / "edged" / "service" / "edged-task.xml"
    raw = xml_file.read_bytes()
    assert raw.startswith(b"\xff\xfe")  # UTF-16 with its BOM, as schtasks wants
    root = ET.fromstring(raw)
    assert _task_field(root, "t:Triggers/t:LogonTrigger/t:UserId") == "HOST\\ann"
    assert runner.calls == [
        f"schtasks /Create /TN edged /XML {xml_file} /F",
        "schtasks /Run /TN edged",
    ]
    runner.answers = {
        "schtasks /Query": CommandResult(
            0, "HostName: HOST\nTaskName: \\edged\nStatus: Running\nLast Result: 267009\n"
        )
    }
    st = manager.status()
    assert (st.running, st.exit_code) == (True, 0)
    assert "Status: Running" in st.detail

    runner.calls.clear()
    manager.uninstall()
    assert runner.calls == ["schtasks /End /TN edged", "schtasks /Delete /TN edged /F"]
    assert not xml_file.exists()


def test_windows_needs_a_user_name(tmp_path: Path) -> None:
    manager = manager_for("Windows", home=tmp_path, environ={}, runner=Recorder())
    with pytest.raises(ServiceError, match="USERNAME is not set"):
        manager.install(spec(tmp_path))
    assert not manager.files()[0].exists()


def test_unknown_system(tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="cannot install a service on Haiku"):
        manager_for("Haiku", home=tmp_path, environ={}, runner=Recorder())


# ------------------------------------------------------------------- tail/follow


def test_tail(tmp_path: Path) -> None:
    log = tmp_path / "edged.log"
    assert tail(log, 3) == []
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    assert tail(log, 3) == ["line 7", "line 8", "line 9"]


def test_follow_prints_appended_lines_and_survives_rotation(tmp_path: Path) -> None:
    log = tmp_path / "edged.log"
    log.write_text("old\n")
    seen: list[str] = []

    def append(text: str) -> None:
        with log.open("a") as fh:
            fh.write(text)

    script = [
        lambda: append("one\ntw"),  # a partial line waits for its end
        lambda: append("o\n"),
        lambda: log.rename(tmp_path / "edged.log.1"),  # rotated away
        lambda: log.write_text("fresh\n"),  # a new file: read from its start
    ]
    steps = iter(script)

    def sleep(_: float) -> None:
        step = next(steps, None)
        if step is not None:
            step()

    ticks = iter(range(12))
    follow(log, seen.append, sleep=sleep, keep_going=lambda: next(ticks, None) is not None)
    assert seen == ["one", "two", "fresh"]
