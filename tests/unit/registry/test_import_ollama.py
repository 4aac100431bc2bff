"""`edged import --from ollama`: an Ollama store in its real layout, built from the real
SmolLM2 GGUF (and a tiny GGUF where the bytes do not matter), imported by hard link,
with its system prompt and parameters; hostile stores refused model by model."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from edged.common.errors import DigestMismatch, InvalidArgument, NotFound
from edged.models_registry import ModelRef, Store, blobs, importers
from edged.models_registry.importers import ollama
from edged.models_registry.pull import add_gguf
from edged.models_registry.settings import SettingsStore

from .import_layouts import (
    OllamaStore,
    file_hex,
    store_state,
)

PARAMS = {
    "temperature": 0.3,
    "top_k": 20,
    "stop": ["<|im_end|>", "<|endoftext|>"],
    "num_ctx": 4096,
    "mirostat": 2,  # edged has no use for it: named in a note
}
SYSTEM = "You are a terse assistant."
TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>{{ end }}"


def run(store: Store, root: Path, **kwargs: object) -> importers.ImportReport:
    return importers.import_from(store, "ollama", paths=[root], **kwargs)  # type: ignore[arg-type]


def by_model(report: importers.ImportReport) -> dict[str, importers.Outcome]:
    return {o.model: o for o in report.outcomes}


def test_imports_by_hard_link_with_system_prompt_and_params(
    store: Store,
    tmp_path: Path,
    real_gguf: Path,
) -> None:
    olla = OllamaStore(tmp_path / "ollama")
    olla.model(
        "smollm2",
        real_gguf,
        tag="135m",
        system=SYSTEM,
        params=PARAMS,
        template=TEMPLATE,
        extra=[olla.layer("license", b"Apache 2.0")],
    )
    blob = olla.root / "blobs" / f"sha256-{file_hex(real_gguf)}"
    mode = blob.stat().st_mode
    before = store_state_of(olla.root)

    report = run(store, olla.root)

    (outcome,) = report.outcomes
    assert report.ok
    assert (outcome.model, outcome.status, outcome.how) == ("smollm2:135m", "imported", "linked")
    assert outcome.source == "ollama:registry.ollama.ai/library/smollm2:135m"
    assert outcome.size == real_gguf.stat().st_size
    notes = " | ".join(outcome.notes)
    assert "chat template" in notes and "not used" in notes
    assert "mirostat" in notes
    m = store.get_manifest(ModelRef("smollm2", "135m"))
    assert m.source == outcome.source
    assert m.system_prompt == SYSTEM
    assert dict(m.sampling) == {"temperature": 0.3, "top_k": 20.0}
    assert m.stop == ("<|im_end|>", "<|endoftext|>")
    assert m.architecture == "llama" and m.quantization == "Q4_1" and m.has_chat_template
    assert SettingsStore(store.root).get("smollm2:135m").context_length == 4096
    # the same file, not a copy; the other program's file is as it was
    stored = store.blob_path(m.primary.digest)
    assert os.stat(stored).st_ino == os.stat(blob).st_ino
    assert blob.stat().st_mode == mode == stored.stat().st_mode
    assert store_state_of(olla.root) == before
    assert list(store.tmp_dir.iterdir()) == []

    # again: already there, nothing changes
    state = store_state(store)
    (again,) = run(store, olla.root).outcomes
    assert (again.model, again.status) == ("smollm2:135m", "already there")
    assert store_state(store) == state


def store_state_of(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = f"{oct(st.st_mode)} {st.st_ino} {st.st_mtime_ns}"
    return out


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (("registry.ollama.ai", "library", "smollm2", "latest"), "smollm2:latest"),
        (("registry.ollama.ai", "library", "qwen2.5", "0.5b"), "qwen2.5:0.5b"),
        (("registry.ollama.ai", "someone", "mymodel", "v1"), "someone/mymodel:v1"),
        (
            ("hf.co", "bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M"),
            "bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M",
        ),
        (("localhost:5000", "me", "m", "odd+tag"), "me/m:odd-tag"),
        (("registry.ollama.ai", "library", "m", "+++"), "m:latest"),
    ],
)
def test_names(where: tuple[str, str, str, str], expected: str) -> None:
    assert str(ollama.edged_ref(*where)) == expected


def test_other_namespaces_and_the_name_filter(store: Store, tmp_path: Path, tiny: Path) -> None:
    olla = OllamaStore(tmp_path / "ollama")
    olla.model("tiny", tiny)
    olla.model("tiny", tiny, tag="v2")
    olla.model("Llama-GGUF", tiny, tag="Q4_K_M", namespace="bartowski", registry="hf.co")
    listed = run(store, olla.root, dry_run=True)
    assert [(o.model, o.status) for o in listed.outcomes] == [
        ("bartowski/llama-gguf:Q4_K_M", "would import"),
        ("tiny:latest", "would import"),
        ("tiny:v2", "would import"),
    ]
    assert store.list_manifests() == []
    (one,) = run(store, olla.root, pattern="tiny:v2").outcomes
    assert (one.model, one.status) == ("tiny:v2", "imported")
    (hf,) = run(store, olla.root, pattern="hf.co/bartowski/Llama-GGUF").outcomes
    assert hf.status == "imported"
    with pytest.raises(NotFound, match="no model 'nothing'"):
        run(store, olla.root, pattern="nothing")
    # list after: what is there, what is not
    listed = run(store, olla.root, dry_run=True)
    assert [o.status for o in listed.outcomes] == ["already there", "would import", "already there"]


def test_a_taken_name_is_not_overwritten(store: Store, tmp_path: Path, tiny: Path) -> None:
    other = tmp_path / "other.gguf"
    other.write_bytes(tiny.read_bytes() + b"\0" * 32)
    add_gguf(store, ModelRef("tiny"), "test", "other.gguf", lambda: store.import_file(other))
    olla = OllamaStore(tmp_path / "ollama")
    olla.model("tiny", tiny, system="hi")
    state = store_state(store)

    (listed,) = run(store, olla.root, dry_run=True).outcomes
    assert listed.status == "refused" and "already names another model" in listed.reason
    report = run(store, olla.root)
    (refused,) = report.outcomes
    assert not report.ok
    assert refused.status == "refused" and "--name" in refused.reason
    assert store_state(store) == state

    (renamed,) = run(store, olla.root, name="tiny:ollama").outcomes
    assert (renamed.model, renamed.status) == ("tiny:ollama", "imported")
    assert store.get_manifest(ModelRef("tiny", "ollama")).system_prompt == "hi"
    assert store.get_manifest(ModelRef("tiny")).source == "test"
    with pytest.raises(InvalidArgument, match="exactly one model"):
        olla.model("tiny", tiny, tag="v2")
        run(store, olla.root, name="x")


def test_copy_when_no_link_can_be_made(
    store: Store, tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def no_reflink(src: int, dst: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    olla = OllamaStore(tmp_path / "ollama")
    olla.model("tiny", tiny)
    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(blobs, "reflink", no_reflink)
    source = olla.root / "blobs" / f"sha256-{file_hex(tiny)}"
    (outcome,) = run(store, olla.root).outcomes
    assert (outcome.status, outcome.how) == ("imported", "copied")
    stored = store.blob_path(store.get_manifest(ModelRef("tiny")).primary.digest)
    assert os.stat(stored).st_ino != os.stat(source).st_ino
    assert stored.stat().st_mode & 0o777 == 0o444  # edged's own copy is read-only
    assert source.stat().st_mode & 0o777 == 0o644
    assert list(store.tmp_dir.iterdir()) == []


def test_reflink_when_no_hard_link(
    store: Store, tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")  # another user's file

    def fake_reflink(src: int, dst: int) -> None:  # as FICLONE would: the same bytes
        os.write(dst, os.pread(src, 1 << 20, 0))

    olla = OllamaStore(tmp_path / "ollama")
    olla.model("tiny", tiny)
    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(blobs, "reflink", fake_reflink)
    (outcome,) = run(store, olla.root).outcomes
    assert (outcome.status, outcome.how) == ("imported", "reflinked")
    assert store.verify_blob(store.get_manifest(ModelRef("tiny")).primary.digest)


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no /dev/shm")
def test_copy_from_another_file_system(store: Store, tiny: Path) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        if os.stat(shm).st_dev == os.stat(store.root).st_dev:
            pytest.skip("/dev/shm is on the store's file system")
        olla = OllamaStore(Path(shm) / "ollama")
        olla.model("tiny", tiny, link=False)
        (outcome,) = run(store, olla.root).outcomes
    assert (outcome.status, outcome.how) == ("imported", "copied")


def test_bad_params_are_left_out_with_a_note(store: Store, tmp_path: Path, tiny: Path) -> None:
    olla = OllamaStore(tmp_path / "ollama")
    olla.model("tiny", tiny, params={"temperature": 500, "top_p": 0.5, "num_ctx": 10**9})
    (outcome,) = run(store, olla.root).outcomes
    assert outcome.status == "imported"
    (note,) = outcome.notes
    assert "temperature" in note and "num_ctx" in note and "ignored" in note
    assert dict(store.get_manifest(ModelRef("tiny")).sampling) == {"top_p": 0.5}
    assert SettingsStore(store.root).get("tiny:latest").context_length == 0


def test_projector_is_left_out_and_adapter_refused(
    store: Store, tmp_path: Path, tiny: Path
) -> None:
    olla = OllamaStore(tmp_path / "ollama")
    olla.model("vision", tiny, extra=[olla.layer("projector", b"clip weights")])
    olla.model("lora", tiny, extra=[olla.layer("adapter", b"lora weights")])
    out = by_model(run(store, olla.root))
    assert out["vision:latest"].status == "imported"
    assert any("projector" in n for n in out["vision:latest"].notes)
    assert out["lora:latest"].status == "refused"
    assert "LoRA adapter" in out["lora:latest"].reason
    assert [r for r, _ in store.list_manifests()] == [ModelRef("vision")]


# -- hostile stores -----------------------------------------------------------------------


def _missing_blob(o: OllamaStore, tiny: Path) -> None:
    layer = o.gguf(tiny)
    o.manifest("evil", "latest", [{**layer, "digest": "sha256:" + "0" * 64}])


def _larger_than_declared(o: OllamaStore, tiny: Path) -> None:
    layer = o.gguf(tiny)
    o.manifest("evil", "latest", [{**layer, "size": layer["size"] - 1}])


def _smaller_than_declared(o: OllamaStore, tiny: Path) -> None:
    layer = o.gguf(tiny)
    o.manifest("evil", "latest", [{**layer, "size": layer["size"] + 4096}])


def _bytes_do_not_match_name(o: OllamaStore, tiny: Path) -> None:
    other = tiny.with_name("changed.gguf")
    other.write_bytes(tiny.read_bytes()[:-1] + b"\x01")
    o.manifest("evil", "latest", [o.gguf(other, hexd="ab" * 32)])


def _not_a_gguf(o: OllamaStore, tiny: Path) -> None:
    layer = o.blob(b"this is not a GGUF file at all" * 10)
    o.manifest("evil", "latest", [{"mediaType": ollama.MODEL, **layer}])


def _blob_links_outside(o: OllamaStore, tiny: Path) -> None:
    hexd = file_hex(tiny)
    (o.root / "blobs" / f"sha256-{hexd}").symlink_to(tiny)  # a file outside the store
    layer = {"mediaType": ollama.MODEL, "digest": f"sha256:{hexd}", "size": tiny.stat().st_size}
    o.manifest("evil", "latest", [layer])


def _dotdot_digest(o: OllamaStore, tiny: Path) -> None:
    layer = o.gguf(tiny)
    o.manifest("evil", "latest", [{**layer, "digest": "sha256:../../../../etc/passwd"}])


def _not_json(o: OllamaStore, tiny: Path) -> None:
    o.manifest("evil", "latest", raw=b"{not json")


def _wrong_shape(o: OllamaStore, tiny: Path) -> None:
    o.manifest("evil", "latest", raw=json.dumps({"layers": {"a": 1}}).encode())


def _bad_layer(o: OllamaStore, tiny: Path) -> None:
    o.manifest("evil", "latest", [{**o.gguf(tiny), "size": "12"}])


def _huge_manifest(o: OllamaStore, tiny: Path) -> None:
    o.manifest("evil", "latest", raw=b" " * (2 << 20))


def _two_models(o: OllamaStore, tiny: Path) -> None:
    o.manifest("evil", "latest", [o.gguf(tiny), o.gguf(tiny)])


def _params_not_json(o: OllamaStore, tiny: Path) -> None:
    o.manifest("evil", "latest", [o.gguf(tiny), o.layer("params", b"[1, 2")])


def _params_not_object(o: OllamaStore, tiny: Path) -> None:
    o.manifest("evil", "latest", [o.gguf(tiny), o.layer("params", b"[1, 2]")])


def _system_tampered(o: OllamaStore, tiny: Path) -> None:
    layer = o.layer("system", b"be nice")
    (o.root / "blobs" / layer["digest"].replace(":", "-")).write_bytes(b"be evil")
    o.manifest("evil", "latest", [o.gguf(tiny), layer])


def _system_too_big(o: OllamaStore, tiny: Path) -> None:
    o.manifest("evil", "latest", [o.gguf(tiny), o.layer("system", b"x" * (2 << 20))])


def _odd_name(o: OllamaStore, tiny: Path) -> None:
    o.manifest("ev\nil", "latest", [o.gguf(tiny)])


def _manifest_symlink(o: OllamaStore, tiny: Path) -> None:
    target = tiny.with_name("elsewhere.json")
    target.write_text(json.dumps({"layers": [o.gguf(tiny)]}))
    path = o.root / "manifests" / "registry.ollama.ai" / "library" / "evil" / "latest"
    path.parent.mkdir(parents=True)
    path.symlink_to(target)


def _blob_is_a_fifo(o: OllamaStore, tiny: Path) -> None:
    hexd = "cd" * 32
    os.mkfifo(o.root / "blobs" / f"sha256-{hexd}")
    o.manifest(
        "evil", "latest", [{"mediaType": ollama.MODEL, "digest": f"sha256:{hexd}", "size": 0}]
    )


HOSTILE: dict[str, tuple[Callable[[OllamaStore, Path], None], str]] = {
    "missing blob": (_missing_blob, "is missing"),
    "larger than declared": (_larger_than_declared, "refused unhashed"),
    "smaller than declared": (_smaller_than_declared, "refused unhashed"),
    "bytes do not match the name": (_bytes_do_not_match_name, "does not match"),
    "not a GGUF": (_not_a_gguf, "GGUF"),
    "blob links outside": (_blob_links_outside, "points outside"),
    "dotdot digest": (_dotdot_digest, "bad digest"),
    "manifest not JSON": (_not_json, "not JSON"),
    "manifest wrong shape": (_wrong_shape, "not an Ollama manifest"),
    "layer wrong shape": (_bad_layer, "without a media type"),
    "manifest too big": (_huge_manifest, "larger than"),
    "two model layers": (_two_models, "2 model layers"),
    "params not JSON": (_params_not_json, "params layer is not JSON"),
    "params not an object": (_params_not_object, "not a JSON object"),
    "system layer tampered": (_system_tampered, "does not match its size and digest"),
    "system layer too big": (_system_too_big, "system layer is"),
    "odd name": (_odd_name, "odd characters"),
    "manifest symlink": (_manifest_symlink, "symbolic link"),
    "blob is a FIFO": (_blob_is_a_fifo, "not a regular file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_store_refuses_that_model_only(
    store: Store, tmp_path: Path, tiny: Path, case: str
) -> None:
    build, why = HOSTILE[case]
    olla = OllamaStore(tmp_path / "ollama")
    build(olla, tiny)
    state = store_state(store)
    listed = run(store, olla.root, dry_run=True)
    report = run(store, olla.root)
    (outcome,) = report.outcomes
    assert outcome.status == "refused" and not report.ok
    assert "ev" in outcome.reason and why in outcome.reason, outcome.reason
    assert [o.status for o in listed.outcomes] in (["refused"], ["would import"])
    assert store_state(store) == state  # nothing of it in the store

    # a good model in the same Ollama store still comes in
    good = tmp_path / "good.gguf"
    good.write_bytes(tiny.read_bytes() + b"\0" * 64)
    olla.model("good", good)
    out = by_model(run(store, olla.root))
    assert out["good:latest"].status == "imported"
    assert sum(o.status == "refused" for o in out.values()) == 1
    assert [r for r, _ in store.list_manifests()] == [ModelRef("good")]
    assert store.blob_digests() == [f"sha256:{file_hex(good)}"]
    assert list(store.tmp_dir.iterdir()) == []


def test_no_ollama_store(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no Ollama models"):
        run(store, tmp_path / "nothing")


def test_default_root(tmp_path: Path) -> None:
    assert importers.default_roots("ollama", {}, tmp_path) == [tmp_path / ".ollama" / "models"]
    env = {"OLLAMA_MODELS": str(tmp_path / "x")}
    assert importers.default_roots("ollama", env, tmp_path) == [tmp_path / "x"]


# -- the store's primitive: Store.adopt_file ----------------------------------------------


def test_adopt_file_checks_a_blob_the_store_already_has(store: Store, tiny: Path) -> None:
    digest = store.import_file(tiny)
    state = store_state(store)
    assert store.adopt_file(tiny, digest) == (digest, blobs.ADOPT_PRESENT)
    changed = tiny.with_name("changed.gguf")
    changed.write_bytes(tiny.read_bytes()[:-1] + b"\x07")
    with pytest.raises(DigestMismatch, match="does not match the expected digest"):
        store.adopt_file(changed, digest)  # the store has it, but these bytes are not it
    with pytest.raises(DigestMismatch, match="refused without hashing"):
        store.adopt_file(changed, None, size=1)
    with pytest.raises(InvalidArgument, match="symbolic link"):
        link = tiny.with_name("link.gguf")
        link.symlink_to(tiny)
        store.adopt_file(link)
    assert store_state(store) == state
    assert list(store.tmp_dir.iterdir()) == []
