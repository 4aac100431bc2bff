from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.common.errors import (
    Cancelled,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    ModelNotFound,
    NotFound,
)
from edged.models_registry import (
    CorruptManifest,
    Manifest,
    ManifestFile,
    ModelRef,
    PullProgress,
    Store,
    Variant,
    parse_model_ref,
)
from edged.models_registry.locks import locked


def chunks_of(data: bytes, size: int = 7) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def manifest_for(store: Store, ref: ModelRef, data: bytes) -> Manifest:
    digest = store.write_blob([data])
    file = ManifestFile("model", digest, len(data), "m.gguf")
    return Manifest(
        name=ref.name,
        tag=ref.tag,
        variants=(Variant.of("gguf", "gguf", [file], quantization="Q4_1", source="test"),),
        source="test",
        created_unix_ms=1,
        architecture="llama",
        quantization="Q4_1",
        parameters=76,
        context_length=256,
        has_chat_template=True,
    )


def add_model(store: Store, text: str, data: bytes) -> Manifest:
    ref = parse_model_ref(text)
    m = manifest_for(store, ref, data)
    store.put_manifest(ref, m)
    return m


def leftovers(store: Store) -> list[str]:
    return sorted(p.name for p in store.tmp_dir.iterdir())


def test_layout(store: Store) -> None:
    for d in ("blobs", "manifests", "tmp", "partial", "locks"):
        assert (store.root / d).is_dir()


def test_write_blob_hashes_and_names_by_digest(store: Store, kit: Any) -> None:
    data = b"hello world" * 1000
    events: list[PullProgress] = []
    digest = store.write_blob(chunks_of(data, 1000), progress=events.append, total=len(data))
    assert digest == kit.sha256_digest(data)
    path = store.blob_path(digest)
    assert path.name == "sha256-" + digest[7:]
    assert path.read_bytes() == data
    assert not path.stat().st_mode & stat.S_IWUSR
    assert store.has_blob(digest)
    assert events[-1] == PullProgress("writing", len(data), len(data))
    assert leftovers(store) == []
    assert store.write_blob([data], digest) == digest
    assert store.verify_blob(digest)


def test_write_blob_with_wrong_digest_leaves_nothing(store: Store, kit: Any) -> None:
    wrong = kit.sha256_digest(b"something else")
    with pytest.raises(DigestMismatch, match="does not match the expected digest"):
        store.write_blob(chunks_of(b"payload"), wrong)
    assert list(store.blobs_dir.iterdir()) == []
    assert leftovers(store) == []


def test_write_blob_skips_known_blobs_without_reading(store: Store) -> None:
    digest = store.write_blob([b"abc"])

    def boom() -> Iterator[bytes]:
        raise AssertionError("must not be consumed")
        yield b""

    assert store.write_blob(boom(), digest.upper().replace("SHA256", "sha256")) == digest


def test_write_blob_cleans_up_on_cancel_and_on_errors(store: Store) -> None:
    cancel = threading.Event()

    def cancelling() -> Iterator[bytes]:
        yield b"a" * 100
        cancel.set()
        yield b"b" * 100

    with pytest.raises(Cancelled):
        store.write_blob(cancelling(), cancel=cancel)

    def failing() -> Iterator[bytes]:
        yield b"a" * 100
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        store.write_blob(failing())
    assert list(store.blobs_dir.iterdir()) == []
    assert leftovers(store) == []


def test_blob_path_validates_the_digest(store: Store) -> None:
    for bad in ("../../etc/passwd", "sha256:" + "a" * 63, "sha256:" + "../" * 21 + "a"):
        with pytest.raises(InvalidArgument):
            store.blob_path(bad)


def test_import_file(store: Store, tmp_path: Path, kit: Any) -> None:
    src = tmp_path / "outside" / "model.gguf"
    src.parent.mkdir()
    src.write_bytes(b"x" * 5000)
    assert store.import_file(src) == kit.sha256_digest(b"x" * 5000)
    with pytest.raises(NotFound) as info:
        store.import_file(tmp_path / "outside" / "missing.gguf")
    assert "outside" not in str(info.value)
    assert "missing.gguf" in str(info.value)
    with pytest.raises(InvalidArgument):
        store.import_file(src.parent)
    with pytest.raises(DigestMismatch):
        store.import_file(src, kit.sha256_digest(b"other"))
    assert leftovers(store) == []


def test_manifest_round_trip_and_listing(store: Store) -> None:
    a = add_model(store, "smollm2:135m-q4_1", b"model a")
    b = add_model(store, "owner/repo:v1", b"model b")
    assert store.manifest_path(ModelRef("owner/repo", "v1")) == (
        store.root / "manifests" / "owner" / "repo" / "v1.json"
    )
    assert store.get_manifest(ModelRef("smollm2", "135m-q4_1")) == a
    assert store.list_manifests() == [
        (ModelRef("owner/repo", "v1"), b),
        (ModelRef("smollm2", "135m-q4_1"), a),
    ]
    assert Manifest.from_json(a.to_json()) == a
    assert a.primary.digest in a.digests
    assert json.loads(a.to_json())["schema_version"] == 2


def test_get_missing_model(store: Store) -> None:
    with pytest.raises(ModelNotFound, match=r"model 'x:y' not found; pull it with `edged pull x`"):
        store.get_manifest(ModelRef("x", "y"))


def test_put_manifest_needs_its_blobs(store: Store) -> None:
    ref = ModelRef("m")
    m = manifest_for(store, ref, b"data")
    store.blob_path(m.primary.digest).unlink()
    with pytest.raises(FailedPrecondition, match="is not stored"):
        store.put_manifest(ref, m)
    assert store.list_manifests() == []


def test_corrupt_manifests(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    add_model(store, "good", b"good")
    bad = store.manifest_path(ModelRef("bad"))
    bad.parent.mkdir()
    bad.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="edged.models_registry"):
        listed = store.list_manifests()
    assert [ref for ref, _ in listed] == [ModelRef("good")]
    assert "bad:latest" in caplog.text
    with pytest.raises(CorruptManifest, match=r"corrupt manifest.*`edged rm bad:latest`"):
        store.get_manifest(ModelRef("bad"))
    assert store.gc() == []  # nothing is collected while a manifest cannot be read
    store.delete(ModelRef("bad"))
    assert not bad.exists()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(schema_version=99),
        lambda d: d.pop("variants"),
        lambda d: d.update(variants=[]),
        lambda d: d["variants"][0]["files"][0].update(digest="sha256:abc"),
        lambda d: d["variants"][0]["files"][0].update(role="tokenizer"),
        lambda d: d["variants"][0]["files"][0].update(size=-1),
        lambda d: d["variants"][0]["files"][0].update(path="../m.gguf"),
        lambda d: d["variants"][0].update(size=5),
        lambda d: d["variants"].append(dict(d["variants"][0])),
        lambda d: d.update(name="../x"),
        lambda d: d.update(tag=7),
        lambda d: d.update(has_chat_template="yes"),
        lambda d: d.update(parameters=True),
    ],
)
def test_manifest_from_json_rejects(store: Store, mutate: Any) -> None:
    m = manifest_for(store, ModelRef("m"), b"data")
    data = json.loads(m.to_json())
    mutate(data)
    with pytest.raises(CorruptManifest):
        Manifest.from_json(json.dumps(data))
    with pytest.raises(CorruptManifest):
        Manifest.from_json(b"[1, 2]")


def test_delete_collects_unreferenced_blobs(store: Store) -> None:
    shared = add_model(store, "a:one", b"shared")
    add_model(store, "a:two", b"shared")
    own = add_model(store, "owner/b", b"own")
    store.delete(ModelRef("owner/b"))
    assert not store.has_blob(own.primary.digest)
    assert not (store.manifests_dir / "owner").exists()
    store.delete(ModelRef("a", "one"))
    assert store.has_blob(shared.primary.digest)
    store.delete(ModelRef("a", "two"))
    assert not store.has_blob(shared.primary.digest)
    assert list(store.manifests_dir.iterdir()) == []
    with pytest.raises(ModelNotFound):
        store.delete(ModelRef("a", "two"))


def test_gc_skips_while_pinned_and_cleans_stale_tmp(store: Store, tmp_path: Path) -> None:
    orphan = store.write_blob([b"orphan"])
    other = Store(store.root)  # another process would look like this: separate lock files
    with other.pinned():
        assert store.gc() == []
        assert store.has_blob(orphan)
    with store.pinned(), store.pinned():  # pins nest
        assert other.gc() == []
    old = store.tmp_dir / "stale.tmp"
    old.write_bytes(b"x")
    os.utime(old, (0, 0))
    fresh = store.tmp_dir / "fresh.tmp"
    fresh.write_bytes(b"x")
    assert store.gc() == []  # the orphan is younger than the grace period
    assert leftovers(store) == ["fresh.tmp"]
    os.utime(store.blob_path(orphan), (0, 0))
    assert store.gc() == [orphan]


def test_resolve(store: Store) -> None:
    add_model(store, "smollm2:135m-q4_1", b"one")
    ref, _ = store.resolve("smollm2")
    assert ref == ModelRef("smollm2", "135m-q4_1")
    add_model(store, "smollm2:other", b"two")
    # several tags: the catalog's default tag for the name wins, else name one
    assert store.resolve("smollm2")[0] == ModelRef("smollm2", "135m-q4_1")
    add_model(store, "mine:a", b"a")
    add_model(store, "mine:b", b"b")
    with pytest.raises(ModelNotFound, match=r"several tags \(a, b\)"):
        store.resolve("mine")
    add_model(store, "smollm2", b"three")
    assert store.resolve("smollm2")[0] == ModelRef("smollm2", "latest")
    assert store.resolve("smollm2:other")[0] == ModelRef("smollm2", "other")
    with pytest.raises(ModelNotFound):
        store.resolve("smollm2:nope")
    with pytest.raises(ModelNotFound, match="pull it with `edged pull unknown`"):
        store.resolve("unknown")
    with pytest.raises(InvalidArgument):
        store.resolve("../x")


def test_concurrent_writers_of_one_blob(store: Store) -> None:
    data = os.urandom(1 << 20)
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(Store(store.root).write_blob(chunks_of(data, 4096)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert [p.name for p in store.blobs_dir.iterdir()] == [results[0].replace(":", "-")]
    assert leftovers(store) == []


def test_ephemeral_lock_excludes_and_disappears(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    inside = 0
    peak = 0
    guard = threading.Lock()

    def worker() -> None:
        nonlocal inside, peak
        for _ in range(20):
            with locked(path, ephemeral=True):
                with guard:
                    inside += 1
                    peak = max(peak, inside)
                time.sleep(0.001)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 1
    assert not path.exists()


def test_waiting_for_a_lock_can_be_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    cancel = threading.Event()
    waited: list[bool] = []
    with locked(path):

        def on_wait() -> None:
            waited.append(True)
            cancel.set()

        with pytest.raises(Cancelled), locked(path, cancel=cancel, on_wait=on_wait):
            pass
    assert waited == [True]
