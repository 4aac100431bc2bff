"""`edged export` / `edged import`: a round trip, and hostile archives built here with
tarfile, each refused with nothing left in the store (and nothing written outside it)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edged.common.errors import FailedPrecondition, InvalidArgument, NotFound
from edged.models_registry import Manifest, ManifestFile, ModelRef, Store, Variant
from edged.models_registry.archive import BadArchive, export_model, import_archive
from edged.models_registry.verify import verify

from .test_store_integrity import (
    cli_store,  # noqa: F401 - a fixture
    flip_byte,
    gguf_model,
    onnx_variant,
    put,
    run_cli,
)

BLOB = b"the model's bytes " * 100
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
BLOB_NAME = "blobs/" + DIGEST.replace(":", "-")
SIX = "sha256:" + "6" * 64


def store_state(store: Store) -> dict[str, Any]:
    """What a failed import must leave unchanged: every file but the lock files."""
    out: dict[str, Any] = {}
    for path in sorted(store.root.rglob("*")):
        rel = path.relative_to(store.root).as_posix()
        if rel.startswith("locks/"):
            continue
        out[rel] = "dir" if path.is_dir() else path.read_bytes()
    return out


def exported(tmp_path: Path, name: str = "src") -> tuple[Store, Path]:
    """A model with a GGUF and an ONNX variant, exported to a tar file."""
    src = Store(tmp_path / name)
    m = gguf_model(src, "team/model", BLOB, tag="q4")
    put(src, ModelRef("team/model", "q4"), *m.variants, onnx_variant(src))
    out = tmp_path / f"{name}.tar"
    export_model(src, "team/model:q4", out)
    return src, out


# -- the round trip -----------------------------------------------------------------------


def test_export_import_round_trip(tmp_path: Path) -> None:
    src, archive = exported(tmp_path)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[:2] == ["index.json", "manifest.json"]
        assert all(m.isreg() and m.mode == 0o444 for m in tar.getmembers())
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert index["format"] == "edged-model-archive" and index["model"] == "team/model:q4"
    assert sorted(names[2:]) == sorted(
        "blobs/" + b["digest"].replace(":", "-") for b in index["blobs"]
    )
    dst = Store(tmp_path / "dst")
    events: list[Any] = []
    ref, m = import_archive(dst, archive, progress=events.append)
    assert ref == ModelRef("team/model", "q4")
    assert m == src.get_manifest(ref) == dst.get_manifest(ref)
    assert dst.blob_digests() == src.blob_digests()
    assert verify(dst).ok and list(dst.tmp_dir.iterdir()) == []
    assert events and events[-1].status == "importing"
    onnx = m.variant("onnx")
    assert onnx is not None
    assert (dst.materialize(m, onnx) / "sub" / "tokenizer.json").read_bytes() == b'{"tok": 1}'
    # again, under another name, with the blobs already present: still re-hashed
    ref2, _ = import_archive(dst, archive, name="copy")
    assert ref2 == ModelRef("copy", "q4") and dst.get_manifest(ref2).digests == m.digests


def test_export_refuses_a_damaged_store(tmp_path: Path) -> None:
    src = Store(tmp_path / "src")
    m = gguf_model(src, "m", BLOB)
    flip_byte(src.blob_path(m.primary.digest), 5)
    out = tmp_path / "m.tar"
    with pytest.raises(FailedPrecondition, match="is damaged in the store; nothing was exported"):
        export_model(src, "m", out)
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no archive, no temp file
    with pytest.raises(NotFound):
        export_model(src, "nosuch", out)


def test_cli_export_import(
    cli_store: Store,  # noqa: F811 - the fixture
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    gguf_model(cli_store, "m", BLOB)
    out = tmp_path / "m.tar"
    code, text, _ = run_cli(["export", "m", "-o", str(out)], capsys)
    assert code == 0 and text.startswith("exported m:latest (1 file(s))")
    code, text, _ = run_cli(["import", str(out), "--name", "again:v2"], capsys)
    assert code == 0 and text.startswith("imported again:v2")
    assert cli_store.get_manifest(ModelRef("again", "v2")).digests == {DIGEST}
    (tmp_path / "bad.tar").write_bytes(b"not a tar file at all" * 30)
    code, _, err = run_cli(["import", str(tmp_path / "bad.tar")], capsys)
    assert code == 1 and err.startswith("edged: not a tar archive")


# -- hostile archives ---------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes | None]


def member(name: str, data: bytes = b"", **attrs: Any) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        info.size = 0
        return info, None
    return info, data


def manifest_json(blobs: dict[str, bytes]) -> bytes:
    files = [
        ManifestFile("model" if i == 0 else "file", d, len(b), f"f{i}.bin")
        for i, (d, b) in enumerate(blobs.items())
    ]
    fmt = "gguf" if len(files) == 1 else "raw"
    return Manifest("evil", "latest", (Variant.of("v", fmt, files),), "test", 1).to_json().encode()


def head(blobs: dict[str, bytes] | None = None, manifest: bytes | None = None) -> list[Member]:
    """A valid index.json and manifest.json for ``blobs`` (default: the one BLOB)."""
    blobs = {DIGEST: BLOB} if blobs is None else blobs
    data = manifest if manifest is not None else manifest_json(blobs)
    index = {
        "format": "edged-model-archive",
        "version": 1,
        "model": "evil:latest",
        "manifest_sha256": hashlib.sha256(data).hexdigest(),
        "blobs": [{"digest": d, "size": len(b)} for d, b in blobs.items()],
    }
    return [member("index.json", json.dumps(index).encode()), member("manifest.json", data)]


def build(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.fixture
def target(tmp_path: Path) -> Store:
    store = Store(tmp_path / "work" / "store")
    gguf_model(store, "existing", b"already here")
    return store


GOOD_BLOB = member(BLOB_NAME, BLOB)
HOSTILE: dict[str, tuple[Callable[[], list[Member]], str]] = {
    "absolute path": (
        lambda: [*head(), member("/tmp/e2-evil-absolute", b"x")],
        "has an absolute path",
    ),
    "absolute path first": (lambda: [member("/etc/evil", b"x")], "has an absolute path"),
    "dot-dot traversal": (
        lambda: [*head(), member("../../evil-traversal", b"x")],
        r"points outside the archive \('..'\)",
    ),
    "dot-dot inside blobs": (
        lambda: [*head(), member("blobs/../../../evil", b"x")],
        "points outside the archive",
    ),
    "symlink out": (
        lambda: [*head(), member(BLOB_NAME, type=tarfile.SYMTYPE, linkname="/etc/passwd")],
        "is a link: links are not allowed",
    ),
    "symlink as index": (
        lambda: [member("index.json", type=tarfile.SYMTYPE, linkname="/etc/passwd")],
        "is a link",
    ),
    "hardlink": (
        lambda: [*head(), member(BLOB_NAME, type=tarfile.LNKTYPE, linkname="index.json")],
        "is a link: links are not allowed",
    ),
    "device node": (
        lambda: [*head(), member(BLOB_NAME, type=tarfile.CHRTYPE, devmajor=1, devminor=3)],
        "is a device or a pipe",
    ),
    "fifo": (lambda: [*head(), member(BLOB_NAME, type=tarfile.FIFOTYPE)], "device or a pipe"),
    "other folder": (
        lambda: [*head(), member("evil", type=tarfile.DIRTYPE), GOOD_BLOB],
        "unexpected folder 'evil'",
    ),
    "unexpected name": (
        lambda: [*head(), GOOD_BLOB, member("README", b"hi")],
        "unexpected member 'README'",
    ),
    "digest mismatch": (
        lambda: [*head(), member(BLOB_NAME, BLOB[:-1] + b"!")],
        "does not match its name",
    ),
    "size differs from the index": (
        lambda: [*head(), member(BLOB_NAME, BLOB + b"more")],
        "bytes but index.json says",
    ),
    "blob not in the index": (
        lambda: [*head(), GOOD_BLOB, member("blobs/sha256-" + "5" * 64, b"x")],
        "is not listed in index.json",
    ),
    "blob twice": (lambda: [*head(), GOOD_BLOB, GOOD_BLOB], "appears twice"),
    "blob missing": (lambda: head(), "truncated or incomplete: 1 of its 1 blob"),
    "manifest first": (lambda: head()[::-1], "expected index.json next"),
    "manifest not matching the index": (
        lambda: [*head(manifest=b"{}"), GOOD_BLOB],
        "manifest.json is invalid",
    ),
    "manifest not the one indexed": (
        lambda: [*head(blobs={DIGEST: BLOB, SIX: b"six"})[:1], *head()[1:], GOOD_BLOB],
        "does not match the digest in index.json",
    ),
    "index and manifest disagree": (
        lambda: [*head(blobs={DIGEST: BLOB, SIX: b"six"}, manifest=manifest_json({DIGEST: BLOB}))],
        "index.json and manifest.json list different files",
    ),
    "not an edged index": (
        lambda: [member("index.json", b'{"format": "other"}')],
        "not an edged model archive",
    ),
    "huge index": (lambda: [member("index.json", b" " * (1 << 20) + b"{}")], "too large"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused(target: Store, tmp_path: Path, case: str) -> None:
    members, reason = HOSTILE[case]
    archive = build(tmp_path / "evil.tar", members())
    before = store_state(target)
    with pytest.raises(BadArchive, match=reason) as raised:
        import_archive(target, archive)
    assert isinstance(raised.value, InvalidArgument)  # INVALID_ARGUMENT over gRPC
    assert store_state(target) == before
    assert not any(p.name.startswith("evil") for p in tmp_path.rglob("*") if p != archive)
    assert not Path("/tmp/e2-evil-absolute").exists()


@pytest.mark.parametrize("cut", [100, 512 + 300, 3 * 512, -1200, -600, -1])
def test_truncated_archive_is_refused(target: Store, tmp_path: Path, cut: int) -> None:
    whole = build(tmp_path / "whole.tar", [*head(), GOOD_BLOB]).read_bytes()
    # a tar ends with two zero blocks (and padding); cut into the data itself
    end = whole.rstrip(b"\0")
    end_len = len(end) + (-len(end) % 512)
    archive = tmp_path / "cut.tar"
    archive.write_bytes(whole[:cut] if cut > 0 else whole[: end_len + cut])
    before = store_state(target)
    with pytest.raises(BadArchive, match=r"truncated|damaged|not a tar"):
        import_archive(target, archive)
    assert store_state(target) == before


def test_failure_after_staging_leaves_nothing(
    target: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs staged and even installed before the manifest fails are all taken back."""
    _src, archive = exported(tmp_path)
    before = store_state(target)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise FailedPrecondition("the manifest could not be written")

    monkeypatch.setattr(target, "update_manifest", refuse)
    with pytest.raises(FailedPrecondition):
        import_archive(target, archive)
    assert store_state(target) == before


def test_import_needs_room(target: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _src, archive = exported(tmp_path)
    from edged.models_registry import archive as archive_module

    monkeypatch.setattr(archive_module, "free_bytes", lambda _path: 1000)
    with pytest.raises(archive_module.DiskFull, match="more needed"):
        import_archive(target, archive)
    assert target.get_manifest(ModelRef("existing"))
