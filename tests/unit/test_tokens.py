"""Scoped tokens: the store (daemon/tokens.py) and the TCP listener's check (daemon/auth.py)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import grpc
import pytest

from edged.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from edged.daemon.auth import BearerTokenInterceptor, presented_token
from edged.daemon.tokens import TokenInfo, TokenStore, scopes_for


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "config" / "tokens.json"


def test_create_list_check_revoke(path: Path) -> None:
    store = TokenStore(path)
    assert store.list() == []
    assert store.check("edt_nothing") is None
    secret = store.create("ci", ["read", "generate"])
    assert secret.startswith("edt_") and len(secret) >= 40
    other = store.create("admin-1", "admin")
    assert other != secret
    (admin, ci) = store.list()  # sorted by name
    assert (admin.name, admin.scopes) == ("admin-1", frozenset({"admin"}))
    assert (ci.name, ci.scopes) == ("ci", frozenset({"generate", "read"}))
    assert ci.created_unix_ms > 1_600_000_000_000
    assert store.check(secret) == ci
    assert store.check(other) == admin
    assert store.check(secret + "x") is None
    assert store.check(secret[:-1]) is None
    assert store.check("") is None
    assert store.revoke("ci") is True
    assert store.revoke("ci") is False
    assert store.check(secret) is None
    assert store.check(other) == admin
    assert [t.name for t in store.list()] == ["admin-1"]


def test_the_file_is_private_and_holds_no_secret(path: Path) -> None:
    secret = TokenStore(path).create("laptop", ["generate"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    text = path.read_text()
    assert secret not in text
    assert secret.removeprefix("edt_") not in text
    doc = json.loads(text)
    assert [t["name"] for t in doc["tokens"]] == ["laptop"]
    assert sorted(os.listdir(path.parent)) == ["tokens.json"]  # no temp or lock file left


def test_a_loose_directory_is_tightened(path: Path) -> None:
    path.parent.mkdir(mode=0o755)
    os.chmod(path.parent, 0o755)
    TokenStore(path).create("a", ["read"])
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_another_process_changes_are_seen_without_a_restart(path: Path) -> None:
    daemon = TokenStore(path)  # as the running daemon holds it
    cli = TokenStore(path)  # as `edged token` opens it
    assert daemon.check("edt_x") is None  # cached: no file yet
    first = cli.create("first", ["read"])
    info = daemon.check(first)
    assert info is not None and info.name == "first"
    second = cli.create("second", ["models"])
    assert daemon.check(second) is not None
    assert cli.revoke("first")
    assert daemon.check(first) is None
    assert daemon.check(second) is not None
    path.unlink()
    assert daemon.check(second) is None


@pytest.mark.parametrize(
    "content",
    [
        b"not json{",
        b"[]",
        b'{"version": 1}',
        b'{"version": 99, "tokens": []}',
        b'{"version": 1, "tokens": [{"name": "a"}]}',
        b'{"version": 1, "tokens": [{"name": "A", "scopes": ["read"], '
        b'"created_unix_ms": 1, "sha256": "' + b"0" * 64 + b'"}]}',
        b'{"version": 1, "tokens": [{"name": "a", "scopes": ["root"], '
        b'"created_unix_ms": 1, "sha256": "' + b"0" * 64 + b'"}]}',
        b"\xff\xfe",
    ],
)
def test_a_damaged_file_means_no_tokens_and_refuses_changes(
    path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store = TokenStore(path)
    secret = store.create("good", ["read"])
    assert store.check(secret) is not None
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="edged.tokens"):
        assert store.check(secret) is None
        assert store.check(secret) is None
    assert len([r for r in caplog.records if "ignoring the token file" in r.message]) == 1
    with pytest.raises(FailedPrecondition, match="move it aside"):
        store.create("new", ["read"])
    with pytest.raises(FailedPrecondition, match="move it aside"):
        store.revoke("good")
    with pytest.raises(FailedPrecondition, match="damaged"):
        store.list()
    assert path.read_bytes() == content  # left as it was
    path.rename(path.with_name("tokens.json.bad"))
    again = store.create("good", ["read"])
    assert store.check(again) is not None


def test_a_file_others_may_write_is_ignored(path: Path) -> None:
    store = TokenStore(path)
    secret = store.create("a", ["read"])
    os.chmod(path, 0o666)
    assert store.check(secret) is None
    with pytest.raises(FailedPrecondition, match="others may write"):
        store.create("b", ["read"])
    os.chmod(path, 0o600)
    assert store.check(secret) is not None


def test_an_unreadable_location_never_raises_from_check(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    store = TokenStore(tmp_path / "file" / "tokens.json")  # parent is not a directory
    assert store.check("edt_" + "a" * 43) is None
    with pytest.raises(FailedPrecondition, match="cannot be read"):
        store.list()
    with pytest.raises(FailedPrecondition, match="token file"):
        store.create("a", ["read"])


@pytest.mark.parametrize(
    "name", ["", "Upper", "-lead", "_lead", "a b", "a/b", "x" * 65, "dot.ted", "ok\n"]
)
def test_bad_names_are_refused(path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument, match="token name"):
        TokenStore(path).create(name, ["read"])
    assert not path.exists()


@pytest.mark.parametrize("scopes", [[], [""], ["none"], ["root"], ["read", "write"], "r,e"])
def test_bad_scopes_are_refused(path: Path, scopes: list[str] | str) -> None:
    with pytest.raises(InvalidArgument, match="scope"):
        TokenStore(path).create("a", scopes)
    assert not path.exists()


def test_names_are_unique_and_well_formed_ones_pass(path: Path) -> None:
    store = TokenStore(path)
    store.create("0", ["read"])
    store.create("a" + "-_9" * 21, ["generate,read", "models"])
    with pytest.raises(AlreadyExists, match="already exists"):
        store.create("0", ["admin"])
    assert [t.name for t in store.list()] == ["0", "a" + "-_9" * 21]
    assert store.list()[1].scopes == frozenset({"generate", "read", "models"})


@pytest.mark.parametrize(
    ("method", "scope"),
    [
        ("/edged.v1.Inference/Generate", "generate"),
        ("/edged.v1.Sessions/Create", "generate"),
        ("/edged.v1.Sessions/Send", "generate"),
        ("/edged.v1.Sessions/Delete", "generate"),
        ("/edged.v1.Models/List", "read"),
        ("/edged.v1.Models/Show", "read"),
        ("/edged.v1.Models/ListLoaded", "read"),
        ("/edged.v1.Models/Tokenize", "read"),
        ("/edged.v1.Models/Detokenize", "read"),
        ("/edged.v1.System/Version", "read"),
        ("/edged.v1.System/Hardware", "read"),
        ("/grpc.health.v1.Health/Check", "read"),
        ("/grpc.health.v1.Health/Watch", "read"),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "read"),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "read"),
        ("/edged.v1.Models/Pull", "models"),
        ("/edged.v1.Models/Copy", "models"),
        ("/edged.v1.Models/Delete", "models"),
        ("/edged.v1.Models/Configure", "models"),
        ("/edged.v1.Models/Convert", "models"),
        ("/edged.v1.Models/Load", "models"),
        ("/edged.v1.Models/Unload", "models"),
        ("/edged.v1.Models/SomethingNew", "models"),
        ("/edged.v1.Admin/Shutdown", "admin"),
        ("/other.v1.Inference/Generate", "admin"),
        ("/edged.v1.Inference", "admin"),
        ("", "admin"),
    ],
)
def test_scopes_for(method: str, scope: str) -> None:
    assert scopes_for(method) == scope


def test_admin_allows_everything() -> None:
    info = TokenInfo("a", frozenset({"admin"}), 0)
    assert all(info.allows(s) for s in ("generate", "read", "models", "admin"))
    reader = TokenInfo("r", frozenset({"read"}), 0)
    assert reader.allows("read") and not reader.allows("generate")
    assert not reader.allows("admin")


# -- the TCP listener's decision (daemon/auth.py) ---------------------------------------


def bearer(token: str) -> list[tuple[str, str]]:
    return [("user-agent", "test"), ("authorization", f"Bearer {token}")]


def test_presented_token() -> None:
    assert presented_token(None) is None
    assert presented_token([]) is None
    assert presented_token(bearer("abc")) == "abc"
    assert presented_token([("authorization", b"bearer  abc ")]) == "abc"
    assert presented_token([("authorization", "abc")]) is None  # no scheme
    assert presented_token([("authorization", "Basic abc")]) is None
    assert presented_token([("x-api-key", "k")]) == "k"
    assert presented_token([("x-api-key", "k"), ("authorization", "Bearer b")]) == "b"


def test_interceptor_decisions(path: Path) -> None:
    store = TokenStore(path)
    legacy = "L" * 43
    auth = BearerTokenInterceptor(legacy, store)
    reader = store.create("reader", ["read"])
    models = store.create("puller", ["models"])
    admin = store.create("root", ["admin"])
    read, pull, gen = (
        "/edged.v1.Models/List",
        "/edged.v1.Models/Pull",
        "/edged.v1.Inference/Generate",
    )

    # the legacy token may do everything, as before
    for method in (read, pull, gen, "/edged.v1.Unknown/X"):
        assert auth.decide(method, bearer(legacy)) is None
    # a read token reads, and nothing more
    assert auth.decide(read, bearer(reader)) is None
    assert auth.decide("/edged.v1.System/Version", [("x-api-key", reader)]) is None
    for method, needed in ((pull, "models"), (gen, "generate")):
        denial = auth.decide(method, bearer(reader))
        assert denial is not None
        assert denial.code == grpc.StatusCode.PERMISSION_DENIED
        assert f"'{needed}'" in denial.message and "'reader'" in denial.message
        assert reader not in denial.message
    assert auth.decide(pull, bearer(models)) is None
    assert auth.decide(gen, bearer(admin)) is None
    assert auth.decide("/edged.v1.Unknown/X", bearer(admin)) is None
    denial = auth.decide("/edged.v1.Unknown/X", bearer(models))
    assert denial is not None and denial.code == grpc.StatusCode.PERMISSION_DENIED

    # no token, a wrong one, a revoked one: UNAUTHENTICATED
    for md in ([], [("authorization", legacy)], bearer("wrong"), bearer("edt_wrong")):
        denial = auth.decide(read, md)
        assert denial is not None and denial.code == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token" in denial.message
    assert store.revoke("reader")
    denial = auth.decide(read, bearer(reader))
    assert denial is not None and denial.code == grpc.StatusCode.UNAUTHENTICATED


def test_interceptor_without_a_store_takes_only_the_legacy_token(path: Path) -> None:
    scoped = TokenStore(path).create("a", ["admin"])
    auth = BearerTokenInterceptor("L" * 43)
    assert auth.decide("/edged.v1.Models/Pull", bearer("L" * 43)) is None
    denial = auth.decide("/edged.v1.Models/List", bearer(scoped))
    assert denial is not None and denial.code == grpc.StatusCode.UNAUTHENTICATED
