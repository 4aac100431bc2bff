"""The calibration's reference (:class:`edged.daemon.calibrator.ExactReference`):
the exact F32 copy when the reference backend makes one and the model is small
enough, else the variant itself, and a failed copy falls back to the variant
(the cached figures then count as measured against the variant, so the next
calibration tries the copy again)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from edged.daemon.calibrator import MAX_EXACT_BYTES, ExactReference, Reference
from edged.models_registry.manifest import Manifest, ManifestFile, Variant

DIGEST = "sha256:" + "a" * 64


def manifest(parameters: int) -> Manifest:
    f = ManifestFile("model", DIGEST, 98_362_432, "m.gguf")
    v = Variant("gguf", "gguf", "Q4_1", 98_362_432, (f,))
    return Manifest("smollm2", "135m", (v,), "pypi:x", 0, parameters=parameters)


def reference(m: Manifest, path: str) -> Reference:
    return Reference("llama.cpp", m.variants[0], path)


def test_a_small_gguf_plans_the_exact_copy_and_a_large_one_does_not(tmp_path: Path) -> None:
    small = manifest(134_515_008)
    ref = ExactReference(reference(small, "/x.gguf"), small, tmp_path, tmp_path / "log")
    assert ref.planned and ref.digest == DIGEST + "+f32"
    large = manifest(MAX_EXACT_BYTES // 4 + 1)
    ref = ExactReference(reference(large, "/x.gguf"), large, tmp_path, tmp_path / "log")
    assert not ref.planned and ref.digest == DIGEST
    got = asyncio.run(ref.get())
    assert got == ref.base and not got.exact and "on gguf variant 'gguf'" in got.label
    # a backend without the hook never plans one
    ov = ExactReference(
        Reference("openvino", small.variants[0], "/x.gguf"), small, tmp_path, tmp_path / "log"
    )
    assert not ov.planned


def test_a_failed_copy_falls_back_to_the_variant_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m = manifest(134_515_008)
    ref = ExactReference(reference(m, str(tmp_path / "missing.gguf")), m, tmp_path, tmp_path / "l")
    with caplog.at_level(logging.WARNING):
        got = asyncio.run(ref.get())
    assert got == ref.base and not got.exact
    assert "no exact-arithmetic reference" in caplog.text and "cannot read the GGUF" in caplog.text
    assert (tmp_path / "l").read_bytes() is not None  # the child's log
    ref.remove()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".gguf")]
