"""`edged load/config/stop/run` lifecycle options against the fake daemon."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from edged.daemon.cli.durations import human_duration, parse_duration, until
from edged.daemon.cli.main import main
from edged.v1 import edged_pb2 as pb

from .conftest import FakeDaemon


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300", 300.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1.5h", 5400.0),
        ("2d", 172800.0),
        ("0", 0.0),
        ("-1", -1.0),
        ("-5m", -1.0),
        ("forever", -1.0),
        ("Forever", -1.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m", "1e400", "ten"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        parse_duration(text)


def test_until_texts() -> None:
    now_ms = int(time.time() * 1000)
    assert until(300, now_ms + 240_500, False) == "in 4 minutes"
    assert until(300, now_ms + 7_300_000, False) == "in 2 hours"
    assert until(300, 0, False) == "in use, then 5 minutes"
    assert until(0, 0, False) == "when idle"
    assert until(-1, 0, False) == "forever"
    assert until(300, 0, True) == "pinned"
    assert until(10, now_ms - 5, False) == "now"
    assert human_duration(1) == "1 second"


def test_load_with_pin_and_keep_alive(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load", "smollm2", "--pin", "--keep-alive", "10m", "--context", "8192"]) == 0
    (request,) = fake.requests("Load")
    assert request.model == "smollm2" and request.pin
    assert request.keep_alive_s == 600 and request.context_length == 8192
    out = capsys.readouterr().out
    assert "loaded smollm2:135m on llama.cpp/cpu (pid 4242)" in out
    assert "context 8192 tokens, memory about 250 MB" in out
    assert "unloads: pinned" in out


def test_load_without_keep_alive_leaves_it_unset(fake: FakeDaemon) -> None:
    assert main(["load", "smollm2", "--json"]) == 0
    (request,) = fake.requests("Load")
    assert not request.HasField("keep_alive_s") and not request.pin


def test_config_merges_with_what_is_stored(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "smollm2", "--keep-alive", "forever", "--pin", "--device", "cpu"]) == 0
    (request,) = fake.requests("Configure")
    assert request.model == "smollm2"
    s = request.settings
    assert s.keep_alive_s == -1 and s.pinned and s.device == "cpu" and not s.backend
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "smollm2:135m:",
        "  device      cpu",
        "  keep-alive  forever",
        "  pinned      yes",
    ]


def test_config_without_options_only_shows(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "smollm2"]) == 0
    assert fake.requests("Configure") == []
    assert capsys.readouterr().out == "smollm2:135m: no settings (the daemon's defaults apply)\n"
    assert main(["config", "smollm2", "--reset", "--json"]) == 0
    (request,) = fake.requests("Configure")
    assert request.settings == pb.ModelSettings()
    assert json.loads(capsys.readouterr().out)["pinned"] is False


def test_config_refuses_a_bad_duration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["config", "smollm2", "--keep-alive", "soon"])
    assert "is not a duration" in capsys.readouterr().err


def test_stop_when_not_loaded_says_so(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.state.loaded = False
    assert main(["stop", "smollm2"]) == 0
    assert capsys.readouterr().out == "smollm2:135m is not loaded\n"
    assert fake.requests("Unload") == []


def test_run_passes_lifecycle_options(fake: FakeDaemon) -> None:
    argv = ["run", "smollm2", "--keep-alive", "0", "--device", "cpu", "--context", "1024", "hi"]
    assert main(argv) == 0
    (request,) = fake.requests("Generate")
    assert request.keep_alive_s == 0 and request.HasField("keep_alive_s")
    assert request.device == "cpu" and request.context_length == 1024
    assert main(["run", "smollm2", "hi"]) == 0
    assert not fake.requests("Generate")[1].HasField("keep_alive_s")


def test_run_backend_openvino_is_accepted(fake: FakeDaemon) -> None:
    assert main(["run", "smollm2", "--backend", "openvino", "hi"]) == 0
    assert fake.requests("Generate")[0].backend == "openvino"


def test_show_prints_the_model_settings() -> None:
    from edged.daemon.cli.models import _show_text

    reply = pb.ShowModelResponse(
        model=pb.ModelInfo(name="smollm2", tag="x", format="gguf"),
        settings=pb.ModelSettings(pinned=True, keep_alive_s=3600, context_length=8192),
    )
    text = _show_text(reply)
    assert "  Settings\n    keep-alive        1 hour\n    pinned            yes\n" in text
    assert "    context           8192" in text
    assert "Settings" not in _show_text(pb.ShowModelResponse(model=reply.model))
