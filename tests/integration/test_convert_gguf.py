"""safetensors -> GGUF through a real daemon: the minilm_store fixture, Models.Convert
--to gguf, and the message for a model that has only safetensors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon
from tests.unit.registry.test_safetensors_folder import hf_files, write


@pytest.fixture
def minilm_daemon(tmp_path: Path, minilm_store: Path) -> Iterator[Daemon]:
    clone_store(minilm_store, tmp_path / "data")
    d = start_daemon(tmp_path)
    yield d
    if d.proc.poll() is None:
        d.stop()


def test_the_seeded_store_has_both_variants(minilm_daemon: Daemon) -> None:
    shown = minilm_daemon.models.Show(pb.ModelRef(model="all-minilm"), timeout=60)
    m = shown.model
    assert (m.name, m.tag, m.format, m.quantization) == ("all-minilm", "l6-v2", "gguf", "F16")
    assert m.architecture == "bert"


def test_convert_to_q8_0_over_grpc(minilm_daemon: Daemon) -> None:
    request = pb.ConvertRequest(model="all-minilm", to="gguf", quant="q8_0")
    events = list(minilm_daemon.models.Convert(request, timeout=300))
    statuses = [e.status for e in events]
    assert "converting the safetensors to GGUF (Q8_0)" in statuses
    assert events[-1].model.quantization == "Q8_0" and events[-1].model.format == "gguf"
    with pytest.raises(grpc.RpcError) as bad:
        list(
            minilm_daemon.models.Convert(
                pb.ConvertRequest(model="all-minilm", to="gguf", quant="q3"), timeout=60
            )
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_safetensors_only_model_says_how_to_convert_it(tmp_path: Path) -> None:
    src = write(tmp_path / "mini-st", hf_files())
    d = start_daemon(tmp_path / "d")
    try:
        for _ in d.models.Pull(pb.PullRequest(source=str(src), name="mini-st"), timeout=120):
            pass
        with pytest.raises(grpc.RpcError) as err:
            for _ in d.inference.Generate(
                pb.GenerateRequest(model="mini-st", prompt="hi"), timeout=60
            ):
                pass
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "edged convert mini-st:latest --to gguf" in (err.value.details() or "")
    finally:
        d.stop()
