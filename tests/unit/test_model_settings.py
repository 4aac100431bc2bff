"""Per-model settings file: round trip, validation, and damaged files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edged.common.errors import InvalidArgument
from edged.models_registry.settings import FILE_NAME, ModelSettings, SettingsStore


def test_round_trip_and_defaults(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path)
    assert store.get("smollm2:latest") == ModelSettings()
    s = ModelSettings(backend="openvino", device="gpu.1", keep_alive_s=-1, pinned=True,
                      context_length=8192)  # fmt: skip
    store.put("smollm2:latest", s)
    assert SettingsStore(tmp_path).get("smollm2:latest") == s  # a fresh reader sees it
    data = json.loads((tmp_path / FILE_NAME).read_text())
    assert data == {
        "version": 1,
        "models": {
            "smollm2:latest": {
                "backend": "openvino",
                "context_length": 8192,
                "device": "gpu.1",
                "keep_alive_s": -1.0,
                "pinned": True,
            }
        },
    }
    store.put("smollm2:latest", ModelSettings(keep_alive_s=0))
    assert store.get("smollm2:latest").keep_alive_s == 0.0
    store.put("smollm2:latest", ModelSettings())  # defaults: the entry goes
    assert json.loads((tmp_path / FILE_NAME).read_text())["models"] == {}
    store.put("other:q4", ModelSettings(pinned=True))
    store.remove("other:q4")
    assert store.all() == {}
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temp files left


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "no such/backend"}, "not a backend name"),
        ({"device": "cuda:0; rm -rf"}, "not a device"),
        ({"keep_alive_s": float("nan")}, "finite"),
        ({"keep_alive_s": 1e12}, "at most"),
        ({"context_length": 100}, "between 256"),
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        ModelSettings(**kwargs)  # type: ignore[arg-type]


def test_corrupt_file_reads_as_defaults_with_a_clear_problem(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / FILE_NAME
    path.write_text('{"version": 1, "models": {"a:latest": {"pinned": tr')
    store = SettingsStore(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert store.get("a:latest") == ModelSettings()
    assert "settings.json is not valid JSON" in store.problem
    assert "edged config MODEL" in store.problem
    assert "not valid JSON" in caplog.text
    # the next change rewrites the file and keeps the damaged one aside
    store.put("b:latest", ModelSettings(pinned=True))
    assert store.problem == ""
    assert (tmp_path / (FILE_NAME + ".bad")).read_text().endswith("tr")
    assert SettingsStore(tmp_path).get("b:latest").pinned


def test_one_bad_entry_does_not_spoil_the_others(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text(
        json.dumps(
            {
                "version": 1,
                "models": {
                    "good:latest": {"pinned": True, "keep_alive_s": 60},
                    "typed:latest": {"context_length": "4096"},
                    "bool:latest": {"context_length": True},
                    "unknown:latest": {"colour": "blue"},
                    "range:latest": {"context_length": 5},
                    "list:latest": [],
                },
            }
        )
    )
    store = SettingsStore(tmp_path)
    assert store.all() == {"good:latest": ModelSettings(keep_alive_s=60.0, pinned=True)}
    assert "ignored" in store.problem


@pytest.mark.parametrize("body", ["[]", '{"version": 2, "models": {}}', '{"version": 1}', ""])
def test_wrong_shape_reads_as_defaults(tmp_path: Path, body: str) -> None:
    (tmp_path / FILE_NAME).write_text(body)
    store = SettingsStore(tmp_path)
    assert store.all() == {}
    assert store.problem


def test_changes_by_another_writer_are_seen(tmp_path: Path) -> None:
    one, two = SettingsStore(tmp_path), SettingsStore(tmp_path)
    assert one.get("a:latest") == ModelSettings()
    two.put("a:latest", ModelSettings(pinned=True))
    assert one.get("a:latest").pinned
