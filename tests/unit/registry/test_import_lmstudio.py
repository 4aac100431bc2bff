"""`edged import --from lmstudio`: LM Studio's ``<publisher>/<model-folder>/<file>.gguf``
layout with the real SmolLM2 GGUF, imported by hard link; what is skipped, what is
refused."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from edged.common.errors import NotFound
from edged.models_registry import ModelRef, Store, importers
from edged.models_registry.pull import add_gguf

from .import_layouts import (
    file_hex,
    place,
    store_state,
)

FILE = "SmolLM2-135M-Instruct-Q4_1.gguf"


def run(store: Store, root: Path, **kwargs: object) -> importers.ImportReport:
    return importers.import_from(store, "lmstudio", paths=[root], **kwargs)  # type: ignore[arg-type]


def test_imports_by_hard_link_and_skips_what_is_not_a_model(
    store: Store,
    tmp_path: Path,
    real_gguf: Path,
    tiny: Path,
) -> None:
    root = tmp_path / "lmstudio" / "models"
    folder = root / "lmstudio-community" / "SmolLM2-135M-Instruct-GGUF"
    src = place(real_gguf, folder / FILE)
    (folder / "README.md").write_text("not a model")
    for part in (1, 2):
        place(tiny, root / "pub" / "Big-GGUF" / f"big-Q8_0-0000{part}-of-00002.gguf", link=False)
    place(tiny, folder / "mmproj-SmolLM2-f16.gguf", link=False)
    (root / ".hidden").mkdir()
    mode = src.stat().st_mode

    report = run(store, root)

    assert [(o.model, o.status) for o in report.outcomes] == [
        ("smollm2-135m-instruct-q4_1:latest", "imported"),
        ("lmstudio-community/SmolLM2-135M-Instruct-GGUF/mmproj-SmolLM2-f16.gguf", "skipped"),
        ("pub/Big-GGUF/big-Q8_0-00001-of-00002.gguf", "skipped"),
    ]
    out = {o.status: o for o in report.outcomes if o.status != "skipped"}
    skipped = sorted(o.reason for o in report.outcomes if o.status == "skipped")
    assert len(skipped) == 2  # one note per split model, one for the projector
    assert "split GGUF not supported" in skipped[1] and "projector" in skipped[0]
    imported = out["imported"]
    assert (imported.model, imported.how) == ("smollm2-135m-instruct-q4_1:latest", "linked")
    assert imported.source == f"lmstudio:lmstudio-community/SmolLM2-135M-Instruct-GGUF/{FILE}"
    assert report.ok
    m = store.get_manifest(ModelRef("smollm2-135m-instruct-q4_1"))
    assert m.primary.digest == f"sha256:{file_hex(real_gguf)}"
    assert m.primary.path == FILE
    stored = store.blob_path(m.primary.digest)
    assert os.stat(stored).st_ino == os.stat(src).st_ino
    assert src.stat().st_mode == mode
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", FILE, "mmproj-SmolLM2-f16.gguf"]

    # again: already there (the same inode), nothing hashed or changed
    state = store_state(store)
    again = [o for o in run(store, root).outcomes if o.status != "skipped"]
    assert [(o.model, o.status) for o in again] == [(imported.model, "already there")]
    assert store_state(store) == state


def test_filter_and_list(store: Store, tmp_path: Path, tiny: Path) -> None:
    root = tmp_path / "models"
    place(tiny, root / "pub" / "A-GGUF" / "a-Q4.gguf")
    place(tiny, root / "pub" / "B-GGUF" / "b-Q4.gguf", link=False)
    listed = run(store, root, dry_run=True)
    assert [(o.model, o.status) for o in listed.outcomes] == [
        ("a-q4:latest", "would import"),
        ("b-q4:latest", "would import"),
    ]
    (one,) = run(store, root, pattern="pub/B-GGUF").outcomes
    assert (one.model, one.status, one.how) == ("b-q4:latest", "imported", "linked")
    (one,) = run(store, root, pattern="a-q4:latest").outcomes
    assert one.model == "a-q4:latest"
    # b-q4 and a-q4 are the same bytes: the second import found the blob stored
    assert one.how == "already stored"


def test_a_taken_name_is_left_alone(store: Store, tmp_path: Path, tiny: Path) -> None:
    other = tmp_path / "other.gguf"
    other.write_bytes(tiny.read_bytes() + b"\0" * 32)
    add_gguf(store, ModelRef("m-q4"), "test", "m.gguf", lambda: store.import_file(other))
    root = tmp_path / "models"
    place(tiny, root / "pub" / "M-GGUF" / "m-Q4.gguf")
    state = store_state(store)
    (listed,) = run(store, root, dry_run=True).outcomes
    assert listed.status == "refused"  # another size: surely another model
    (outcome,) = run(store, root).outcomes
    assert outcome.status == "refused" and "already names another model" in outcome.reason
    assert store_state(store) == state  # the blob it hashed is gone again


def test_copy_when_no_link_can_be_made(
    store: Store,
    tmp_path: Path,
    tiny: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edged.models_registry import blobs

    root = tmp_path / "models"
    src = place(tiny, root / "pub" / "M-GGUF" / "m.gguf")

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def no_reflink(src: int, dst: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(blobs, "reflink", no_reflink)
    (outcome,) = run(store, root).outcomes
    assert (outcome.status, outcome.how) == ("imported", "copied")
    stored = store.blob_path(store.get_manifest(ModelRef("m")).primary.digest)
    assert os.stat(stored).st_ino != os.stat(src).st_ino


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no /dev/shm")
def test_copy_from_another_file_system(store: Store, tiny: Path) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        if os.stat(shm).st_dev == os.stat(store.root).st_dev:
            pytest.skip("/dev/shm is on the store's file system")
        place(tiny, Path(shm) / "pub" / "M-GGUF" / "m.gguf", link=False)
        (outcome,) = run(store, Path(shm)).outcomes
    assert (outcome.model, outcome.status, outcome.how) == ("m:latest", "imported", "copied")


def test_hostile_folder(store: Store, tmp_path: Path, tiny: Path) -> None:
    root = tmp_path / "models"
    outside = place(tiny, tmp_path / "elsewhere" / "secret.gguf", link=False)
    good = place(tiny, root / "pub" / "Good-GGUF" / "good.gguf")
    (root / "pub" / "Evil-GGUF").mkdir(parents=True)
    (root / "pub" / "Evil-GGUF" / "escape.gguf").symlink_to(outside)
    (root / "pub" / "Evil-GGUF" / "inside.gguf").symlink_to(good)  # within the folder: fine
    (root / "pub" / "Evil-GGUF" / "junk.gguf").write_bytes(b"not a gguf" * 100)
    (root / "pub" / "Evil-GGUF" / "loop.gguf").symlink_to("loop.gguf")
    (root / "pub" / "Evil-GGUF" / "dir.gguf").mkdir()
    (root / "pub" / "Ev\nil").mkdir()
    place(tiny, root / "pub" / "Ev\nil" / "odd.gguf", link=False)
    (root / "linked").symlink_to(tmp_path / "elsewhere")

    report = run(store, root)

    by = {o.source.rsplit("/", 1)[-1]: o for o in report.outcomes}
    assert by["good.gguf"].status == "imported"
    assert by["inside.gguf"].status == "imported"  # the same bytes, another name
    for name, why in [
        ("escape.gguf", "points outside"),
        ("junk.gguf", "GGUF"),
        ("loop.gguf", "cannot be resolved"),
        ("dir.gguf", "not a regular file"),
        ("odd.gguf", "odd characters"),
    ]:
        assert by[name].status == "refused", name
        assert name in by[name].reason and why in by[name].reason, by[name].reason
    assert by["lmstudio:linked"].status == "skipped"
    assert not report.ok
    assert sorted(str(r) for r, _ in store.list_manifests()) == ["good:latest", "inside:latest"]
    assert store.blob_digests() == [f"sha256:{file_hex(tiny)}"]
    assert list(store.tmp_dir.iterdir()) == []


def test_default_roots(store: Store, tmp_path: Path, tiny: Path) -> None:
    assert importers.default_roots("lmstudio", {}, tmp_path) == [
        tmp_path / ".lmstudio" / "models",
        tmp_path / ".cache" / "lm-studio" / "models",
    ]
    with pytest.raises(NotFound, match="no LM Studio models folder"):
        importers.import_from(store, "lmstudio", paths=[tmp_path / "none"])
