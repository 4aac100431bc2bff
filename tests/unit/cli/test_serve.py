"""`edged serve`: flags over environment variables, then run_server."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from edged.daemon.cli.main import main
from edged.daemon.config import ServerConfig


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ServerConfig]:
    seen: list[ServerConfig] = []

    def run_server(cfg: ServerConfig) -> int:
        seen.append(cfg)
        return 7

    fake = types.ModuleType("edged.daemon.server")
    fake.run_server = run_server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edged.daemon.server", fake)
    return seen


def test_serve_uses_the_environment(root: Path, served: list[ServerConfig]) -> None:
    assert main(["serve"]) == 7
    (cfg,) = served
    assert cfg.paths.socket == root / "run" / "edged.sock"
    assert cfg.paths.data_dir == root / "data"
    assert cfg.engine.threads == 2
    assert cfg.tcp is None


def test_flags_win_over_environment(
    root: Path, served: list[ServerConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EDGED_TCP", "127.0.0.1:1111")
    monkeypatch.delenv("EDGED_SOCKET")
    argv = [
        "serve", "--data-dir", str(tmp_path / "d"), "--runtime-dir", str(tmp_path / "r"),
        "--tcp", "127.0.0.1:2222", "--threads", "5", "--context", "8192",
        "--token-file", str(tmp_path / "t"),
    ]  # fmt: skip
    assert main(argv) == 7
    (cfg,) = served
    assert cfg.paths.data_dir == tmp_path / "d"
    assert cfg.paths.socket == tmp_path / "r" / "edged.sock"  # follows --runtime-dir
    assert cfg.paths.token_file == tmp_path / "t"
    assert cfg.paths.cache_dir == root / "cache"  # from the environment
    assert cfg.tcp == "127.0.0.1:2222"
    assert (cfg.engine.threads, cfg.engine.context_length) == (5, 8192)


def test_bad_flag_value_is_one_line(
    root: Path, served: list[ServerConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--context", "10"]) == 1
    assert (
        capsys.readouterr().err == "edged: EDGED_CONTEXT must be between 256 and 1048576, got 10\n"
    )
    assert served == []


def test_serve_help_names_the_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for var in ("EDGED_DATA_DIR", "EDGED_CACHE_DIR", "EDGED_LOG_DIR", "EDGED_RUNTIME_DIR",
                "EDGED_SOCKET", "EDGED_TCP", "EDGED_TOKEN_FILE", "EDGED_THREADS",
                "EDGED_CONTEXT"):  # fmt: skip
        assert f"[env {var}]" in out
