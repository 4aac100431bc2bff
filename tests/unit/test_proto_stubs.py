"""The committed generated stubs must match the .proto (they are never hand-edited)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def test_generated_stubs_are_fresh() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the dev extra")
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.stale_files() == [], "run: python proto/generate.py"


def test_edit_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The staleness check itself must be able to fail."""
    import shutil

    pytest.importorskip("grpc_tools")
    copy = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", copy)
    gen = copy / "edged" / "v1" / "edged_pb2.py"
    gen.write_text(gen.read_text() + "\n# hand edit\n")
    spec = importlib.util.spec_from_file_location("proto_generate_copy", copy / "generate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.stale_files() == ["edged_pb2.py"]
