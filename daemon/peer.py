"""Which local user owns the other end of a loopback TCP connection.

A unix socket is limited to its owner by its file mode, but loopback TCP lets
every account on the machine connect. So before the HTTP listener grants a
request without a token (EDGED_HTTP_ANON), it asks who the peer is: the
connecting socket is one row of the kernel's TCP table, with the client's
address as its local end, the server's as its remote end, and the uid of the
account that opened it. On Linux that table is ``/proc/net/tcp`` and
``/proc/net/tcp6`` (for the daemon's own network namespace, which is the only
one whose processes can reach its loopback address). The kernel is first asked
for just that socket over netlink (:mod:`edged.daemon.sock_diag`, about 30 us);
reading the tables (several ms: the kernel prints every socket) is the fallback.

macOS and Windows have no ``/proc``. Their equivalents (``proc_pidfdinfo`` over
every process on macOS, ``GetExtendedTcpTable`` plus the owning process's token
on Windows) need rights over other users' processes, so edged does not use
them: :func:`peer_uid` returns None there, anonymous access is granted only
when the lookup succeeds, and on those platforms every TCP request needs a token
(``edged token create``). The unix socket needs none anywhere.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from edged.daemon.sock_diag import socket_uid

Address = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
Row = tuple[Address, Address, int]  # local, remote, uid

PROC_NET = Path("/proc/net")
_TABLES = ("tcp", "tcp6")
_MAX_TABLE_BYTES = 64 << 20


def _address(field: str) -> Address:
    """``0100007F:1F90`` (tcp) or 32 hex digits + ``:PORT`` (tcp6); ValueError if not."""
    host, sep, port_hex = field.partition(":")
    if not sep or len(port_hex) != 4:
        raise ValueError(field)
    port = int(port_hex, 16)
    raw = bytes.fromhex(host)
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if len(raw) == 4:  # one little-endian 32-bit word
        ip = ipaddress.IPv4Address(raw[::-1])
    elif len(raw) == 16:  # four 32-bit words, each little-endian
        ip = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    else:
        raise ValueError(field)
    return _normal(ip), port


def _normal(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) as its IPv4 form."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_proc_net(text: str) -> list[Row]:
    """The (local, remote, uid) of each socket a process owns in one /proc/net/tcp*
    table. The header, malformed lines and sockets no process holds (TIME_WAIT,
    orphans: inode 0) are skipped."""
    rows: list[Row] = []
    for line in text.splitlines():
        fields = line.split()
        # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        if len(fields) < 10 or not fields[0].endswith(":"):
            continue
        try:
            local = _address(fields[1])
            remote = _address(fields[2])
            uid = int(fields[7])
            inode = int(fields[9])
        except ValueError:
            continue
        if uid < 0 or inode <= 0:
            continue
        rows.append((local, remote, uid))
    return rows


def find_uid(rows: list[Row], client: Address, server: Address) -> int | None:
    """The uid of the socket whose local end is ``client`` and remote end is
    ``server``; None when there is none, or (never expected) two that disagree."""
    uids = {uid for local, remote, uid in rows if local == client and remote == server}
    return uids.pop() if len(uids) == 1 else None


def _parse_endpoint(endpoint: tuple[str, int]) -> Address:
    host, port = endpoint
    host = host.strip("[]").partition("%")[0]  # brackets, an IPv6 zone
    if host == "localhost":
        host = "127.0.0.1"
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"bad port {port!r}")
    return _normal(ipaddress.ip_address(host)), port


def peer_uid(
    client: tuple[str, int], server: tuple[str, int], *, proc_net: Path = PROC_NET
) -> int | None:
    """The uid that owns the connecting socket of a TCP connection this process
    accepted: ``client`` is the peer's (ip, port), ``server`` the address it
    connected to, both as the server sees them. None when it cannot be told
    (not Linux, no /proc, no matching socket, a malformed address)."""
    if not sys.platform.startswith("linux") and proc_net == PROC_NET:
        return None
    try:
        want_local = _parse_endpoint(client)
        want_remote = _parse_endpoint(server)
    except (ValueError, TypeError, AttributeError):
        return None
    if proc_net == PROC_NET:  # the live system: ask the kernel for this one socket first
        uid = socket_uid(want_local, want_remote)
        if uid is not None:
            return uid
    for table in _TABLES:
        try:
            with open(proc_net / table, "rb") as f:
                data = f.read(_MAX_TABLE_BYTES)
        except OSError:
            continue
        uid = find_uid(parse_proc_net(data.decode("ascii", "replace")), want_local, want_remote)
        if uid is not None:
            return uid
    return None
