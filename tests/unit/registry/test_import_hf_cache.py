"""`edged import --from hf-cache`: a Hugging Face hub cache in its real layout
(``models--owner--repo/{blobs,refs,snapshots}``, snapshot files symlinked into
``../../blobs/<sha256>``) with the real SmolLM2 GGUF, imported by hard link and
recorded as the ``hf://`` pull of the same file would be."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edged.common.errors import NotFound
from edged.models_registry import ModelRef, Store, hub_file, importers

from .import_layouts import (
    file_hex,
    hf_repo,
    place,
    store_state,
)

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "smollm2-135m-instruct-q4_1.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def run(store: Store, root: Path, **kwargs: object) -> importers.ImportReport:
    return importers.import_from(store, "hf-cache", paths=[root], **kwargs)  # type: ignore[arg-type]


def test_imports_by_hard_link_as_an_hf_pull_records_it(
    store: Store,
    tmp_path: Path,
    real_gguf: Path,
    tiny: Path,
) -> None:
    cache = tmp_path / "hub"
    repo = hf_repo(
        cache,
        REPO,
        {FILE: real_gguf, "README.md": tiny, "mmproj-f16.gguf": tiny},
        commit=COMMIT,
    )
    (cache / "datasets--a--b" / "snapshots").mkdir(parents=True)  # not a model repo
    blob = repo / "blobs" / file_hex(real_gguf)
    mode = blob.stat().st_mode

    report = run(store, cache)

    assert [(o.model, o.status) for o in report.outcomes] == [
        (f"{REPO}/mmproj-f16.gguf", "skipped"),
        ("smollm2-135m-instruct-q4_1:latest", "imported"),
    ]
    outcome = report.outcomes[1]
    assert outcome.how == "linked" and report.ok
    assert outcome.source == f"hf://{REPO}@{COMMIT}/{FILE}"
    parsed = hub_file.parse_file_ref(outcome.source)  # the format hf:// pulls record
    assert (parsed.repo.repo_id, parsed.repo.revision, parsed.path) == (REPO, COMMIT, FILE)
    m = store.get_manifest(ModelRef("smollm2-135m-instruct-q4_1"))
    assert m.source == outcome.source and m.quantization == "Q4_1"
    assert os.stat(store.blob_path(m.primary.digest)).st_ino == os.stat(blob).st_ino
    assert blob.stat().st_mode == mode
    assert (repo / "snapshots" / COMMIT / FILE).is_symlink()

    (again,) = [o for o in run(store, cache).outcomes if o.status != "skipped"]
    assert again.status == "already there"


def test_refs_main_picks_the_snapshot(store: Store, tmp_path: Path, tiny: Path) -> None:
    cache = tmp_path / "hub"
    newer = place(tiny, tmp_path / "newer.gguf", link=False)
    with open(newer, "ab") as f:
        f.write(b"\0" * 32)
    hf_repo(cache, "o/r", {"m.gguf": tiny}, commit="1" * 40, ref="main")
    time.sleep(0.01)
    hf_repo(cache, "o/r", {"m.gguf": newer}, commit="2" * 40, ref=None)
    (outcome,) = run(store, cache).outcomes
    assert outcome.source == f"hf://o/r@{'1' * 40}/m.gguf"
    assert store.get_manifest(ModelRef("m")).primary.digest == f"sha256:{file_hex(tiny)}"


def test_hostile_cache(store: Store, tmp_path: Path, tiny: Path) -> None:
    cache = tmp_path / "hub"
    good = hf_repo(cache, "o/good", {"good.gguf": tiny})
    other = hf_repo(cache, "o/other", {"x.txt": tiny})
    # a snapshot file that resolves outside its repo's folder (into another repo's blobs)
    evil = hf_repo(cache, "o/evil", {"fine.gguf": tiny})
    snap = evil / "snapshots" / ("a" * 40)
    (snap / "escape.gguf").symlink_to(Path("..", "..", "..", other.name, "blobs", file_hex(tiny)))
    (snap / "outside.gguf").symlink_to(tmp_path / "src" / "tiny.gguf")
    # an LFS blob whose bytes do not match its sha256 name
    wrong = evil / "blobs" / ("ef" * 32)
    wrong.write_bytes(tiny.read_bytes()[:-1] + b"\x02")
    (snap / "tampered.gguf").symlink_to(Path("..", "..", "blobs", wrong.name))
    # a repo folder with an odd name
    (cache / "models--a--b--c" / "snapshots" / ("b" * 40)).mkdir(parents=True)
    place(tiny, cache / "models--a--b--c" / "snapshots" / ("b" * 40) / "odd.gguf", link=False)

    report = run(store, cache)

    by = {o.source.rsplit("/", 1)[-1]: o for o in report.outcomes}
    assert by["good.gguf"].status == "imported"
    assert by["fine.gguf"].status == "imported"
    for name, why in [
        ("escape.gguf", "points outside"),
        ("outside.gguf", "points outside"),
        ("tampered.gguf", "does not match"),
    ]:
        assert by[name].status == "refused", name
        assert name in by[name].reason and why in by[name].reason, by[name].reason
    (odd,) = [o for o in report.outcomes if "models--a--b--c" in o.model]
    assert odd.status == "refused" and "not a models--owner--repo folder" in odd.reason
    assert not report.ok
    assert sorted(str(r) for r, _ in store.list_manifests()) == ["fine:latest", "good:latest"]
    assert store.blob_digests() == [f"sha256:{file_hex(tiny)}"]
    assert list(store.tmp_dir.iterdir()) == []
    assert (good / "snapshots" / ("a" * 40) / "good.gguf").is_symlink()


def test_default_root(tmp_path: Path) -> None:
    home = tmp_path
    assert importers.default_roots("hf-cache", {}, home) == [
        home / ".cache" / "huggingface" / "hub"
    ]
    assert importers.default_roots("hf-cache", {"HF_HOME": "/x"}, home) == [Path("/x/hub")]
    env = {"HF_HOME": "/x", "HF_HUB_CACHE": "/y"}
    assert importers.default_roots("hf-cache", env, home) == [Path("/y")]


def test_list_imports_nothing(store: Store, tmp_path: Path, tiny: Path) -> None:
    cache = tmp_path / "hub"
    hf_repo(cache, "o/r", {"sub/m.gguf": tiny})
    state = store_state(store)
    (listed,) = run(store, cache, dry_run=True).outcomes
    assert (listed.model, listed.status) == ("m:latest", "would import")
    assert store_state(store) == state
    with pytest.raises(NotFound, match="no model 'nope'"):
        run(store, cache, pattern="nope")
