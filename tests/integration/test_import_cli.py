"""`edged import --from ollama|lmstudio|hf-cache` end to end: the CLI over real layouts
of the real SmolLM2 GGUF, and a real daemon answering with the imported model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edged.daemon.cli.main import main
from edged.models_registry import ModelRef, Store
from edged.v1 import edged_pb2 as pb
from harness.daemon import daemon_env, start_daemon
from tests.integration.helpers import chat, collect
from tests.unit.registry.import_layouts import OllamaStore, file_hex, hf_repo, place

pytestmark = pytest.mark.model

SYSTEM = "You are a geography teacher. Answer in one short sentence."


@pytest.fixture
def gguf(smollm2_store: Path) -> Path:
    """The seeded SmolLM2 blob (hard-linked into the layouts; never changed)."""
    store = Store(smollm2_store / "models")
    _ref, manifest = store.resolve("smollm2")
    return store.blob_path(manifest.primary.digest)


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The store `edged` commands run in this process find (EDGED_DATA_DIR)."""
    for var in [v for v in os.environ if v.startswith("EDGED_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("EDGED_DATA_DIR", str(tmp_path / "data"))
    return Store(tmp_path / "data" / "models")


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_imports_from_each_source(
    data: Store, tmp_path: Path, gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    olla = OllamaStore(tmp_path / "ollama")
    olla.model("smollm2", gguf, system=SYSTEM, params={"temperature": 0.2, "num_ctx": 2048})
    lms = tmp_path / "lmstudio"
    place(gguf, lms / "pub" / "SmolLM2-GGUF" / "SmolLM2-135M-Q4_1.gguf")
    hub = tmp_path / "hub"
    hf_repo(hub, "HuggingFaceTB/SmolLM2-GGUF", {"smollm2-q4.gguf": gguf})

    code, out, _ = cli(["import", "--from", "ollama", "--path", str(olla.root), "--list"], capsys)
    assert code == 0
    assert out.startswith("would import smollm2:latest (")
    assert "; --list imports nothing" in out
    assert data.list_manifests() == []

    code, out, _ = cli(["import", "--from", "ollama", "--path", str(olla.root)], capsys)
    assert code == 0, out
    assert out.startswith("imported smollm2:latest (linked, ")
    assert "from ollama:registry.ollama.ai/library/smollm2:latest" in out
    assert "1 imported" in out

    code, out, _ = cli(["import", "--from", "lmstudio", "--path", str(lms), "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["ok"] and doc["source"] == "lmstudio"
    (model,) = doc["models"]
    assert (model["model"], model["status"]) == ("smollm2-135m-q4_1:latest", "imported")
    assert model["how"] == "already stored"  # the same bytes as the Ollama import

    code, out, _ = cli(["import", "--from", "hf-cache", "--path", str(hub), "smollm2-q4"], capsys)
    assert code == 0 and out.startswith("imported smollm2-q4:latest")
    hex_ = file_hex(gguf)
    assert {m.primary.digest for _, m in data.list_manifests()} == {f"sha256:{hex_}"}

    # again: already there; a broken model is refused by name and exits 1
    olla.manifest("broken", "latest", [{**olla.gguf(gguf), "size": 1}])
    code, out, _ = cli(["import", "--from", "ollama", "--path", str(olla.root)], capsys)
    assert code == 1
    assert "refused broken:latest: registry.ollama.ai/library/broken:latest: its model" in out
    assert "already there: smollm2:latest" in out
    assert "1 already there, 1 refused" in out


def test_cli_import_usage_errors(
    data: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(["import"], capsys)
    assert code == 1 and "give the archive to import" in err
    code, _, err = cli(["import", "x.tar", "--list"], capsys)
    assert code == 1 and "go with --from" in err
    code, _, err = cli(["import", "--from", "ollama", "--path", str(tmp_path / "no")], capsys)
    assert code == 1 and err.startswith("edged: no Ollama models at")
    with pytest.raises(SystemExit):
        main(["import", "--from", "gpt4all"])
    assert "invalid choice" in capsys.readouterr().err


def test_imported_model_answers_through_a_real_daemon(tmp_path: Path, gguf: Path) -> None:
    olla = OllamaStore(tmp_path / "ollama")
    olla.model(
        "smollm2",
        gguf,
        tag="135m",
        system=SYSTEM,
        params={"temperature": 0, "stop": ["<|im_end|>"], "num_ctx": 1024},
    )
    env = daemon_env(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "edged.daemon.cli.main", "import", "--from", "ollama"],
        env={**env, "OLLAMA_MODELS": str(olla.root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("imported smollm2:135m (linked")
    assert Store(tmp_path / "data" / "models").get_manifest(ModelRef("smollm2", "135m"))

    d = start_daemon(tmp_path)
    try:
        shown = d.models.Show(pb.ModelRef(model="smollm2:135m"), timeout=60)
        assert shown.system_prompt == SYSTEM
        assert dict(shown.sampling_defaults) == {"temperature": 0.0}
        assert list(shown.stop_defaults) == ["<|im_end|>"]
        assert shown.settings.context_length == 1024
        text, stats, _ = collect(
            d.inference.Generate(
                chat("smollm2:135m", "What is the capital of France?", max_tokens=24), timeout=120
            )
        )
        assert "Paris" in text, text
        assert stats.completion_tokens > 0
    finally:
        d.stop()
