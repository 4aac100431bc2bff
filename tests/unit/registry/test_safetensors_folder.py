"""Pulling Hugging Face safetensors folders: local folders and hub repos (the fake hub),
pickled weights refused or dropped, hostile safetensors headers refused."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.common.errors import InvalidArgument, InvalidModelFile
from edged.common.model_facts import FORMAT_SAFETENSORS
from edged.models_registry import ModelRef, Store, pull
from edged.models_registry.safetensors_folder import check_header

from .fake_hub import FakeServer, serve

CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "hidden_size": 4,
    "max_position_embeddings": 512,
}


def safetensors(tensors: dict[str, tuple[str, list[int]]], header: Any = None) -> bytes:
    """A safetensors file of zeros; ``header`` replaces the computed header."""
    sizes = {"F32": 4, "F16": 2, "I64": 8}
    meta: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        meta[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(meta if header is None else header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


WEIGHTS = safetensors({"embeddings.weight": ("F32", [8, 4]), "pooler.bias": ("F16", [4])})


def hf_files(**extra: bytes) -> dict[str, bytes]:
    files = {
        "config.json": json.dumps(CONFIG).encode(),
        "model.safetensors": WEIGHTS,
        "tokenizer.json": b'{"model": {}}',
        "vocab.txt": b"[PAD]\n[UNK]\nhello\n",
        "modules.json": b"[]",
        "sentence_bert_config.json": b'{"max_seq_length": 256}',
        "1_Pooling/config.json": b'{"word_embedding_dimension": 4}',
    }
    files.update(extra)
    return files


def write(folder: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_pull_a_local_safetensors_folder(store: Store, tmp_path: Path) -> None:
    served = hf_files()
    src = write(tmp_path / "MiniThing", served)
    ref, m = pull(store, str(src))
    assert ref == ModelRef("minithing", "latest")
    (v,) = m.variants
    assert v.name == "safetensors" and v.format == FORMAT_SAFETENSORS
    assert v.main.path == "config.json"
    assert {f.path: f.digest for f in v.files} == {k: sha256(d) for k, d in served.items()}
    assert m.architecture == "bert" and m.parameters == 36
    assert m.context_length == 256  # sentence_bert_config's max_seq_length
    assert m.source == "folder:MiniThing" and store.get_manifest(ref) == m


def test_a_pickle_only_folder_is_refused(store: Store, tmp_path: Path, kit: Any) -> None:
    files = hf_files()
    del files["model.safetensors"]
    src = write(tmp_path / "pickled", {**files, "pytorch_model.bin": b"\x80\x04evil"})
    before = kit.snapshot(store.root)
    with pytest.raises(InvalidArgument, match=r"only pickled weights \(pytorch_model\.bin\)"):
        pull(store, str(src))
    assert kit.snapshot(store.root) == before


def test_a_mixed_folder_keeps_only_the_safetensors(store: Store, tmp_path: Path) -> None:
    pickles = {
        "pytorch_model.bin": b"\x80\x04evil-bin",
        "sub/weights.pt": b"\x80\x04evil-pt",
        "training_args.pkl": b"\x80\x04evil-pkl",
    }
    src = write(tmp_path / "mixed", {**hf_files(), **pickles})
    _ref, m = pull(store, str(src))
    paths = {f.path for f in m.variants[0].files}
    assert paths == set(hf_files())
    stored = {p.read_bytes() for p in store.blobs_dir.iterdir()}
    assert not any(data in stored for data in pickles.values())


def test_a_folder_without_config_is_only_a_directory(store: Store, tmp_path: Path) -> None:
    files = hf_files()
    del files["config.json"]
    src = write(tmp_path / "noconfig", files)
    with pytest.raises(InvalidArgument, match="is a directory"):
        pull(store, str(src))


HOSTILE = {
    "too short": b"\x01\x02",
    "header longer than the file": struct.pack("<Q", 1 << 40) + b"{}",
    "header past the end": struct.pack("<Q", 100) + b"{}",
    "not JSON": struct.pack("<Q", 4) + b"{{{{",
    "not an object": struct.pack("<Q", 2) + b"[]",
    "offsets outside": safetensors(
        {}, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 30]}}
    ),
    "size does not match shape": safetensors(
        {"w": ("F32", [4])}, {"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 16]}}
    ),
    "unknown dtype": safetensors(
        {"w": ("F32", [4])}, {"w": {"dtype": "PICKLE", "shape": [4], "data_offsets": [0, 16]}}
    ),
    "negative shape": safetensors(
        {"w": ("F32", [4])}, {"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}
    ),
    "not a description": safetensors({"w": ("F32", [4])}, {"w": [1, 2]}),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_safetensors_headers_are_refused(
    store: Store, tmp_path: Path, kit: Any, case: str
) -> None:
    src = write(tmp_path / "hostile", hf_files(**{"model.safetensors": HOSTILE[case]}))
    before = kit.snapshot(store.root)
    with pytest.raises(InvalidModelFile, match=r"model\.safetensors"):
        pull(store, str(src))
    assert kit.snapshot(store.root) == before


def test_check_header_counts_elements(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(WEIGHTS)
    assert check_header(path, "w") == 36


def test_an_oversized_config_is_refused(store: Store, tmp_path: Path, kit: Any) -> None:
    big = json.dumps({**CONFIG, "pad": "x" * (1 << 20)}).encode()
    src = write(tmp_path / "bigconfig", hf_files(**{"config.json": big}))
    before = kit.snapshot(store.root)
    with pytest.raises(InvalidModelFile, match=r"config\.json is larger"):
        pull(store, str(src))
    assert kit.snapshot(store.root) == before


# -- from a hub repo --------------------------------------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeServer]:
    with serve() as state:
        monkeypatch.setenv("HF_ENDPOINT", state.base)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield state


def test_pull_a_safetensors_repo_from_the_hub(store: Store, fake: FakeServer) -> None:
    served = hf_files()
    fake.repos["acme/mini-embed"] = {
        **served,
        "pytorch_model.bin": b"\x80\x04evil",
        "onnx/model.onnx": b"graph",
        ".gitattributes": b"*.bin filter=lfs",
        "README.md": b"# mini",
    }
    ref, m = pull(store, "hf://acme/mini-embed")
    assert ref == ModelRef("mini-embed", "latest")
    (v,) = m.variants
    assert v.format == FORMAT_SAFETENSORS
    assert {f.path for f in v.files} == {*served, "README.md"}
    assert m.source == "hf://acme/mini-embed" and m.context_length == 256
    fetched = [r for r in fake.requests if "/resolve/" in r]
    assert not any(r.endswith(("pytorch_model.bin", "model.onnx")) for r in fetched)


def test_a_pickle_only_hub_repo_is_refused(store: Store, fake: FakeServer, kit: Any) -> None:
    files = hf_files()
    del files["model.safetensors"]
    fake.repos["acme/pickled"] = {**files, "pytorch_model.bin": b"\x80\x04evil"}
    before = kit.snapshot(store.root)
    with pytest.raises(InvalidArgument, match="only pickled weights"):
        pull(store, "hf://acme/pickled")
    assert kit.snapshot(store.root) == before
    assert not any("/resolve/" in r for r in fake.requests)
