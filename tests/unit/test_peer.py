"""Who owns a loopback TCP connection (daemon/peer.py): the /proc/net/tcp parser
on fixture text, and one real connection on this machine."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path

import pytest

from edged.daemon.peer import find_uid, parse_proc_net, peer_uid

# A client (uid 1000) on 127.0.0.1:40000 connected to a daemon (uid 1001)
# listening on 127.0.0.1:11435; a socket in TIME_WAIT (no owner, inode 0); and
# lines a truncated or odd read could give. (Each line of a table is split into
# string pieces here only to fit the line length.)
TCP = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
    "   0: 0100007F:2CAB 00000000:0000 0A 00000000:00000000 00:00000000 00000000  "
    "1001        0 51234 1 0000000000000000 100 0 0 10 0\n"
    "   1: 0100007F:9C40 0100007F:2CAB 01 00000000:00000000 00:00000000 00000000  "
    "1000        0 61234 1 0000000000000000 20 4 30 10 -1\n"
    "   2: 0100007F:2CAB 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  "
    "1001        0 61235 1 0000000000000000 20 4 31 10 -1\n"
    "   3: 0100007F:9C41 0100007F:2CAB 06 00000000:00000000 03:00000C6C 00000000     "
    "0        0 0 3 0000000000000000\n"
    "   4: 0100007F:9C42 0100007F:2CAB 01 00000000:00000000 00:00000000 00000000  "
    "notanumber  0 61236 1\n"
    "   5: 0100007F 0100007F:2CAB 01 00000000:00000000 00:00000000 00000000  1000        0 "
    "61237 1\n"
    "   6: 0100007G:9C43 0100007F:2CAB 01 00000000:00000000 00:00000000 00000000  "
    "1000        0 61238 1\n"
    "   7: 0100007F:9C44 0100007F:2CAB 01 00000000:00000000\n"
    "   8: 01000000007F:9C45 0100007F:2CAB 01 00000000:00000000 00:00000000 00000000  "
    "1000        0 61239 1\n"
    "garbage\n"
    "   9: 0100007F:9C46 0100007F:2CAB 01 00000000:00000000 00:00000000 00000000  "
    "-5        0 61240 1\n"
    "\n"
)

# tcp6: a client (uid 1002) on [::1]:40010 connected to [::1]:11435, and an
# IPv4 client (uid 1003) on a dual-stack socket: ::ffff:127.0.0.1:40020 ->
# ::ffff:127.0.0.1:11435.
TCP6 = (
    "  sl  local_address                         remote_address                        st "
    "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    "   0: 00000000000000000000000001000000:2CAB 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000  1001        0 71234 1 0000000000000000 100 0 "
    "0 10 0\n"
    "   1: 00000000000000000000000001000000:9C4A 00000000000000000000000001000000:2CAB 01 "
    "00000000:00000000 00:00000000 00000000  1002        0 71235 1 0000000000000000 20 4 "
    "30 10 -1\n"
    "   2: 0000000000000000FFFF00000100007F:9C54 0000000000000000FFFF00000100007F:2CAB 01 "
    "00000000:00000000 00:00000000 00000000  1003        0 71236 1 0000000000000000 20 4 "
    "30 10 -1\n"
    "   3: 0000000000000000FFFF0000:9C55 0000000000000000FFFF00000100007F:2CAB 01 "
    "00000000:00000000 00:00000000 00000000  1004        0 71237 1\n"
    "   4: 00000000000000000000000001000000:9C56 00000000000000000000000001000000:2CAB 01 "
    "00000000:00000000 00:00000000 00000000\n"
)

LO4 = ipaddress.ip_address("127.0.0.1")
LO6 = ipaddress.ip_address("::1")


def test_parse_tcp_skips_what_is_malformed_or_unowned() -> None:
    rows = parse_proc_net(TCP)
    assert rows == [
        ((LO4, 11435), (ipaddress.ip_address("0.0.0.0"), 0), 1001),
        ((LO4, 40000), (LO4, 11435), 1000),
        ((LO4, 11435), (LO4, 40000), 1001),
    ]
    assert find_uid(rows, (LO4, 40000), (LO4, 11435)) == 1000  # the client's end
    assert find_uid(rows, (LO4, 11435), (LO4, 40000)) == 1001  # the daemon's end
    assert find_uid(rows, (LO4, 40001), (LO4, 11435)) is None  # TIME_WAIT: no owner
    assert find_uid(rows, (LO4, 40002), (LO4, 11435)) is None  # malformed uid


def test_parse_tcp6_words_are_little_endian_and_mapped_addresses_are_ipv4() -> None:
    rows = parse_proc_net(TCP6)
    assert len(rows) == 3
    assert find_uid(rows, (LO6, 40010), (LO6, 11435)) == 1002
    assert find_uid(rows, (LO4, 40020), (LO4, 11435)) == 1003
    assert find_uid(rows, (LO6, 40020), (LO6, 11435)) is None


def test_parse_never_raises_on_junk() -> None:
    for text in ("", "\n\n", "x" * 1000, "0: : : : : : : : : : :", "\x00\xff" * 20):
        assert parse_proc_net(text) == []


def test_conflicting_rows_mean_unknown() -> None:
    rows = parse_proc_net(TCP)
    clash = [*rows, ((LO4, 40000), (LO4, 11435), 0)]
    assert find_uid(clash, (LO4, 40000), (LO4, 11435)) is None


def test_peer_uid_reads_both_tables(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    assert peer_uid(("127.0.0.1", 40000), ("127.0.0.1", 11435), proc_net=tmp_path) == 1000
    # the server saw the peer through a dual-stack socket: the IPv4-mapped form
    got = peer_uid(("::ffff:127.0.0.1", 40000), ("::ffff:127.0.0.1", 11435), proc_net=tmp_path)
    assert got == 1000
    assert peer_uid(("::ffff:127.0.0.1", 40020), ("127.0.0.1", 11435), proc_net=tmp_path) == 1003
    assert peer_uid(("::1", 40010), ("[::1]", 11435), proc_net=tmp_path) == 1002
    assert peer_uid(("127.0.0.1", 1), ("127.0.0.1", 11435), proc_net=tmp_path) is None
    assert peer_uid(("not an ip", 40000), ("127.0.0.1", 11435), proc_net=tmp_path) is None
    assert peer_uid(("127.0.0.1", 70000), ("127.0.0.1", 11435), proc_net=tmp_path) is None
    assert peer_uid(("127.0.0.1", 40000), ("127.0.0.1", 11435), proc_net=tmp_path / "no") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_a_real_loopback_connection_is_ours() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5) as client:
            conn, peer = server.accept()
            with conn:
                server_addr = conn.getsockname()
                assert peer == client.getsockname()
                assert peer_uid(peer, server_addr) == os.getuid()
                # a port nobody connects from is nobody's
                assert peer_uid(("127.0.0.1", 1), server_addr) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp6")
def test_a_real_dual_stack_connection_is_ours() -> None:
    try:
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        pytest.skip("no IPv6")
    with server:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            server.bind(("::ffff:127.0.0.1", 0, 0, 0))  # loopback only
        except OSError:
            pytest.skip("cannot bind a dual-stack socket")
        server.listen(1)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            conn, peer = server.accept()
            with conn:
                assert peer[0] == "::ffff:127.0.0.1"
                here = conn.getsockname()
                assert peer_uid(peer[:2], here[:2]) == os.getuid()
