"""The CLI's commands against the fake daemon."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from edged.daemon.cli import run
from edged.daemon.cli.main import main
from edged.daemon.client import connect
from edged.v1 import edged_pb2 as pb

from .conftest import MODEL, FakeDaemon


def test_one_shot_streams_the_reply(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "smollm2", "hi", "there"]) == 0
    out, err = capsys.readouterr()
    assert out == "Hello world\n"
    assert err == ""
    (request,) = fake.requests("Generate")
    assert request.model == "smollm2"
    assert [(m.role, m.content) for m in request.chat.messages] == [("user", "hi there")]
    assert not request.sampling.HasField("temperature")
    assert not request.sampling.HasField("max_tokens")


def test_one_shot_writes_each_chunk_as_it_arrives(fake: FakeDaemon) -> None:
    writes: list[str] = []

    class Recorder(io.StringIO):
        def write(self, s: str) -> int:
            writes.append(s)
            return len(s)

    with connect(autostart=False) as client:
        code = run.one_shot(
            client, "m", "hi", system=None, sampling=pb.SamplingParams(),
            out=Recorder(), err=io.StringIO(),
        )  # fmt: skip
    assert code == 0
    assert writes == ["Hel", "lo", " world", "\n"]


def test_one_shot_sends_system_and_sampling(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "run", "m", "--system", "be brief", "--temperature", "0", "--top-p", "0.5",
        "--top-k", "7", "--min-p", "0.1", "--repeat-penalty", "1.1", "--seed", "42",
        "--max-tokens", "16", "--stop", "END", "--stop", "\n\n", "why?",
    ]  # fmt: skip
    assert main(argv) == 0
    (request,) = fake.requests("Generate")
    roles = [(m.role, m.content) for m in request.chat.messages]
    assert roles == [("system", "be brief"), ("user", "why?")]
    s = request.sampling
    assert s.HasField("temperature") and s.temperature == 0
    assert s.top_p == pytest.approx(0.5)
    assert (s.top_k, s.seed, s.max_tokens) == (7, 42, 16)
    assert s.min_p == pytest.approx(0.1)
    assert s.repeat_penalty == pytest.approx(1.1)
    assert list(s.stop) == ["END", "\n\n"]


def test_one_shot_json(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "m", "hi", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"text", "stats"}
    assert doc["text"] == "Hello world"
    stats = doc["stats"]
    assert stats["completion_tokens"] == 3
    assert stats["finish_reason"] == "FINISH_REASON_STOP"
    assert stats["backend"] == "llama.cpp"
    assert "stop_sequence" in stats  # every key present, even when empty


def test_one_shot_verbose_prints_stats_to_stderr(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "m", "hi", "--verbose"]) == 0
    out, err = capsys.readouterr()
    assert out == "Hello world\n"
    assert "prompt tokens:       12 (4 cached)" in err
    assert "completion tokens:   3" in err
    assert "time to first token: 42.5 ms" in err
    assert "decode rate:         55.25 tokens/s" in err
    assert "finish reason:       stop" in err
    assert "backend:             llama.cpp" in err
    assert "device:              cpu" in err


def test_prompt_from_stdin(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("summarise this\nplease\n"))
    assert main(["run", "m"]) == 0
    assert capsys.readouterr().out == "Hello world\n"
    (request,) = fake.requests("Generate")
    assert request.chat.messages[-1].content == "summarise this\nplease\n"


def test_empty_stdin_is_an_error(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("  \n"))
    assert main(["run", "m"]) == 1
    assert capsys.readouterr().err == "edged: the prompt read from stdin is empty\n"
    assert fake.requests("Generate") == []


def test_error_status_is_one_line(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.fail["Generate"] = (grpc.StatusCode.NOT_FOUND, "model 'nope' not found")
    assert main(["run", "nope", "hi"]) == 1
    out, err = capsys.readouterr()
    assert err == "edged: model 'nope' not found\n"
    assert "Traceback" not in out + err


def test_error_without_details_names_the_code(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.fail["List"] = (grpc.StatusCode.RESOURCE_EXHAUSTED, "")
    assert main(["list"]) == 1
    assert capsys.readouterr().err == "edged: the call failed (resource_exhausted)\n"


def test_pull_progress_to_completion(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "smollm2:135m"]) == 0
    out, err = capsys.readouterr()
    assert out == "pulled smollm2:135m (abababababab, 91 MB)\n"
    assert err.splitlines() == ["resolving", "downloading", "verifying sha256 digest", "success"]
    (request,) = fake.requests("Pull")
    assert (request.source, request.name, request.digest) == ("smollm2:135m", "", "")


def test_pull_json_and_options(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    url = "https://example.com/m.gguf"
    digest = "sha256:" + "cd" * 32
    assert main(["pull", url, "--name", "mine:v1", "--digest", digest, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["name"] == "smollm2" and doc["tag"] == "135m"
    assert doc["size_bytes"] == "91000000"  # proto3 JSON: 64-bit integers are strings
    assert doc["has_chat_template"] is True
    (request,) = fake.requests("Pull")
    assert (request.source, request.name, request.digest) == (url, "mine:v1", digest)


@pytest.mark.parametrize("given", ["./model.gguf", "model.gguf", "sub/../model.gguf"])
def test_pull_makes_relative_paths_absolute(
    fake: FakeDaemon,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    given: str,
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert main(["pull", given]) == 0
    (request,) = fake.requests("Pull")
    assert request.source == str((tmp_path / "model.gguf").resolve())


def test_list(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    # the fake model was "modified" 120 s before its module loaded: minutes ago
    minutes = int((time.time() - MODEL.modified_unix_ms / 1000) // 60)
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "DIGEST", "SIZE", "FORMAT", "QUANT", "MODIFIED"]
    assert row.split()[:7] == [
        "smollm2:135m",
        "abababababab",
        "91",
        "MB",
        "gguf",
        "Q4_1",
        str(minutes),
    ]
    assert row.endswith("minutes ago")


def test_list_json(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (model,) = doc["models"]
    assert model["digest"] == "sha256:" + "ab" * 32
    assert model["quantization"] == "Q4_1"


def test_ps(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ps"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "MODEL", "BACKEND", "DEVICE", "MEMORY", "(EST", "/", "RSS)", "CONTEXT", "KV",
        "SESSIONS", "ACTIVE", "PID", "UNTIL",
    ]  # fmt: skip
    assert row.split() == [
        "smollm2:135m", "llama.cpp", "cpu", "250", "MB", "/", "180", "MB", "4096", "-", "2",
        "1", "4242", "in", "use,", "then", "5", "minutes",
    ]  # fmt: skip
    assert main(["ps", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["models"][0]["pid"] == 4242
    assert doc["models"][0]["rss_bytes"] == "180000000"


def test_show(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "smollm2"]) == 0
    out = capsys.readouterr().out
    assert "parameters        135M" in out
    assert "context length    8192" in out
    assert "quantization      Q4_1" in out
    assert main(["show", "smollm2", "--template"]) == 0
    assert capsys.readouterr().out == "{% for m in messages %}{{ m.content }}{% endfor %}\n"
    assert main(["show", "smollm2", "--metadata"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KEY", "VALUE"]
    assert lines[1].split() == ["general.architecture", "llama"]
    assert main(["show", "smollm2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {
        "backends",
        "capabilities",
        "model",
        "chat_template",
        "metadata",
        "system_prompt",
        "sampling_defaults",
        "stop_defaults",
        "variants",
    }
    assert doc["metadata"]["llama.context_length"] == "8192"
    assert [r.model for r in fake.requests("Show")] == ["smollm2"] * 4


def test_hw(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hw"]) == 0
    out = capsys.readouterr().out
    assert "CPU           Fake CPU\nCores         2 physical, 4 logical" in out
    assert "Memory        8.0 GB available of 16 GB" in out
    assert "  * llama.cpp on cpu\n      - avx2 build" in out
    assert "  Rejected:\n    x onnxruntime-genai on cpu\n      - onnxruntime-genai is not" in out
    assert main(["hw", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cpu_features"] == ["avx2", "fma"]
    assert doc["gpus"] == []
    assert [b["available"] for b in doc["backends"]] == [True, False]


def test_version(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    from edged.daemon.cli.system import client_version

    assert main(["version"]) == 0
    out = capsys.readouterr().out
    assert out == (
        f"client version {client_version()}\ndaemon version 9.9.9 (api edged.v1)\n"
        "HTTP API http://127.0.0.1:11435\n"
    )
    assert main(["version", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {
        "client": {"version": client_version()},
        "daemon": {"version": "9.9.9", "api": "edged.v1", "http_url": "http://127.0.0.1:11435"},
    }


def test_version_without_a_daemon_does_not_start_one(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["version", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["daemon"] is None
    assert "no daemon is running" in err
    assert not (root / "log" / "serve.out").exists()


def test_rm_reports_each_model(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rm", "a", "missing", "b"]) == 1
    out, err = capsys.readouterr()
    assert out == "deleted 'a'\ndeleted 'b'\n"
    assert err == "edged: model 'missing' not found\n"


def test_stop_unloads(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stop", "smollm2"]) == 0
    assert [r.model for r in fake.requests("Unload")] == ["smollm2"]
    assert capsys.readouterr().out == "stopped smollm2:135m\n"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert capsys.readouterr().out.startswith("usage: edged")


def test_bad_environment_is_one_line(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGED_THREADS", "lots")
    assert main(["list"]) == 1
    assert capsys.readouterr().err == "edged: EDGED_THREADS must be an integer, got 'lots'\n"


def test_python_dash_m_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edged.daemon.cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: edged")
    for command in ("serve", "run", "pull", "list", "ps", "show", "rm", "stop", "hw", "version"):
        assert f"    {command} " in done.stdout


def test_prompt_words_after_options(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "m", "why", "--verbose", "is", "the", "sky", "blue"]) == 0
    assert fake.requests("Generate")[0].chat.messages[-1].content == "why is the sky blue"
    with pytest.raises(SystemExit):
        main(["run", "m", "hi", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
