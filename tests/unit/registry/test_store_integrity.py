"""Store integrity: `edged verify` (and --repair), garbage collection with a grace
period and in-flight partial downloads, and a full disk (ENOSPC injected at the
write call; tests/integration/test_store_full_disk.py fills a real tmpfs)."""

from __future__ import annotations

import errno
import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from edged.common import errors
from edged.daemon.cli.main import main
from edged.daemon.grpc_codes import status_code_for
from edged.models_registry import Manifest, ManifestFile, ModelRef, Store, Variant
from edged.models_registry import blobs as store_module
from edged.models_registry.fsutil import DiskFull, storage_error
from edged.models_registry.locks import locked
from edged.models_registry.verify import NOTE, verify

ONNX_FILES = {
    "genai_config.json": b'{"model": {"type": "llama"}}',
    "model.onnx": b"onnx graph bytes",
    "sub/tokenizer.json": b'{"tok": 1}',
}
OLD = 1_000_000.0  # an mtime long past every grace period


def gguf_model(store: Store, name: str, data: bytes, tag: str = "latest") -> Manifest:
    digest = store.write_blob([data])
    file = ManifestFile("model", digest, len(data), "m.gguf")
    variant = Variant.of("gguf", "gguf", [file], quantization="Q4_1", source="test")
    return put(store, ModelRef(name, tag), variant)


def onnx_variant(store: Store, files: dict[str, bytes] | None = None) -> Variant:
    entries = []
    for path, data in (files or ONNX_FILES).items():
        role = "model" if path == "genai_config.json" else "file"
        entries.append(ManifestFile(role, store.write_blob([data]), len(data), path))
    return Variant.of("onnx-int4-cpu", "onnx", entries, quantization="int4", source="converted")


def put(store: Store, ref: ModelRef, *variants: Variant, source: str = "test") -> Manifest:
    m = Manifest(
        name=ref.name,
        tag=ref.tag,
        variants=variants,
        source=source,
        created_unix_ms=1_700_000_000_000,
        architecture="llama",
    )
    store.put_manifest(ref, m)
    return m


def flip_byte(path: Path, offset: int = 0) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    os.chmod(path, 0o444)


def problems(report: Any) -> list[tuple[str, str]]:
    return [(f.where, f.issue) for f in report.problems]


@pytest.fixture
def cli_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A store where `edged` commands find it (EDGED_DATA_DIR)."""
    for var in [v for v in os.environ if v.startswith("EDGED_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("EDGED_DATA_DIR", str(tmp_path / "data"))
    return Store(tmp_path / "data" / "models")


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# -- verify -------------------------------------------------------------------------------


def test_verify_clean_store(store: Store) -> None:
    gguf_model(store, "a", b"model a")
    m = put(store, ModelRef("b"), onnx_variant(store))
    store.materialize(m, m.variants[0])
    report = verify(store)
    assert report.ok and report.findings == []
    assert (report.blobs, report.manifests, report.views) == (4, 2, 1)
    assert report.bytes_hashed == len(b"model a") + sum(map(len, ONNX_FILES.values()))


def test_verify_finds_and_repair_quarantines_a_corrupt_blob(store: Store) -> None:
    m = gguf_model(store, "a", b"the model bytes")
    gguf_model(store, "other", b"healthy")
    blob = store.blob_path(m.primary.digest)
    flip_byte(blob, 3)
    damaged = blob.read_bytes()

    report = verify(store)
    assert not report.ok
    assert (f"blobs/{blob.name}", "its bytes no longer match its digest") in problems(report)
    assert any(w == "model a:latest" and "'m.gguf' is damaged" in i for w, i in problems(report))
    assert report.repull == ["a:latest"]
    assert blob.exists()  # a plain verify changes nothing

    repaired = verify(store, repair=True)
    assert repaired.repaired and not blob.exists()
    (moved,) = store.quarantine_dir.iterdir()
    assert moved.read_bytes() == damaged  # moved aside, never deleted
    assert repaired.quarantined == [f"quarantine/{moved.name}"]
    # the model still lacks its file: still a problem until it is pulled again
    assert problems(repaired) == [
        ("model a:latest", "'m.gguf' was damaged and is now in quarantine/")
    ]
    assert repaired.repull == ["a:latest"]
    after = verify(store)
    assert problems(after) == [("model a:latest", "'m.gguf' is missing")]
    store.delete(ModelRef("a"))
    assert verify(store).ok


def test_verify_missing_blob_and_wrong_size(store: Store) -> None:
    m = gguf_model(store, "gone", b"will vanish")
    os.unlink(store.blob_path(m.primary.digest))
    digest = store.write_blob([b"12345"])
    wrong = Variant("gguf", "gguf", "", 6, (ManifestFile("model", digest, 6, "m.gguf"),))
    put(store, ModelRef("sized"), wrong)
    found = problems(verify(store))
    assert ("model gone:latest", "'m.gguf' is missing") in found
    assert ("model sized:latest", "'m.gguf' has 5 bytes, not 6") in found


def test_verify_corrupt_manifest_repair_unblocks_gc(store: Store) -> None:
    gguf_model(store, "good", b"good")
    orphan = store.write_blob([b"orphan"])
    os.utime(store.blob_path(orphan), (OLD, OLD))
    bad = store.manifest_path(ModelRef("bad", "v1"))
    bad.parent.mkdir()
    bad.write_text("{not json")
    assert store.collect().skipped.startswith("a manifest cannot be read")

    report = verify(store)
    assert [w for w, _ in problems(report)] == ["manifests/bad/v1.json"]
    assert report.repull == ["bad:v1"]
    repaired = verify(store, repair=True)
    assert repaired.ok and not bad.exists()
    assert any(q.endswith("manifests__bad__v1.json") for q in repaired.quarantined)
    assert store.gc() == [orphan]  # collection works again


def test_verify_foreign_files_in_blobs(store: Store) -> None:
    gguf_model(store, "a", b"a")
    (store.blobs_dir / "notes.txt").write_text("hi")
    (store.blobs_dir / ("sha256-" + "0" * 64)).symlink_to("/etc/hostname")
    found = problems(verify(store))
    assert ("blobs/notes.txt", "not a blob of this store") in found
    assert (f"blobs/sha256-{'0' * 64}", "not a regular file") in found
    repaired = verify(store, repair=True)
    assert repaired.ok, repaired.problems
    assert sorted(p.name.split("-", 1)[1] for p in store.quarantine_dir.iterdir()) == [
        "blobs__notes.txt",
        f"blobs__sha256-{'0' * 64}",
    ]


def test_verify_wrong_view_is_rebuilt(store: Store) -> None:
    m = put(store, ModelRef("o"), onnx_variant(store))
    view = store.materialize(m, m.variants[0])
    link = view / "model.onnx"
    view.chmod(0o755)
    link.unlink()
    other = store.write_blob([b"something else"])
    link.symlink_to(os.path.relpath(store.blob_path(other), view))
    view.chmod(0o555)
    report = verify(store)
    assert problems(report) == [
        (f"views/{view.name}", "wrong folder view: the link 'model.onnx' points to the wrong file")
    ]
    assert verify(store, repair=True).ok
    assert not view.exists()
    rebuilt = store.materialize(m, m.variants[0])
    assert (rebuilt / "model.onnx").read_bytes() == ONNX_FILES["model.onnx"]
    assert verify(store).ok


def test_verify_notes_are_not_problems(store: Store) -> None:
    gguf_model(store, "a", b"a")
    store.write_blob([b"orphan"])
    (store.tmp_dir / "blob-x.tmp").write_bytes(b"x")
    (store.partial_dir / f"sha256-{'1' * 64}.part").write_bytes(b"part")
    (store.partial_dir / f"sha256-{'1' * 64}.json").write_text("{}")
    (store.views_dir / ("2" * 64)).mkdir()
    report = verify(store)
    assert report.ok
    kinds = {f.where.split("/")[0] for f in report.findings}
    assert kinds == {"blobs", "tmp", "partial", "views"}
    assert all(f.severity == NOTE for f in report.findings)
    partial = next(f for f in report.findings if f.where.startswith("partial/"))
    assert partial.issue.startswith("resumable partial download")
    with locked(store.locks_dir / f"sha256-{'1' * 64}.lock", ephemeral=True):
        held = next(f for f in verify(store).findings if f.where.startswith("partial/"))
        assert held.issue.startswith("download in progress")


def test_verify_repair_waits_for_pulls(store: Store) -> None:
    m = gguf_model(store, "a", b"abc")
    flip_byte(store.blob_path(m.primary.digest))
    other = Store(store.root)
    waited = threading.Event()
    result: list[Any] = []
    with other.pinned():  # a pull in another process
        t = threading.Thread(
            target=lambda: result.append(verify(store, repair=True, on_wait=waited.set))
        )
        t.start()
        assert waited.wait(10)
        assert store.blob_path(m.primary.digest).exists()  # nothing moved while pinned
    t.join(10)
    assert result and not store.blob_path(m.primary.digest).exists()


def test_cli_verify(cli_store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    m = gguf_model(cli_store, "a", b"model")
    code, out, _ = run_cli(["verify"], capsys)
    assert code == 0 and "ok: no problems found" in out
    flip_byte(cli_store.blob_path(m.primary.digest))
    code, out, _ = run_cli(["verify"], capsys)
    assert code == 1
    assert "its bytes no longer match" in out and "edged verify --repair" in out
    code, out, _ = run_cli(["verify", "--repair", "--json"], capsys)
    data = json.loads(out)
    assert code == 1 and data["repull"] == ["a:latest"] and len(data["quarantined"]) == 1
    assert data["problems"][0]["where"] == "model a:latest"


# -- garbage collection -------------------------------------------------------------------


def test_gc_grace_period_and_dry_run(store: Store) -> None:
    kept = gguf_model(store, "kept", b"kept")
    young = store.write_blob([b"young orphan"])
    old = store.write_blob([b"old orphan"])
    os.utime(store.blob_path(old), (OLD, OLD))
    old_tmp = store.tmp_dir / "catalog-abc"
    (old_tmp / "wheel").mkdir(parents=True)
    (old_tmp / "wheel" / "f").write_bytes(b"12345")
    for p in (old_tmp / "wheel" / "f", old_tmp / "wheel", old_tmp):
        os.utime(p, (OLD, OLD))
    busy_tmp = store.tmp_dir / "convert-xyz"
    (busy_tmp / "out").mkdir(parents=True)
    os.utime(busy_tmp, (OLD, OLD))  # the folder is old, what it holds is not
    dry = store.collect(dry_run=True)
    assert dry.blobs == [old] and dry.tmp == ["catalog-abc"] and young in dry.kept_young
    assert store.has_blob(old) and old_tmp.exists()
    done = store.collect()
    assert done.blobs == [old] and done.tmp == ["catalog-abc"]
    assert done.freed_bytes == len(b"old orphan") + 5
    assert not store.has_blob(old) and not old_tmp.exists() and busy_tmp.exists()
    assert store.has_blob(young) and store.has_blob(kept.primary.digest)
    assert store.collect(grace_s=0).blobs == [young]
    assert store.has_blob(kept.primary.digest)


def test_gc_partial_downloads(store: Store) -> None:
    key = "sha256-" + "3" * 64
    part, state = store.partial_dir / f"{key}.part", store.partial_dir / f"{key}.json"
    part.write_bytes(b"x" * 100)
    state.write_text("{}")
    young = store.collect()
    assert young.partial == [] and part.exists()
    for p in (part, state):
        os.utime(p, (OLD, OLD))
    with locked(store.locks_dir / f"{key}.lock", ephemeral=True):  # a download in flight
        report = store.collect()
        assert report.partial == [] and sorted(report.kept_in_flight) == [
            f"{key}.json",
            f"{key}.part",
        ]
        assert part.exists()
    report = store.collect()
    assert sorted(report.partial) == [f"{key}.json", f"{key}.part"]
    assert report.freed_bytes == 102
    assert list(store.partial_dir.iterdir()) == []
    assert list(store.locks_dir.iterdir()) == [store.locks_dir / "gc.lock"]  # no lock litter


def test_gc_partial_lock_blocks_a_download_meanwhile(store: Store) -> None:
    """A download that starts while gc holds a partial's lock waits, then finds it gone."""
    key = "url-" + "4" * 64
    part = store.partial_dir / f"{key}.part"
    part.write_bytes(b"x")
    os.utime(part, (OLD, OLD))
    with store.download_lock_free(key) as free:
        assert free
        with pytest.raises(TimeoutError):
            _lock_within(store.locks_dir / f"{key}.lock", 0.3)
    _lock_within(store.locks_dir / f"{key}.lock", 5)


def _lock_within(path: Path, seconds: float) -> None:
    stop = threading.Event()
    got = threading.Event()

    def take() -> None:
        try:
            with locked(path, ephemeral=True, cancel=stop):
                got.set()
        except errors.Cancelled:
            pass

    t = threading.Thread(target=take)
    t.start()
    ok = got.wait(seconds)
    stop.set()
    t.join(5)
    if not ok:
        raise TimeoutError


def test_gc_skipped_while_pinned(store: Store) -> None:
    orphan = store.write_blob([b"o"])
    os.utime(store.blob_path(orphan), (OLD, OLD))
    with Store(store.root).pinned():
        report = store.collect()
        assert report.skipped.startswith("a pull or an import is in progress")
        assert store.has_blob(orphan)


def test_delete_frees_own_blobs_now_and_others_after_grace(store: Store) -> None:
    gone = gguf_model(store, "gone", b"gone")
    orphan = store.write_blob([b"somebody's orphan"])
    store.delete(ModelRef("gone"))
    assert not store.has_blob(gone.primary.digest)
    assert store.has_blob(orphan)


def test_cli_gc(cli_store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    orphan = cli_store.write_blob([b"orphan"])
    code, out, _ = run_cli(["gc", "--dry-run"], capsys)
    assert code == 0 and "would remove 0 item(s)" in out and "kept 1 unused item(s)" in out
    code, out, _ = run_cli(["gc", "--grace", "0", "--dry-run", "--json"], capsys)
    assert code == 0 and json.loads(out)["blobs"] == [orphan]
    assert cli_store.has_blob(orphan)
    code, out, _ = run_cli(["gc", "--grace", "0"], capsys)
    assert code == 0 and "removed 1 item(s)" in out and not cli_store.has_blob(orphan)
    with Store(cli_store.root).pinned():
        code, _, err = run_cli(["gc"], capsys)
    assert code == 1 and "gc skipped: a pull" in err


def test_cli_gc_grace_from_env(
    cli_store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    orphan = cli_store.write_blob([b"orphan"])
    monkeypatch.setenv("EDGED_GC_GRACE_S", "0")
    code, _out, _ = run_cli(["gc"], capsys)
    assert code == 0 and not cli_store.has_blob(orphan)
    monkeypatch.setenv("EDGED_GC_GRACE_S", "soon")
    code, _, err = run_cli(["gc"], capsys)
    assert code == 1 and "EDGED_GC_GRACE_S must be an integer" in err


# -- a full disk --------------------------------------------------------------------------


class _FillingFile(io.RawIOBase):
    """A raw file that takes ``room`` bytes, writing short once it is nearly full,
    then fails with ENOSPC, as a real nearly full disk does."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        left = self.room - len(self.data)
        if left <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        piece = bytes(b)[:left]
        self.data += piece
        return len(piece)


def test_write_all_handles_short_writes_then_enospc() -> None:
    f = _FillingFile(room=10)
    store_module.write_all(f, b"12345")  # type: ignore[arg-type]
    with pytest.raises(OSError) as raised:
        store_module.write_all(f, b"67890abcdef")  # type: ignore[arg-type]
    assert raised.value.errno == errno.ENOSPC
    assert bytes(f.data) == b"1234567890"  # the short write was not lost or hashed twice


def test_enospc_while_writing_a_blob(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    real = store_module.write_all
    written = [0]

    def nearly_full(f: Any, data: bytes) -> None:
        if written[0] + len(data) > 3 << 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(f, data)
        written[0] += len(data)

    monkeypatch.setattr(store_module, "write_all", nearly_full)
    data = os.urandom(1 << 20)
    with pytest.raises(DiskFull) as raised:
        store.write_blob(iter([data] * 8), total=8 << 20)
    message = str(raised.value)
    assert status_code_for(raised.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"free in {store.tmp_dir}" in message
    assert "about 5.2 MB more needed" in message  # 8 MiB asked, 3 MiB written
    assert list(store.tmp_dir.iterdir()) == [] and store.blob_digests() == []
    monkeypatch.setattr(store_module, "write_all", real)
    digest = store.write_blob(iter([data] * 8))  # space is back: no restart needed
    assert store.verify_blob(digest)


def test_disk_full_inside_a_pin_says_where(store: Store) -> None:
    """Code that meets ENOSPC without knowing the store's folders (a download) gets
    the store's location and free space added by the pin it runs under."""
    with pytest.raises(DiskFull) as raised, store.pinned():
        raise storage_error(OSError(errno.ENOSPC, "No space left"), "downloading a model")
    text = str(raised.value)
    assert text.startswith("not enough disk space while downloading a model: ")
    assert f"free in {store.root}; free some space and run it again" in text
    with pytest.raises(DiskFull) as raised, store.pinned():
        raise storage_error(
            OSError(errno.EDQUOT, "Quota"), "x", where=store.partial_dir, needed=2_000_000
        )
    assert f"free in {store.partial_dir}, about 2.0 MB more needed" in str(raised.value)
    other = storage_error(OSError(errno.EIO, "I/O error"), "x")
    assert isinstance(other, errors.Internal) and "I/O error" in str(other)


def test_gc_counts_time_by_mtime(store: Store) -> None:
    orphan = store.write_blob([b"x"])
    now = time.time()
    assert store.collect(now=now + 3599).blobs == []
    assert store.collect(now=now + 3601).blobs == [orphan]
