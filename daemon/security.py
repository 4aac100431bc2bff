"""File-system and transport hardening: private dirs, the socket, the token."""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from pathlib import Path

from edged.common.errors import FailedPrecondition, InvalidArgument


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` as a 0700 directory owned by us, or refuse an unsafe one."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise FailedPrecondition(f"{path} is not a directory (a symlink?); refusing to use it")
    if st.st_uid != os.getuid():
        raise FailedPrecondition(f"{path} belongs to another user; refusing to use it")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def load_or_create_token(path: Path) -> str:
    """Read the bearer token (0600, ours), creating one if it does not exist."""
    ensure_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
        raise FailedPrecondition(f"token file {path} is a symlink or not ours; refusing it")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise FailedPrecondition(
            f"token file {path} is readable by others (mode "
            f"{stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
        )
    token = path.read_text().strip()
    if len(token) < 16:
        raise FailedPrecondition(f"token file {path} holds a token shorter than 16 characters")
    return token


def parse_address(address: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IP, ``[v6]`` or ``localhost``) for a listener."""
    host, sep, port_s = address.rpartition(":")
    if not sep or not port_s.isdigit():
        raise InvalidArgument(f"{flag} wants HOST:PORT, got {address[:80]!r}")
    host = host.strip("[]") or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise InvalidArgument(f"{flag} host must be an IP address, got {host[:80]!r}") from None
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"{flag} port out of range: {port}")
    return host, port


def is_loopback_ip(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def parse_loopback(address: str) -> tuple[str, int]:
    """Validate ``HOST:PORT`` for the TCP listener: loopback addresses only."""
    host, sep, port_s = address.rpartition(":")
    if not sep or not port_s.isdigit():
        raise InvalidArgument(f"--tcp wants HOST:PORT, got {address!r}")
    host = host.strip("[]") or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidArgument(f"--tcp host must be a loopback IP, got {host!r}") from None
    if not ip.is_loopback:
        raise InvalidArgument(f"--tcp only listens on loopback (127.0.0.1 or ::1), not {host}")
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"--tcp port out of range: {port}")
    return host, port
