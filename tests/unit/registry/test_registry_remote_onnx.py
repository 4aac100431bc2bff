"""Pulling ONNX Runtime GenAI folders from a hub repo (hf://owner/repo) and from an
http(s) URL base, against fake servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.common.errors import (
    EdgedError,
    FailedPrecondition,
    InvalidArgument,
    InvalidModelFile,
    NotFound,
)
from edged.common.model_facts import FORMAT_ONNX
from edged.models_registry import ModelRef, Store, pull

from .fake_hub import FakeServer, serve

SHA = "0123456789abcdef0123456789abcdef01234567"
GENAI_CONFIG = {
    "model": {
        "type": "llama",
        "context_length": 2048,
        "decoder": {"filename": "model.onnx", "session_options": {"provider_options": []}},
    },
    "search": {"max_length": 2048},
}


def onnx_files(config: dict[str, Any] | None = None) -> dict[str, bytes]:
    return {
        "genai_config.json": json.dumps(config or GENAI_CONFIG).encode(),
        "model.onnx": b"graph" * 10,
        "model.onnx.data": os.urandom(300_000),
        "tokenizer.json": b'{"model": {}}',
        "tokenizer_config.json": json.dumps({"chat_template": "{{ x }}"}).encode(),
        "special_tokens_map.json": b"{}",
    }


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- a fake hub and a plain file server (fake_hub.py) --------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeServer]:
    with serve() as state:
        monkeypatch.setenv("HF_ENDPOINT", state.base)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # nothing from the user's hub
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield state


def _check_pulled(store: Store, ref: ModelRef, manifest: Any, served: dict[str, bytes]) -> None:
    assert ref == ModelRef("tiny-onnx", "latest")
    (variant,) = manifest.variants
    assert variant.format == FORMAT_ONNX
    by_path = {f.path: f for f in variant.files}
    assert set(by_path) == set(served)
    for rel, data in served.items():
        assert by_path[rel].digest == sha256(data)
        assert by_path[rel].size == len(data)
        assert store.blob_path(by_path[rel].digest).read_bytes() == data
    assert store.get_manifest(ref) == manifest
    assert manifest.architecture == "llama"
    assert manifest.context_length == 2048
    assert manifest.has_chat_template
    assert list(store.tmp_dir.iterdir()) == []  # the temporary folder is gone


# -- the hub source -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source", ["hf://acme/Tiny-ONNX", "acme/Tiny-ONNX", "hf://acme/Tiny-ONNX@main"]
)
def test_pull_from_the_hub(store: Store, fake: FakeServer, source: str) -> None:
    files = onnx_files()
    fake.repos["acme/Tiny-ONNX"] = {
        **files,
        "README.md": b"# readme",  # not part of an ONNX GenAI folder: not fetched
        "onnx/other.onnx": b"x",
        ".gitattributes": b"*.onnx lfs",
    }
    ref, manifest = pull(store, source)
    _check_pulled(store, ref, manifest, files)
    assert manifest.source.startswith("hf://acme/Tiny-ONNX")
    fetched = {r.rsplit("/", 1)[1] for r in fake.requests if "/resolve/" in r}
    assert fetched == set(files)


def test_hub_name_override(store: Store, fake: FakeServer) -> None:
    fake.repos["acme/tiny-onnx"] = dict(onnx_files())
    ref, _ = pull(store, "hf://acme/tiny-onnx", name="mine:v1")
    assert ref == ModelRef("mine", "v1")


def test_a_catalog_name_is_not_a_hub_repo(store: Store, fake: FakeServer) -> None:
    with pytest.raises(NotFound):
        pull(store, "nosuchowner/nosuchmodel")  # not in the catalog: the hub says 404
    assert any(r.startswith("GET /api/models/nosuchowner/nosuchmodel") for r in fake.requests)


def _snapshot(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[str(Path(dirpath, d).relative_to(root))] = "dir"
        for f in filenames:
            p = Path(dirpath, f)
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _no_genai_config(repo: dict[str, bytes | None]) -> None:
    del repo["genai_config.json"]


def _hostile_decoder(repo: dict[str, bytes | None]) -> None:
    config = json.loads(GENAI_CONFIG_BYTES)
    config["model"]["decoder"]["filename"] = "../x.onnx"
    repo["genai_config.json"] = json.dumps(config).encode()
    repo["../x.onnx"] = b"evil"


def _hostile_nested(repo: dict[str, bytes | None]) -> None:
    config = json.loads(GENAI_CONFIG_BYTES)
    config["model"]["decoder"]["filename"] = "a/../../b"
    repo["genai_config.json"] = json.dumps(config).encode()
    repo["a/../../b"] = b"evil"


def _decoder_not_listed(repo: dict[str, bytes | None]) -> None:
    del repo["model.onnx"]


def _decoder_not_served(repo: dict[str, bytes | None]) -> None:
    repo["model.onnx"] = None


def _config_not_json(repo: dict[str, bytes | None]) -> None:
    repo["genai_config.json"] = b"{nope"


GENAI_CONFIG_BYTES = json.dumps(GENAI_CONFIG)


@pytest.mark.parametrize(
    ("damage", "error", "words"),
    [
        (_no_genai_config, FailedPrecondition, "acme/tiny has no genai_config.json"),
        (_hostile_decoder, InvalidArgument, "'../x.onnx'"),
        (_hostile_nested, InvalidArgument, "'a/../../b'"),
        (_decoder_not_listed, InvalidModelFile, "which is not in the repo"),
        (_decoder_not_served, NotFound, "'model.onnx' of acme/tiny"),
        (_config_not_json, InvalidModelFile, "not valid JSON"),
    ],
)
def test_bad_hub_repos_leave_the_store_as_it_was(
    store: Store, fake: FakeServer, damage: Any, error: type[EdgedError], words: str
) -> None:
    repo: dict[str, bytes | None] = dict(onnx_files())
    damage(repo)
    fake.repos["acme/tiny"] = repo
    before = _snapshot(store.root)
    with pytest.raises(error, match=None) as info:
        pull(store, "hf://acme/tiny")
    assert words in str(info.value)
    assert _snapshot(store.root) == before


def test_missing_hub_repo(store: Store, fake: FakeServer) -> None:
    before = _snapshot(store.root)
    with pytest.raises(NotFound, match="acme/missing"):
        pull(store, "hf://acme/missing")
    assert _snapshot(store.root) == before


def test_unreachable_hub(store: Store, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from edged.common.errors import Unavailable

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    before = _snapshot(store.root)
    with pytest.raises(Unavailable, match="acme/tiny"):
        pull(store, "hf://acme/tiny")
    assert _snapshot(store.root) == before


@pytest.mark.parametrize("source", ["hf://acme", "hf://a/b/c", "hf://acme/../x", "hf://acme/x@.."])
def test_bad_hub_references(store: Store, source: str) -> None:
    with pytest.raises(InvalidArgument):
        pull(store, source)


# -- the URL-base source --------------------------------------------------------------------


def test_pull_from_a_url_base(store: Store, fake: FakeServer) -> None:
    files = onnx_files()
    for rel, data in files.items():
        fake.files[f"/models/tiny-onnx/{rel}"] = data
    ref, manifest = pull(store, f"{fake.base}/models/tiny-onnx/")
    _check_pulled(store, ref, manifest, files)
    assert manifest.source == f"{fake.base}/models/tiny-onnx/"
    # optional files the server does not have were asked for and skipped
    assert "GET /models/tiny-onnx/added_tokens.json" in fake.requests


def test_url_base_without_data_file(store: Store, fake: FakeServer) -> None:
    files = onnx_files()
    del files["model.onnx.data"]
    for rel, data in files.items():
        fake.files[f"/m/tiny-onnx/{rel}"] = data
    ref, manifest = pull(store, f"{fake.base}/m/tiny-onnx/")
    _check_pulled(store, ref, manifest, files)


def _url_config(decoder: str) -> bytes:
    config = json.loads(GENAI_CONFIG_BYTES)
    config["model"]["decoder"]["filename"] = decoder
    return json.dumps(config).encode()


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"genai_config.json": None}, NotFound, "has no genai_config.json"),
        ({"model.onnx": None}, NotFound, "has no 'model.onnx'"),
        ({"genai_config.json": _url_config("../x.onnx")}, InvalidArgument, "'../x.onnx'"),
        ({"genai_config.json": _url_config("a/../../b")}, InvalidArgument, "'a/../../b'"),
        ({"genai_config.json": _url_config("/etc/passwd")}, InvalidArgument, "'/etc/passwd'"),
        ({"genai_config.json": b"[1]"}, InvalidModelFile, "no 'model' section"),
    ],
)
def test_bad_url_bases_leave_the_store_as_it_was(
    store: Store,
    fake: FakeServer,
    change: dict[str, bytes | None],
    error: type[EdgedError],
    words: str,
) -> None:
    files: dict[str, bytes | None] = {**onnx_files(), **change}
    for rel, data in files.items():
        if data is not None:
            fake.files[f"/m/tiny/{rel}"] = data
    fake.files["/x.onnx"] = b"evil"
    fake.files["/b"] = b"evil"
    before = _snapshot(store.root)
    with pytest.raises(error) as info:
        pull(store, f"{fake.base}/m/tiny/")
    assert words in str(info.value)
    assert _snapshot(store.root) == before
    assert "GET /x.onnx" not in fake.requests and "GET /b" not in fake.requests


def test_a_digest_is_refused_for_folders(store: Store) -> None:
    with pytest.raises(InvalidArgument, match="digest"):
        pull(store, "hf://acme/tiny", digest="sha256:" + "0" * 64)
    with pytest.raises(InvalidArgument, match="digest"):
        pull(store, "http://127.0.0.1:9/m/", digest="sha256:" + "0" * 64)
