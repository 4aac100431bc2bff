"""`edged list --available` and `edged search` against the fake daemon."""

from __future__ import annotations

import json

import pytest

from edged.daemon.cli.main import main
from edged.models_registry import catalog

from . import conftest
from .conftest import MODEL, FakeDaemon

SMOLLM2_DIGEST = "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def rows(out: str) -> dict[str, list[str]]:
    """The table's rows by NAME, split on the three-space column gaps."""
    lines = out.split("\n\n")[0].splitlines()
    assert [c.strip() for c in lines[0].split("   ") if c] == [
        "NAME", "FAMILY", "PARAMS", "QUANT", "SIZE", "CAPABILITIES", "PULLED",
    ]  # fmt: skip
    table = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.split("   ") if c.strip()]
        table[cells[0]] = cells[1:]
    return table


@pytest.fixture
def pulled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake daemon's one model is the catalog's qwen2.5:0.5b (a hub entry)."""
    model = type(MODEL)()
    model.CopyFrom(MODEL)
    model.name, model.tag, model.size_bytes = "qwen2.5", "0.5b", 397_808_192
    monkeypatch.setattr(conftest, "MODEL", model)


def test_list_available_shows_the_catalog(
    fake: FakeDaemon, pulled: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list", "--available"]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    assert list(table) == [str(e.ref) for e in catalog.entries()]
    assert table["smollm2:135m-q4_1"] == [
        "smollm2", "135M", "Q4_1", "98 MB", "completion, chat", "no",
    ]  # fmt: skip
    assert table["gemma3:270m"] == ["gemma3", "270M", "Q4_K_M", "253 MB", "completion", "no"]
    # a hub model's size is known once it is pulled
    assert table["qwen2.5:0.5b"] == [
        "qwen2.5", "494M", "Q4_K_M", "398 MB", "completion, chat, tools", "yes",
    ]  # fmt: skip
    assert table["llama3.2:1b"][3:] == ["-", "completion, chat, tools", "no"]
    assert table["nomic-embed-text:v1.5"][4] == "embeddings"
    assert "gemma3 = gemma3:1b" in out.split("\n\n")[1]
    assert len(fake.requests("List")) == 1


def test_a_model_with_the_same_bytes_is_pulled_under_its_own_name(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = type(MODEL)()
    model.CopyFrom(MODEL)
    model.name, model.tag, model.digest = "tiny", "v1", SMOLLM2_DIGEST
    monkeypatch.setattr(conftest, "MODEL", model)
    assert main(["ls", "--available"]) == 0
    assert rows(capsys.readouterr().out)["smollm2:135m-q4_1"][-1] == "as tiny:v1"


def test_list_available_json(
    fake: FakeDaemon, pulled: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list", "--available", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_ref = {f"{d['name']}:{d['tag']}": d for d in doc}
    assert list(by_ref) == [str(e.ref) for e in catalog.entries()]
    qwen = by_ref["qwen2.5:0.5b"]
    assert qwen["pulled"] is True and qwen["pulled_as"] == ["qwen2.5:0.5b"]
    assert qwen["digest"] is None and qwen["size_bytes"] is None
    assert qwen["source"].startswith("hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF@main/")
    gemma = by_ref["gemma3:270m"]
    assert gemma["size_bytes"] == 253113024 and gemma["pulled"] is False
    assert gemma["digest"].startswith("sha256:a5fd3b62")
    assert by_ref["gemma3:1b"]["default"] is True and gemma["default"] is False


def test_search_matches_names_families_descriptions_and_capabilities(
    fake: FakeDaemon, pulled: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", "gemma3"]) == 0
    assert list(rows(capsys.readouterr().out)) == ["gemma3:270m", "gemma3:1b"]
    assert main(["search", "Infill"]) == 0
    assert list(rows(capsys.readouterr().out)) == ["qwen2.5-coder:1.5b"]
    assert main(["search", "embeddings"]) == 0
    assert list(rows(capsys.readouterr().out)) == ["nomic-embed-text:v1.5", "all-minilm:l6-v2"]
    assert main(["search", "qwen", "tools"]) == 0  # every term must match
    table = rows(capsys.readouterr().out)
    assert list(table) == ["qwen2.5:0.5b", "qwen2.5-coder:1.5b"]
    assert table["qwen2.5:0.5b"][-1] == "yes"
    assert main(["search", "bartowski"]) == 0  # descriptions say whose quantization
    assert {r.split(":")[0] for r in rows(capsys.readouterr().out)} == {"llama3.2", "phi4-mini"}


def test_search_without_a_match(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "no-such-model"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "edged: no model in the catalog matches 'no-such-model'\n"
    assert main(["search", "--json", "gemma3", "1b"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert (doc["name"], doc["tag"], doc["pulled"]) == ("gemma3", "1b", False)


def test_without_a_daemon_the_catalog_still_shows(
    root: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--no-autostart", "search", "smollm2"]) == 0
    out, err = capsys.readouterr()
    table = rows(out)
    assert list(table) == ["smollm2:135m-q4_1", "smollm2:360m", "smollm2:1.7b"]
    assert {r[-1] for r in table.values()} == {"?"}
    assert err.startswith("edged: cannot tell which models are pulled: ")


def test_help_names_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    assert "every TERM" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["list", "--help"])
    assert "--available" in capsys.readouterr().out
