"""The `edged` CLI end to end: autostart a real daemon, pull, run, list, ps, show, rm."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness.daemon import clone_store, daemon_env

pytestmark = pytest.mark.model


def edged(
    env: dict[str, str], *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged.daemon.cli.main", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.fixture
def cli_env(tmp_path: Path, smollm2_store: Path) -> Iterator[dict[str, str]]:
    clone_store(smollm2_store, tmp_path / "data")
    env = daemon_env(tmp_path)
    yield env
    stop_autostarted(tmp_path)


def stop_autostarted(root: Path) -> None:
    """Stop the daemon a CLI command started for the data under ``root``."""
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "serve" in cmd and str(root) in cmd:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def test_run_autostarts_the_daemon_and_answers(cli_env: dict[str, str]) -> None:
    out = edged(cli_env, "run", "smollm2", "What is the capital of France?")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert "starting the daemon" in out.stderr
    # the daemon stays up for the next command
    ps = json.loads(edged(cli_env, "--no-autostart", "ps", "--json").stdout)
    assert ps["models"][0]["model"] == "smollm2:135m-q4_1"


def test_piped_prompt_json_and_model_commands(cli_env: dict[str, str], tmp_path: Path) -> None:
    out = edged(
        cli_env,
        "run",
        "smollm2",
        "--json",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        stdin="The capital of France is",
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert "Paris" in doc["text"] and 0 < doc["stats"]["completion_tokens"] <= 8

    listing = json.loads(edged(cli_env, "list", "--json").stdout)
    assert [m["name"] for m in listing["models"]] == ["smollm2"]
    show = edged(cli_env, "show", "smollm2")
    assert "Q4_1" in show.stdout and "You are a helpful assistant." in show.stdout

    # import a local file under a new name (relative path made absolute by the CLI)
    blob = next((tmp_path / "data" / "models" / "blobs").iterdir())
    link = tmp_path / "copy.gguf"
    link.symlink_to(blob)
    pulled = edged(cli_env, "pull", "copy.gguf", "--name", "mycopy:v1", "--json", cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    names = {m["name"] for m in json.loads(edged(cli_env, "list", "--json").stdout)["models"]}
    assert names == {"smollm2", "mycopy"}
    assert edged(cli_env, "rm", "mycopy:v1").returncode == 0

    bad = edged(cli_env, "run", "nosuchmodel", "hi")
    assert bad.returncode == 1
    assert bad.stderr.startswith("edged: ") and "Traceback" not in bad.stderr
