"""Single GGUF files from a hub repo (hf://owner/repo[@revision]/path/file.gguf),
against the fake hub on 127.0.0.1 (fake_hub.py) serving the real SmolLM2 file."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.common.errors import (
    DigestMismatch,
    InvalidArgument,
    InvalidModelHeader,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from edged.models_registry import ModelRef, PullProgress, Store, pull
from edged.models_registry.http_source import HttpOptions
from edged.models_registry.hub_file import default_tag, parse_file_ref

from .fake_hub import SHA, FakeServer, serve

REPO = "acme/SmolLM2-GGUF"
FILE = "gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
V1 = "fedcba9876543210fedcba9876543210fedcba98"
TOKEN = "hf_secretTOKEN0123456789"
FAST = HttpOptions(
    connect_timeout=2.0,
    stall_timeout=2.0,
    retry_backoff=0.01,
    max_retries=2,
    parallel_min_size=256 << 10,
    connections=4,
    chunk_size=64 << 10,
)


@pytest.fixture(scope="module")
def smollm2_bytes(smollm2_pulled: tuple[Store, Any, Any, list[Any]]) -> bytes:
    store, _ref, manifest, _events = smollm2_pulled
    return store.blob_path(manifest.primary.digest).read_bytes()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeServer]:
    import huggingface_hub.constants

    with serve() as state:
        state.revisions["v1.0"] = V1
        monkeypatch.setenv("HF_ENDPOINT", state.base)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        # huggingface_hub computed the token file's path at import: nothing from the user's
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE"):
            monkeypatch.delenv(name, raising=False)
        yield state


def visible(store: Store) -> dict[str, list[str]]:
    """What a failed pull must not leave: blobs, manifests, temp files."""
    out = {}
    for d in (store.blobs_dir, store.manifests_dir, store.tmp_dir):
        out[d.name] = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    return out


def partials(store: Store) -> list[str]:
    return sorted(p.name for p in store.partial_dir.iterdir())


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- a whole pull ---------------------------------------------------------------------------


def test_pull_a_gguf_file_at_a_revision(
    store: Store, hub: FakeServer, smollm2_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gated repo, token from HF_TOKEN, resolve redirecting to a CDN on another host."""
    hub.repos[REPO] = {FILE: smollm2_bytes, "README.md": b"# readme"}
    hub.gated[REPO] = TOKEN
    hub.redirect_to_cdn = True
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    events: list[PullProgress] = []
    ref, manifest = pull(store, f"hf://{REPO}@v1.0/{FILE}", progress=events.append, options=FAST)
    assert ref == ModelRef("smollm2-135m-instruct.q4_1", "v1.0")
    assert manifest.primary.digest == digest(smollm2_bytes)
    assert manifest.primary.size == len(smollm2_bytes)
    assert manifest.primary.filename == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert manifest.source == f"hf://{REPO}@{V1}/{FILE}"  # pinned to the commit
    assert (manifest.architecture, manifest.quantization) == ("llama", "Q4_1")
    assert store.blob_path(manifest.primary.digest).read_bytes() == smollm2_bytes
    assert store.get_manifest(ref) == manifest
    assert partials(store) == []
    # The revision was resolved once, every download asked for that commit.
    resolves = [(line, h) for line, h in hub.seen if "/resolve/" in line]
    assert resolves and all(f"/resolve/{V1}/" in line for line, _ in resolves)
    ranged = [h["range"] for line, h in hub.seen if line.startswith("GET /cdn/") and "range" in h]
    assert len(ranged) >= 4  # parallel byte ranges, through the redirect
    # The token went to the hub's host, never to the CDN, never into progress text.
    assert all(h.get("authorization") == f"Bearer {TOKEN}" for _, h in resolves)
    cdn = [h for line, h in hub.seen if line.startswith(("GET /cdn/", "HEAD /cdn/"))]
    assert cdn and not any("authorization" in h for h in cdn)
    assert not any(TOKEN in e.status for e in events)
    assert [e.status for e in events][-2:] == ["reading the GGUF header", "writing manifest"]


def test_resume_after_an_interrupted_pull(
    store: Store, hub: FakeServer, smollm2_bytes: bytes
) -> None:
    hub.repos[REPO] = {FILE: smollm2_bytes}
    hub.cut_after, hub.cuts_left = 1 << 20, 1000  # every body stops after 1 MiB
    no_retry = HttpOptions(**{**FAST.__dict__, "max_retries": 0})
    with pytest.raises(Unavailable, match="run the pull again to resume"):
        pull(store, f"hf://{REPO}/{FILE}", options=no_retry)
    assert visible(store) == {"blobs": [], "manifests": [], "tmp": []}
    blob = "sha256-" + hashlib.sha256(smollm2_bytes).hexdigest()
    assert partials(store) == [f"{blob}.json", f"{blob}.part"]
    hub.cuts_left = 0
    hub.body_bytes = 0
    ref, manifest = pull(store, f"hf://{REPO}/{FILE}", options=FAST)
    assert ref == ModelRef("smollm2-135m-instruct.q4_1", "latest")
    assert manifest.primary.digest == digest(smollm2_bytes)
    # the second pull fetched only what was missing
    assert 0 < hub.body_bytes <= len(smollm2_bytes) - (1 << 20)
    assert partials(store) == []


def test_a_wrong_sha256_from_the_hub_is_rejected(
    store: Store, hub: FakeServer, smollm2_bytes: bytes
) -> None:
    hub.repos[REPO] = {FILE: smollm2_bytes}
    hub.claimed_sha256[f"{REPO}/{FILE}"] = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DigestMismatch, match="does not match the expected digest"):
        pull(store, f"hf://{REPO}/{FILE}", options=FAST)
    assert visible(store) == {"blobs": [], "manifests": [], "tmp": []}
    assert partials(store) == []


# -- refusals -------------------------------------------------------------------------------


def test_a_gated_repo_says_to_set_hf_token(
    store: Store, hub: FakeServer, kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.repos[REPO] = {FILE: kit.build_gguf()}
    hub.gated[REPO] = TOKEN
    before = kit.snapshot(store.root)
    with pytest.raises(Unauthenticated, match=r"HTTP 401.*set HF_TOKEN") as no_token:
        pull(store, f"hf://{REPO}/{FILE}", options=FAST)
    assert REPO in str(no_token.value)
    monkeypatch.setenv("HF_TOKEN", "hf_wrongWRONGwrong")
    with pytest.raises(PermissionDenied, match=r"HTTP 403.*HF_TOKEN") as wrong:
        pull(store, f"hf://{REPO}/{FILE}", options=FAST)
    assert "hf_wrong" not in str(wrong.value)
    assert kit.snapshot(store.root) == before


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (f"hf://{REPO}@nope/{FILE}", "has no revision 'nope'"),
        (f"hf://{REPO}/gguf/missing.gguf", "'gguf/missing.gguf' was not found in"),
        (f"hf://{REPO}@v1.0/other.gguf", "'other.gguf' was not found in acme/SmolLM2-GGUF@v1.0"),
        ("hf://acme/missing/x.gguf", "acme/missing was not found on the hub"),
        (f"hf://{REPO}/listed-not-served.gguf", "'listed-not-served.gguf' was not found"),
    ],
)
def test_unknown_revisions_and_paths_are_not_found(
    store: Store, hub: FakeServer, kit: Any, source: str, words: str
) -> None:
    hub.repos[REPO] = {FILE: kit.build_gguf(), "listed-not-served.gguf": None}
    before = kit.snapshot(store.root)
    with pytest.raises(NotFound) as info:
        pull(store, source, options=FAST)
    assert words in str(info.value)
    assert kit.snapshot(store.root) == before
    assert not any("/resolve/" in r for r in hub.requests)  # refused before any download


def test_the_header_is_checked_before_the_file_is_stored(
    store: Store, hub: FakeServer, kit: Any
) -> None:
    bad = b"GGUF" + bytes(range(256)) * 4
    hub.repos[REPO] = {"bad.gguf": bad}
    with pytest.raises(InvalidModelHeader):
        pull(store, f"hf://{REPO}/bad.gguf", options=FAST)
    assert visible(store) == {"blobs": [], "manifests": [], "tmp": []}
    assert partials(store) == []


def test_a_file_kept_in_git_is_checked_against_its_blob_id(
    store: Store, hub: FakeServer, kit: Any
) -> None:
    """No LFS, so no sha256 on the hub: the git blob id (sha1) vouches for the bytes."""
    data = kit.build_gguf()
    hub.repos[REPO] = {"tiny.gguf": data, "lying.gguf": data}
    hub.not_lfs |= {f"{REPO}/tiny.gguf", f"{REPO}/lying.gguf"}
    hub.claimed_git_sha1[f"{REPO}/lying.gguf"] = "0" * 40
    ref, manifest = pull(store, f"hf://{REPO}/tiny.gguf", name="tiny")
    assert ref == ModelRef("tiny", "latest")
    assert manifest.primary.digest == digest(data)
    other = Store(store.root.parent / "other")
    with pytest.raises(DigestMismatch, match="git blob id"):
        pull(other, f"hf://{REPO}/lying.gguf")
    assert visible(other) == {"blobs": [], "manifests": [], "tmp": []}
    assert partials(other) == []


def test_a_digest_that_disagrees_with_the_hub_is_refused_before_downloading(
    store: Store, hub: FakeServer, kit: Any
) -> None:
    hub.repos[REPO] = {FILE: kit.build_gguf()}
    with pytest.raises(InvalidArgument, match="does not match the hub's sha256"):
        pull(store, f"hf://{REPO}/{FILE}", digest="sha256:" + "0" * 64)
    assert not any("/resolve/" in r for r in hub.requests)


# -- references -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "repo", "revision", "path", "tag"),
    [
        ("hf://a/b/x.gguf", "a/b", None, "x.gguf", None),
        ("hf://a/b@main/d/x.GGUF", "a/b", "main", "d/x.GGUF", "main"),
        ("hf://a/b@refs/pr/3/x.gguf", "a/b", "refs/pr/3", "x.gguf", "refs-pr-3"),
        ("hf://a/b@feature%2Fq4/x.gguf", "a/b", "feature/q4", "x.gguf", "feature-q4"),
        (f"hf://a/b@{SHA}/x.gguf", "a/b", SHA, "x.gguf", SHA[:12]),
    ],
)
def test_file_references(
    source: str, repo: str, revision: str | None, path: str, tag: str | None
) -> None:
    ref = parse_file_ref(source)
    assert (ref.repo.repo_id, ref.repo.revision, ref.path) == (repo, revision, path)
    assert default_tag(ref) == tag


@pytest.mark.parametrize(
    "source",
    [
        "hf://a/b/../x.gguf",
        "hf://a/b//x.gguf",
        "hf://a/b/.hidden.gguf",
        "hf://a/b@../x.gguf",
        "hf://a/x.gguf",
        "hf://a/b@/x.gguf",
        "hf://a/b/c\\x.gguf",
    ],
)
def test_bad_file_references(store: Store, source: str) -> None:
    with pytest.raises(InvalidArgument):
        pull(store, source)


def test_without_the_scheme_a_repo_file_is_a_relative_path(store: Store) -> None:
    with pytest.raises(InvalidArgument, match=r"write hf://owner/repo/path/file\.gguf"):
        pull(store, "acme/repo/model.gguf")


# -- through the daemon ---------------------------------------------------------------------


def test_the_daemon_pulls_a_hub_file_and_never_shows_the_token(
    tmp_path: Path, hub: FakeServer, kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import grpc

    from edged.v1 import edged_pb2 as pb
    from harness.daemon import start_daemon

    data = kit.build_gguf()
    hub.repos[REPO] = {FILE: data}
    other = kit.build_gguf([*kit.default_kv(), ("general.other", kit.UINT32, 7)])
    hub.repos["acme/other"] = {"x.gguf": other}  # not in the store yet
    hub.gated[REPO] = TOKEN
    hub.gated["acme/other"] = "hf_anotherTOKENforOTHER"
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    d = start_daemon(tmp_path / "d")
    try:
        replies = list(d.models.Pull(pb.PullRequest(source=f"hf://{REPO}@v1.0/{FILE}"), timeout=60))
        last = replies[-1]
        assert last.model.name == "smollm2-135m-instruct.q4_1"
        assert last.model.tag == "v1.0"
        with pytest.raises(grpc.RpcError) as info:
            for _ in d.models.Pull(pb.PullRequest(source="hf://acme/other/x.gguf"), timeout=60):
                pass
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "HF_TOKEN" in (info.value.details() or "")
        assert TOKEN not in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as missing:
            for _ in d.models.Pull(pb.PullRequest(source=f"hf://{REPO}@nope/{FILE}"), timeout=60):
                pass
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        d.stop()
    logs = d.log() + (tmp_path / "d" / "daemon.out").read_text()
    assert TOKEN not in logs
