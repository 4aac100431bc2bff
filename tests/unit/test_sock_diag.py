"""The netlink lookup of a socket's owner, on real loopback sockets."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

import pytest

from edged.daemon.sock_diag import _uid_of, socket_uid

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def ends(
    sock: socket.socket,
) -> tuple[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], ...]:
    local, remote = sock.getsockname()[:2], sock.getpeername()[:2]
    return tuple((ipaddress.ip_address(h), p) for h, p in (local, remote))


@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_finds_the_owner_of_a_connected_socket(family: int, host: str) -> None:
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        with socket.create_connection(server.getsockname()[:2]) as client:
            accepted, _ = server.accept()
            with accepted:
                local, remote = ends(client)
                assert socket_uid(local, remote) == os.getuid()
                # the server's side is found by its own ends too, and a port nobody uses is not
                assert socket_uid(*ends(accepted)) == os.getuid()
                assert socket_uid(local, (remote[0], 1)) is None


def test_mixed_families_and_short_replies_are_none() -> None:
    v4, v6 = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")
    assert socket_uid((v4, 1000), (v6, 80)) is None
    assert _uid_of(b"") is None
    assert _uid_of(b"\x10\x00\x00\x00\x02\x00" + b"\x00" * 10) is None  # NLMSG_ERROR
