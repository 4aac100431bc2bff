"""Importing a local ONNX Runtime GenAI folder with pull(), hostile folders included."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from edged.common.errors import (
    Cancelled,
    InvalidArgument,
    InvalidModelFile,
    NotFound,
)
from edged.models_registry import ModelRef, PullProgress, Store, folder, pull

GENAI_CONFIG = {
    "model": {
        "type": "llama",
        "context_length": 2048,
        "decoder": {"filename": "model.onnx", "session_options": {"provider_options": []}},
    },
    "search": {"max_length": 2048},
}


def onnx_folder(root: Path, extra: dict[str, bytes] | None = None) -> Path:
    files: dict[str, bytes] = {
        "genai_config.json": json.dumps(GENAI_CONFIG).encode(),
        "model.onnx": b"graph" * 10,
        "model.onnx.data": os.urandom(3 << 20),
        "tokenizer.json": b'{"model": {}}',
        "tokenizer_config.json": json.dumps({"chat_template": "{{ x }}"}).encode(),
        "special_tokens_map.json": b"{}",
        **(extra or {}),
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_import_a_folder(store: Store, tmp_path: Path) -> None:
    src = onnx_folder(tmp_path / "My ONNX model", {"sub/vocab.txt": b"a b c"})
    (src / ".gitattributes").write_bytes(b"*.onnx lfs")  # hidden entries are skipped
    (src / ".cache" / "huggingface").mkdir(parents=True)
    (src / ".cache" / "huggingface" / "x.lock").write_bytes(b"")
    (src / "alias.json").symlink_to("tokenizer.json")  # a symlink inside the folder is fine
    events: list[PullProgress] = []
    ref, m = pull(store, str(src), name="mine:onnx", progress=events.append)
    assert ref == ModelRef("mine", "onnx")
    (v,) = m.variants
    assert (v.name, v.format, v.quantization) == ("onnx", "onnx", "")
    assert v.source == m.source == "folder:My ONNX model"
    assert v.main.path == "genai_config.json" and m.primary == v.main
    assert sorted(f.path for f in v.files) == [
        "alias.json",
        "genai_config.json",
        "model.onnx",
        "model.onnx.data",
        "special_tokens_map.json",
        "sub/vocab.txt",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert v.size == sum(f.size for f in v.files)
    assert (m.architecture, m.context_length, m.has_chat_template) == ("llama", 2048, True)
    assert store.resolve("mine:onnx") == (ref, m)
    view = store.materialize(m, v)
    for f in v.files:
        assert (view / f.path).read_bytes() == (src / f.path).read_bytes()
    total = v.size
    importing = [e for e in events if e.status == "importing"]
    assert importing[-1] == PullProgress("importing", total, total)
    assert all(e.total == total for e in importing)
    assert [e.completed for e in importing] == sorted(e.completed for e in importing)
    assert events[-1].status == "writing manifest"
    assert list(store.tmp_dir.iterdir()) == []


def test_import_next_to_a_gguf_keeps_it(store: Store, tmp_path: Path, kit: Any) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(kit.build_gguf())
    pull(store, str(gguf), name="m")
    _, m = pull(store, str(onnx_folder(tmp_path / "onnx")), name="m")
    assert [(v.name, v.format) for v in m.variants] == [("gguf", "gguf"), ("onnx", "onnx")]
    assert m.primary.path == "m.gguf" and m.architecture == "llama"
    assert m.context_length == 256  # the GGUF's facts stay the model's


def test_a_folder_without_genai_config_is_refused(store: Store, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(InvalidArgument, match=r"is a directory: .*ONNX Runtime GenAI"):
        pull(store, str(tmp_path / "plain"))
    with pytest.raises(InvalidArgument, match="only be checked for a single GGUF"):
        pull(store, str(onnx_folder(tmp_path / "x")), digest="a" * 64)
    with pytest.raises(NotFound):
        pull(store, str(tmp_path / "missing"))


def _escape_symlink(src: Path, tmp: Path) -> None:
    secret = tmp / "secret.txt"
    secret.write_bytes(b"password")
    (src / "tokenizer.model").symlink_to(secret)


def _relative_escape(src: Path, tmp: Path) -> None:
    (tmp / "secret.txt").write_bytes(b"password")
    (src / "sub").mkdir()
    (src / "sub" / "x.json").symlink_to("../../secret.txt")


def _dir_symlink(src: Path, tmp: Path) -> None:
    (src / "linked").symlink_to(src)


def _broken_symlink(src: Path, tmp: Path) -> None:
    (src / "gone.json").symlink_to("nowhere.json")


def _symlink_loop(src: Path, tmp: Path) -> None:
    (src / "a.json").symlink_to("b.json")
    (src / "b.json").symlink_to("a.json")


def _backslash(src: Path, tmp: Path) -> None:
    (src / "a\\..\\..\\evil.json").write_bytes(b"x")


def _dotdot_prefixed(src: Path, tmp: Path) -> None:
    (src / "a..b").mkdir()  # fine: not a '..' part
    (src / "a..b" / "bad name.json").write_bytes(b"x")


def _space(src: Path, tmp: Path) -> None:
    (src / "my file.json").write_bytes(b"x")


def _fifo(src: Path, tmp: Path) -> None:
    os.mkfifo(src / "pipe.json")


def _case_clash(src: Path, tmp: Path) -> None:
    (src / "Model.onnx").write_bytes(b"x")


def _too_deep(src: Path, tmp: Path) -> None:
    deep = src.joinpath(*["d"] * 9)
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"x")


def _config_escapes(src: Path, tmp: Path) -> None:
    config = json.loads(json.dumps(GENAI_CONFIG))
    config["model"]["decoder"]["filename"] = "../../etc/passwd"
    (src / "genai_config.json").write_text(json.dumps(config))


def _config_names_a_missing_file(src: Path, tmp: Path) -> None:
    config = json.loads(json.dumps(GENAI_CONFIG))
    config["model"]["embedding"] = {"filename": "embeddings.onnx"}
    (src / "genai_config.json").write_text(json.dumps(config))


def _config_not_json(src: Path, tmp: Path) -> None:
    (src / "genai_config.json").write_bytes(b"{not json")


def _config_filename_not_str(src: Path, tmp: Path) -> None:
    config = json.loads(json.dumps(GENAI_CONFIG))
    config["model"]["decoder"]["filename"] = ["model.onnx"]
    (src / "genai_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("spoil", "error", "match"),
    [
        (_escape_symlink, InvalidArgument, "'tokenizer.model': it is a symlink to outside"),
        (_relative_escape, InvalidArgument, "'sub/x.json': it is a symlink to outside"),
        (_dir_symlink, InvalidArgument, "does not lead to a regular file"),
        (_broken_symlink, InvalidArgument, "broken symlink"),
        (_symlink_loop, InvalidArgument, "does not lead to a regular file"),
        (_backslash, InvalidArgument, "backslashes are not allowed"),
        (_dotdot_prefixed, InvalidArgument, "letters, digits"),
        (_space, InvalidArgument, "letters, digits"),
        (_fifo, InvalidArgument, "not a regular file"),
        (_case_clash, InvalidArgument, "name the same file"),
        (_too_deep, InvalidArgument, "levels"),
        (_config_escapes, InvalidModelFile, "names a bad file.*'\\.\\.' parts"),
        (_config_names_a_missing_file, InvalidModelFile, "'embeddings.onnx', which is not in"),
        (_config_not_json, InvalidModelFile, "not valid JSON"),
        (_config_filename_not_str, InvalidModelFile, "not a string"),
    ],
)
def test_hostile_folders_leave_the_store_as_it_was(
    store: Store, tmp_path: Path, kit: Any, spoil: Any, error: type[Exception], match: str
) -> None:
    src = onnx_folder(tmp_path / "src")
    spoil(src, tmp_path)
    before = kit.snapshot(store.root)
    with pytest.raises(error, match=match) as info:
        pull(store, str(src), name="evil")
    assert str(tmp_path) not in str(info.value)
    assert kit.snapshot(store.root) == before


def test_limits(store: Store, tmp_path: Path, kit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    src = onnx_folder(tmp_path / "src")
    before = kit.snapshot(store.root)
    monkeypatch.setattr(folder, "MAX_FILES", 5)
    with pytest.raises(InvalidArgument, match="more than 5 files"):
        pull(store, str(src))
    monkeypatch.setattr(folder, "MAX_FILES", 100)
    monkeypatch.setattr(folder, "MAX_FILE_BYTES", 1 << 20)
    with pytest.raises(InvalidArgument, match=r"'model\.onnx\.data': it is larger than"):
        pull(store, str(src))
    assert kit.snapshot(store.root) == before


def test_a_failure_midway_removes_what_was_copied(
    store: Store, tmp_path: Path, kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = onnx_folder(tmp_path / "src")
    before = kit.snapshot(store.root)
    real = store.write_blob
    calls = 0

    def flaky(*args: Any, **kwargs: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise OSError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "write_blob", flaky)
    with pytest.raises(OSError, match="disk on fire"):
        pull(store, str(src))
    assert calls == 4
    assert kit.snapshot(store.root) == before


def test_a_file_swapped_after_the_scan_is_refused(
    store: Store, tmp_path: Path, kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = onnx_folder(tmp_path / "src")
    secret = tmp_path / "secret"
    secret.write_bytes(b"password")
    real_scan = folder.scan_folder

    def scan_then_swap(path: Path) -> Any:
        entries = real_scan(path)
        (src / "tokenizer.json").unlink()
        (src / "tokenizer.json").symlink_to(secret)
        return entries

    monkeypatch.setattr(folder, "scan_folder", scan_then_swap)
    before = kit.snapshot(store.root)
    with pytest.raises(Exception, match=r"tokenizer\.json"):
        pull(store, str(src))
    assert kit.snapshot(store.root) == before


def test_cancel_stops_an_import(store: Store, tmp_path: Path, kit: Any) -> None:
    src = onnx_folder(tmp_path / "src")
    before = kit.snapshot(store.root)
    cancel = threading.Event()

    def progress(p: PullProgress) -> None:
        if p.completed > 0:
            cancel.set()

    with pytest.raises(Cancelled):
        pull(store, str(src), progress=progress, cancel=cancel)
    assert kit.snapshot(store.root) == before
