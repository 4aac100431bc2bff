"""Fuzz edged's GGUF header reader with hostile files built from the real SmolLM2 header.

Every example must parse or raise InvalidModelHeader (INVALID_ARGUMENT): no
other exception, within MAX_CPU_SECONDS and MAX_PEAK_BYTES of Python allocations.
This is the short CI run; scripts/fuzz_gguf.py runs the same for minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from edged.common.errors import InvalidModelHeader
from edged.models_registry import Store, read_gguf_info
from harness import gguf_fuzz
from harness.gguf_fuzz import Outcome, Seed

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def seeds(smollm2_pulled: tuple[Store, Any, Any, list[Any]]) -> dict[str, Seed]:
    store, _ref, manifest, _events = smollm2_pulled
    path = store.blob_path(manifest.primary.digest)
    info = read_gguf_info(path)
    with open(path, "rb") as f:
        head = f.read(info.data_offset)
    size = path.stat().st_size
    return {
        "compact": gguf_fuzz.split_header(head, size, compact=True),
        "full": gguf_fuzz.split_header(head, size, compact=False),
    }


def test_the_seeds_are_sound(tmp_path: Path, seeds: dict[str, Seed]) -> None:
    for name, seed in seeds.items():
        head, size = gguf_fuzz.build(seed, seed.header())
        gguf_fuzz.write(tmp_path / name, head, size)
        info = read_gguf_info(tmp_path / name)
        assert info.architecture == "llama" and info.tensor_count == 272
        assert info.file_size == size
    assert len(seeds["compact"].header()) < len(seeds["full"].header()) // 10


def test_truncation_at_every_boundary_of_the_compact_header(
    tmp_path: Path, seeds: dict[str, Seed]
) -> None:
    seed = seeds["compact"]
    head, _size = gguf_fuzz.build(seed, seed.header())
    cuts = gguf_fuzz.boundaries(4, seed.kv, seed.tensors, len(head))
    assert len(cuts) > 1000
    path = tmp_path / "cut.gguf"
    for i, cut in enumerate(cuts):
        gguf_fuzz.write(path, head[:cut], cut)
        with pytest.raises(InvalidModelHeader):
            read_gguf_info(path)
        if i % 16 == 0:  # the header whole, the tensor data cut short
            gguf_fuzz.write(path, head, len(head) + cut)
            with pytest.raises(InvalidModelHeader, match="truncated"):
                read_gguf_info(path)


def test_truncation_at_the_sections_of_the_real_header(
    tmp_path: Path, seeds: dict[str, Seed]
) -> None:
    seed = seeds["full"]
    head, _size = gguf_fuzz.build(seed, seed.header())
    cuts = [0, 3, 4, 8, 16, 24]
    pos = 24
    for e in seed.kv:
        pos += len(e.raw)
        cuts += [pos - 1, pos]
    for e in seed.tensors:
        pos += len(e.raw)
        cuts.append(pos)
    cuts = cuts[: 6 + 2 * len(seed.kv) + 3] + cuts[-3:]
    path = tmp_path / "cut.gguf"
    for cut in cuts:
        gguf_fuzz.write(path, head[:cut], cut)
        with pytest.raises(InvalidModelHeader):
            read_gguf_info(path)


def test_fuzz_the_header_reader(tmp_path: Path, seeds: dict[str, Seed]) -> None:
    outcome = Outcome()
    path = tmp_path / "fuzz.gguf"
    # One example in eight starts from the full header (slow to write and parse).
    weighted = {f"compact{i}": seeds["compact"] for i in range(7)}
    weighted["full"] = seeds["full"]

    @settings(
        max_examples=300,
        deadline=None,  # time is bounded by check_one's own assertion
        database=None,
        derandomize=True,
        phases=[Phase.generate],  # no shrinking in CI: a failure is reported at once
        suppress_health_check=list(HealthCheck),
    )
    @given(gguf_fuzz.hostile_file(weighted))
    def one(example: gguf_fuzz.Example) -> None:
        # tracemalloc makes a full-header parse ~7x slower: measured once, below.
        trace = example.label.startswith("compact")
        gguf_fuzz.check_one(path, example.head, example.size, outcome, trace=trace)

    one()
    assert outcome.invalid > 100
    assert outcome.ok > 0
    assert 0 < outcome.peak < gguf_fuzz.MAX_PEAK_BYTES


def test_memory_of_the_real_header_is_bounded(tmp_path: Path, seeds: dict[str, Seed]) -> None:
    outcome = Outcome()
    seed = seeds["full"]
    head, size = gguf_fuzz.build(seed, seed.header())
    gguf_fuzz.check_one(tmp_path / "full.gguf", head, size, outcome, trace=True)
    assert outcome.ok == 1
    assert outcome.peak < 4 << 20  # arrays are skipped, never materialised
