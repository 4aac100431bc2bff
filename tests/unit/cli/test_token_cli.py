"""``edged token create|list|revoke``: they work on EDGED_TOKENS_FILE directly."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from edged.daemon.cli.main import main
from edged.daemon.tokens import TokenStore


@pytest.fixture
def tokens_file(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = root / "config" / "tokens.json"
    monkeypatch.setenv("EDGED_TOKENS_FILE", str(path))
    return path


def test_create_list_revoke(tokens_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "ci", "--scope", "generate,read"]) == 0
    out, err = capsys.readouterr()
    secret = out.strip()
    assert out == secret + "\n" and secret.startswith("edt_")  # only the token on stdout
    assert "created token 'ci' (scopes: generate, read)" in err
    assert "will not be shown again" in err
    assert "Authorization: Bearer <token>" in err and "x-api-key: <token>" in err
    assert "api_key" in err
    assert stat.S_IMODE(os.stat(tokens_file).st_mode) == 0o600
    assert secret not in tokens_file.read_text()
    info = TokenStore(tokens_file).check(secret)
    assert info is not None and info.scopes == frozenset({"generate", "read"})

    assert main(["token", "create", "puller", "--scope", "models", "--scope", "read"]) == 0
    capsys.readouterr()
    assert main(["token", "list"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "SCOPES", "CREATED"]
    assert lines[1].split()[:2] == ["ci", "generate,read"]
    assert lines[2].split()[:2] == ["puller", "read,models"]
    assert "just now" in lines[1] or "second" in lines[1]
    assert "edt_" not in out and err == ""

    assert main(["token", "revoke", "ci"]) == 0
    assert capsys.readouterr().out == "revoked token 'ci'\n"
    assert TokenStore(tokens_file).check(secret) is None
    assert main(["token", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (only,) = doc["tokens"]
    assert only["name"] == "puller" and only["scopes"] == ["read", "models"]
    assert isinstance(only["created_unix_ms"], int)
    assert set(only) == {"name", "scopes", "created_unix_ms"}


def test_create_json(tokens_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "a", "--scope", "admin", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["name"] == "a" and doc["scopes"] == ["admin"]
    assert TokenStore(tokens_file).check(doc["token"]) is not None


def test_list_when_there_are_none(tokens_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "list"]) == 0
    assert "no tokens" in capsys.readouterr().out
    assert main(["token", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"tokens": []}
    assert not tokens_file.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["token", "create", "Bad", "--scope", "read"], "bad token name 'Bad'"),
        (["token", "create", "a", "--scope", "root"], "unknown scope 'root'"),
        (["token", "create", "a", "--scope", "none"], "at least one scope"),
        (["token", "revoke", "missing"], "no token named 'missing'"),
    ],
)
def test_errors_are_one_line(
    tokens_file: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("edged: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_duplicate_name(tokens_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "a", "--scope", "read"]) == 0
    capsys.readouterr()
    assert main(["token", "create", "a", "--scope", "read"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_a_damaged_file_is_refused(tokens_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokens_file.parent.mkdir(mode=0o700)
    tokens_file.write_text("{not json")
    for argv in (["token", "create", "a", "--scope", "read"], ["token", "list"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("edged: the token file") and "move it aside" in err
    assert tokens_file.read_text() == "{not json"


def test_scope_is_required(tokens_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["token", "create", "a"])
    assert exc.value.code == 2
    assert "--scope" in capsys.readouterr().err


def test_no_daemon_is_needed_or_started(root: Path, tokens_file: Path) -> None:
    assert main(["token", "create", "a", "--scope", "read"]) == 0
    assert main(["token", "list"]) == 0
    assert not (root / "run" / "edged.sock").exists()
