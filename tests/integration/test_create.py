"""`edged create` (and Ollama's /api/create through the real ollama SDK): a new
name that shares a stored model's files, with its own system prompt, sampling
defaults, stop strings and context setting, applied to real generations."""

from __future__ import annotations

import json
import re
from pathlib import Path

import ollama
import pytest

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon
from tests.integration.test_cli import edged
from tests.integration.test_http_ollama import manager

pytestmark = pytest.mark.model

MODELFILE = '''# a model with its own defaults
FROM smollm2
SYSTEM """You are a pirate.
Answer in one line."""
PARAMETER temperature 0
PARAMETER stop "5"
PARAMETER num_ctx 4096
PARAMETER mirostat 1
TEMPLATE "{{ .Prompt }}"
'''


def show(daemon: Daemon, model: str) -> pb.ShowModelResponse:
    reply: pb.ShowModelResponse = daemon.models.Show(pb.ModelRef(model=model), timeout=120)
    return reply


def count(daemon: Daemon, model: str, **sampling: int) -> pb.GenerateChunk:
    request = pb.GenerateRequest(
        model=model,
        prompt="1, 2, 3, 4,",
        sampling=pb.SamplingParams(max_tokens=8, **sampling),
    )
    chunks = list(daemon.inference.Generate(request, timeout=120))
    return chunks[-1]


def test_create_from_a_modelfile(daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "Modelfile"
    path.write_text(MODELFILE)
    out = edged(daemon.env, "--no-autostart", "create", "pirate", "-f", str(path))
    assert out.returncode == 0, out.stderr
    assert "created pirate:latest from smollm2" in out.stdout
    assert "TEMPLATE is ignored" in out.stderr and "'mirostat'" in out.stderr

    shown = show(daemon, "pirate")
    base = show(daemon, "smollm2")
    assert shown.system_prompt == "You are a pirate.\nAnswer in one line."
    assert dict(shown.sampling_defaults) == {"temperature": 0.0}
    assert list(shown.stop_defaults) == ["5"]
    assert shown.settings.context_length == 4096
    # the same file: nothing copied
    assert shown.model.digest == base.model.digest
    text = edged(daemon.env, "--no-autostart", "show", "pirate").stdout
    assert "You are a pirate." in text and "'5'" in text

    # the default stop string ends a real generation; a request's own wins
    last = count(daemon, "pirate")
    assert last.stats.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert last.stats.stop_sequence == "5"
    plain = count(daemon, "smollm2", temperature=0)  # type: ignore[arg-type]
    assert plain.stats.finish_reason != pb.FINISH_REASON_STOP_SEQUENCE

    # options override: a new system prompt, and an existing name is updated
    again = edged(
        daemon.env,
        "--no-autostart",
        "create",
        "pirate",
        "--from",
        "smollm2",
        "--system",
        "Be brief.",
        "--param",
        "top_k=5",
        "--json",
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["model"]["name"] == "pirate"
    updated = show(daemon, "pirate")
    assert updated.system_prompt == "Be brief."
    assert dict(updated.sampling_defaults) == {"temperature": 0.0, "top_k": 5.0}


def test_create_refusals(daemon: Daemon, tmp_path: Path) -> None:
    env = daemon.env
    bad = edged(env, "--no-autostart", "create", "x", "--from", "smollm2", "--param", "top_k=1.5")
    assert bad.returncode == 1 and "top_k must be a whole number" in bad.stderr
    missing = edged(env, "--no-autostart", "create", "x", "--from", "nosuch")
    assert missing.returncode == 1 and "not found" in missing.stderr
    path = tmp_path / "Modelfile"
    path.write_text("FROM smollm2\nADAPTER ./lora.gguf\n")
    adapter = edged(env, "--no-autostart", "create", "x", "-f", str(path))
    assert adapter.returncode == 1 and "line 2" in adapter.stderr and "LoRA" in adapter.stderr
    listing = json.loads(edged(env, "--no-autostart", "list", "--json").stdout)
    assert "x" not in {m["name"] for m in listing["models"]}


def test_create_from_a_file_path(daemon: Daemon, tmp_path: Path) -> None:
    """FROM ./model.gguf, relative to the Modelfile: pulled first, then given the defaults."""
    store_blobs = daemon.root / "data" / "models" / "blobs"
    (tmp_path / "model.gguf").symlink_to(next(store_blobs.iterdir()))
    (tmp_path / "Modelfile").write_text("FROM ./model.gguf\nPARAMETER temperature 0.3\n")
    out = edged(
        daemon.env, "--no-autostart", "create", "fromfile", "-f", str(tmp_path / "Modelfile")
    )
    assert out.returncode == 0, out.stderr
    assert dict(show(daemon, "fromfile").sampling_defaults) == {"temperature": pytest.approx(0.3)}


def test_ollama_sdk_create(daemon: Daemon) -> None:
    with manager(daemon) as client:
        reply = client.create(
            model="mario",
            from_="smollm2",
            system="You are Mario.",
            parameters={"temperature": 0, "stop": ["5", "Luigi"]},
            stream=False,
        )
        assert reply.status == "success"
        shown = client.show("mario")
        assert shown.parameters is not None
        assert re.search(r'^stop\s+"Luigi"$', shown.parameters, re.M)
        with pytest.raises(ollama.ResponseError) as refused:
            client.create(model="mario2", from_="smollm2", files={"x.gguf": "sha256:" + "0" * 64})
        assert refused.value.status_code == 400 and "files" in refused.value.error
    grpc_view = show(daemon, "mario")
    assert grpc_view.system_prompt == "You are Mario."
    assert list(grpc_view.stop_defaults) == ["5", "Luigi"]
