"""Store.copy: a model under a second name is a second manifest naming the same
blobs (Ollama's ``cp``); nothing is copied, nothing is lost."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edged.common.errors import AlreadyExists, FailedPrecondition, ModelNotFound
from edged.models_registry import ModelRef, Store, parse_model_ref
from edged.models_registry.manifest import Manifest
from tests.unit.registry.test_registry_store import add_model, leftovers


def test_copy_names_the_same_blobs(store: Store) -> None:
    original = add_model(store, "a:one", b"weights")
    blobs = sorted(p.name for p in store.blobs_dir.iterdir())
    written, replaced = store.copy(ModelRef("a", "one"), parse_model_ref("team/b"))
    assert replaced is None
    assert (written.name, written.tag) == ("team/b", "latest")
    assert written.variants == original.variants
    assert written.context_length == original.context_length
    assert sorted(p.name for p in store.blobs_dir.iterdir()) == blobs  # no file copied
    _, got = store.resolve("team/b")
    assert got.digests == original.digests
    on_disk = json.loads(store.manifest_path(ModelRef("team/b")).read_text())
    assert (on_disk["name"], on_disk["tag"]) == ("team/b", "latest")
    assert leftovers(store) == []
    # the copy outlives the original, and its blobs with it
    store.delete(ModelRef("a", "one"))
    assert store.has_blob(original.primary.digest)
    store.delete(ModelRef("team/b"))
    assert not store.has_blob(original.primary.digest)


def test_copy_onto_itself_or_the_same_model_is_no_error(store: Store) -> None:
    add_model(store, "a:one", b"weights")
    m, replaced = store.copy(ModelRef("a", "one"), ModelRef("a", "one"))
    assert replaced is None and m.ref == ModelRef("a", "one")
    store.copy(ModelRef("a", "one"), ModelRef("a", "two"))
    again, replaced = store.copy(ModelRef("a", "one"), ModelRef("a", "two"))
    assert replaced is None and again.ref == ModelRef("a", "two")


def test_copy_refuses_to_overwrite_a_different_model_unless_asked(store: Store) -> None:
    add_model(store, "a:one", b"weights")
    other = add_model(store, "b", b"other weights")
    before = store.manifest_path(ModelRef("b")).read_bytes()
    with pytest.raises(AlreadyExists, match="already exists"):
        store.copy(ModelRef("a", "one"), ModelRef("b"))
    assert store.manifest_path(ModelRef("b")).read_bytes() == before
    written, replaced = store.copy(ModelRef("a", "one"), ModelRef("b"), replace=True)
    assert replaced is not None and replaced.digests == other.digests
    assert store.resolve("b")[1].digests == written.digests
    assert not store.has_blob(other.primary.digest)  # freed: nothing uses it now


def test_copy_of_a_missing_model_writes_nothing(store: Store) -> None:
    with pytest.raises(ModelNotFound):
        store.copy(ModelRef("nosuch"), ModelRef("b"))
    assert not store.manifest_path(ModelRef("b")).exists()


def test_copy_never_names_a_missing_blob(store: Store) -> None:
    m = add_model(store, "a:one", b"weights")
    store.blob_path(m.primary.digest).unlink()  # damaged store
    with pytest.raises(FailedPrecondition):
        store.copy(ModelRef("a", "one"), ModelRef("b"))
    assert not store.manifest_path(ModelRef("b")).exists()


def test_copy_with_new_defaults(store: Store) -> None:
    """edged create: the copy gets its own defaults; the same files under that name
    (even the source itself) take new defaults; a different model does not."""
    original = add_model(store, "a:one", b"weights")

    def pirate(m: Manifest) -> Manifest:
        return dataclasses.replace(
            m, system_prompt="Arr.", sampling=(("temperature", 0.0),), stop=("5",)
        )

    written, replaced = store.copy(ModelRef("a", "one"), ModelRef("pirate"), edit=pirate)
    assert replaced is None and written.digests == original.digests
    _, got = store.resolve("pirate")
    assert (got.system_prompt, got.sampling, got.stop) == ("Arr.", (("temperature", 0.0),), ("5",))
    _, source = store.resolve("a:one")
    assert (source.system_prompt, source.stop) == (original.system_prompt, ())
    # again, with other defaults: rewritten (same files), then in place on the source
    store.copy(ModelRef("a", "one"), ModelRef("pirate"), edit=lambda m: m)
    assert store.resolve("pirate")[1].stop == ()
    store.copy(ModelRef("a", "one"), ModelRef("a", "one"), edit=pirate)
    assert store.resolve("a:one")[1].stop == ("5",)
    add_model(store, "b", b"other weights")
    with pytest.raises(AlreadyExists):
        store.copy(ModelRef("a", "one"), ModelRef("b"), edit=pirate)
    assert leftovers(store) == []
