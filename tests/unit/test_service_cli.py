"""`edged service ...` through the real command line; the platform's service
manager is reached through a recording runner (never the real systemctl)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from edged.daemon.cli.main import main
from edged.installer import service
from edged.installer.service_common import CommandResult


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.active = "inactive"

    def __call__(self, cmd: Sequence[str]) -> CommandResult:
        line = " ".join(cmd)
        self.calls.append(line)
        if line == "systemctl --version":
            return CommandResult(0, "systemd 255 (255.4)\n")
        if line.startswith("systemctl --user is-active"):
            return CommandResult(0 if self.active == "active" else 3, self.active + "\n")
        if line.startswith("systemctl --user is-enabled"):
            return CommandResult(0, "enabled\n")
        return CommandResult(0)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("EDGED_DATA_DIR", "EDGED_CONTEXT", "EDGED_LLAMA_CUDA", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    monkeypatch.setenv("EDGED_LOG_DIR", str(tmp_path / "logs"))
    return tmp_path


@pytest.fixture
def runner(home: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    real = service.manager_for

    def manager_for() -> service.Manager:
        return real("Linux", home=home, environ={}, runner=rec)

    monkeypatch.setattr(service, "manager_for", manager_for)
    return rec


UNIT = Path(".config/systemd/user/edged.service")


@pytest.mark.skipif(sys.platform != "linux", reason="renders the systemd unit of this machine")
def test_dry_run_prints_the_unit_and_writes_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGED_CONTEXT", "8192")
    monkeypatch.setenv("EDGED_LLAMA_CUDA", "1")
    assert main(["service", "install", "--dry-run", "--env", "LD_LIBRARY_PATH=/opt/cuda"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {home / UNIT}\n")
    python = str(Path(sys.executable).absolute())
    assert f'ExecStart="{python}" "-m" "edged.daemon"' in out
    assert 'Environment="EDGED_CONTEXT=8192"' in out
    assert 'Environment="LD_LIBRARY_PATH=/opt/cuda"' in out
    assert "EDGED_LLAMA_CUDA" not in out
    assert not (home / UNIT).exists()


def test_install_status_uninstall(
    home: Path, runner: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["service", "status"]) == 4
    assert "(not installed)" in capsys.readouterr().out

    assert main(["service", "install"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {home / UNIT}" in out
    assert "ran systemctl --user enable edged.service" in out
    assert (home / UNIT).is_file()

    assert main(["service", "status"]) == 3  # installed, not running
    runner.active = "active"
    assert main(["service", "status", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"running": true' in out and '"enabled": true' in out

    assert main(["service", "uninstall"]) == 0
    assert f"removed {home / UNIT}" in capsys.readouterr().out
    assert not (home / UNIT).exists()


def test_bad_env_is_a_clear_error(
    home: Path, runner: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["service", "install", "--env", "oops"]) == 1
    assert capsys.readouterr().err == "edged: --env takes NAME=VALUE, got 'oops'\n"
    assert runner.calls == []


def test_foreign_unit_is_a_clear_error(
    home: Path, runner: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / UNIT).parent.mkdir(parents=True)
    (home / UNIT).write_text("[Service]\nExecStart=/bin/true\n")
    assert main(["service", "install"]) == 1
    assert "was not written by edged" in capsys.readouterr().err


def test_logs_show_the_end_of_the_daemon_log(
    home: Path, runner: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "logs").mkdir()
    (home / "logs" / "edged.log").write_text("".join(f"entry {i}\n" for i in range(5)))
    assert main(["service", "logs", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "==> journalctl --user --unit edged.service --no-pager --lines 2 <==" in out
    assert out.endswith(f"==> {home / 'logs' / 'edged.log'} <==\nentry 3\nentry 4\n")
    assert main(["service", "logs", "-n", "0"]) == 1
    assert "--lines must be at least 1" in capsys.readouterr().err
