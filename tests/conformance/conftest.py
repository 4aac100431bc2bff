"""One suite every installed backend must pass, against the real SmolLM2.

llama.cpp and OpenVINO run the pulled GGUF; ONNX Runtime runs the int4 ONNX
variant that Models.Convert makes from it (once per test run, cached between
modules). OpenVINO's compiled-model cache is shared by every daemon of the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.backends import registry
from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon

# Every installed backend (the registry is the one list of them).
BACKENDS = list(registry.installed_names())


@pytest.fixture(scope="session")
def openvino_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One EDGED_CACHE_DIR for the run: a later OpenVINO load finds the compiled model."""
    return tmp_path_factory.mktemp("openvino-cache")


@pytest.fixture(scope="session")
def onnx_store(tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path) -> Path:
    """A data dir whose smollm2 also has the converted ONNX variant."""
    root = tmp_path_factory.mktemp("onnx-seed")
    clone_store(smollm2_store, root / "data")
    d = start_daemon(root)
    try:
        last = None
        for p in d.models.Convert(pb.ConvertRequest(model="smollm2", to="onnx"), timeout=900):
            last = p
        assert last is not None and last.status == "success"
    finally:
        d.stop()
    return root / "data"


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def bd(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Daemon, str]]:
    """A daemon whose smollm2 has the variant ``backend`` runs, and that name."""
    # a backend that runs a converted variant gets the store that has one
    fixture = "onnx_store" if registry.backend_info(backend).converts_to else "smollm2_store"
    store: Path = request.getfixturevalue(fixture)
    root = tmp_path_factory.mktemp(f"conf-{backend}")
    clone_store(store, root / "data")
    extra = {"EDGED_PARALLEL": "4"}
    if backend == "openvino":
        extra["EDGED_CACHE_DIR"] = str(request.getfixturevalue("openvino_cache"))
    d = start_daemon(root, **extra)
    yield d, backend
    d.stop()
