"""The owner of one TCP socket, asked of the Linux kernel by its exact addresses
(``NETLINK_SOCK_DIAG``, what ``ss`` uses): a lookup of microseconds, where
reading ``/proc/net/tcp`` makes the kernel print every socket (milliseconds,
more the busier the machine). :mod:`edged.daemon.peer` falls back to
``/proc`` when this fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct

Ip = ipaddress.IPv4Address | ipaddress.IPv6Address

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_TCP_STATES_ALL = 0xFFFFFFFF
_NO_COOKIE = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states; inet_diag_sockid: sport,
# dport (big-endian), src[16], dst[16], if, cookie[2]
_REQUEST = struct.Struct("=BBBBI")
_SOCKID = struct.Struct(">HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
# inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires,
# rqueue, wqueue, uid, inode
_MESSAGE_UID = struct.Struct("=IIIII")
_SOCKID_BYTES = 48


def _packed(ip: Ip) -> bytes:
    return ip.packed.ljust(16, b"\0")


def socket_uid(local: tuple[Ip, int], remote: tuple[Ip, int]) -> int | None:
    """The uid of the TCP socket whose local end is ``local`` and remote end
    ``remote`` (both the same IP family); None when the kernel has none or the
    lookup is not possible here."""
    (lip, lport), (rip, rport) = local, remote
    if lip.version != rip.version:
        return None
    family = socket.AF_INET if lip.version == 4 else socket.AF_INET6
    body = (
        _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, _TCP_STATES_ALL)
        + _SOCKID.pack(lport, rport, _packed(lip), _packed(rip))
        + _SOCKID_TAIL.pack(0, _NO_COOKIE, _NO_COOKIE)
    )
    message = _HEADER.pack(_HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
    except (OSError, AttributeError):  # not Linux, or no sock_diag
        return None
    with contextlib.closing(sock):
        try:
            sock.settimeout(1.0)
            sock.sendto(message + body, (0, 0))
            reply = sock.recv(8192)
        except OSError:
            return None
    return _uid_of(reply)


def _uid_of(reply: bytes) -> int | None:
    if len(reply) < _HEADER.size:
        return None
    length, kind, _, _, _ = _HEADER.unpack_from(reply)
    if kind in (_NLMSG_ERROR, _NLMSG_DONE) or kind != _SOCK_DIAG_BY_FAMILY:
        return None  # ENOENT: no such socket
    start = _HEADER.size + 4 + _SOCKID_BYTES
    if length < start + _MESSAGE_UID.size or len(reply) < start + _MESSAGE_UID.size:
        return None
    _, _, _, uid, inode = _MESSAGE_UID.unpack_from(reply, start)
    return int(uid) if inode else None  # inode 0: no process holds it (TIME_WAIT)
