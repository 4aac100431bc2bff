from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edged.common.errors import FailedPrecondition, InvalidArgument
from edged.daemon.security import ensure_private_dir, load_or_create_token, parse_loopback


def test_private_dir_created_0700(tmp_path: Path) -> None:
    d = ensure_private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_symlinked_dir_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(FailedPrecondition, match="symlink"):
        ensure_private_dir(tmp_path / "link")


def test_token_created_0600_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "token"
    t1 = load_or_create_token(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_token(path) == t1 and len(t1) >= 32


def test_world_readable_token_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("a" * 40)
    os.chmod(path, 0o644)
    with pytest.raises(FailedPrecondition, match="chmod 600"):
        load_or_create_token(path)


@pytest.mark.parametrize("addr", ["127.0.0.1:80", "localhost:1", "[::1]:9000", ":5000"])
def test_loopback_accepted(addr: str) -> None:
    host, _ = parse_loopback(addr)
    assert host in ("127.0.0.1", "::1")


@pytest.mark.parametrize(
    "addr", ["0.0.0.0:80", "10.0.0.1:80", "example.com:80", "127.0.0.1", "1.2.3.4:x"]
)
def test_non_loopback_refused(addr: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_loopback(addr)
