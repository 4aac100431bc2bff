"""llama.cpp RPC endpoints as users write them (EDGED_RPC, `edged rpc-worker
--listen`): parsing and the loopback check. Imports nothing heavy."""

from __future__ import annotations

import ipaddress
import socket

from edged.common.errors import InvalidArgument

MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); InvalidArgument otherwise."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"an RPC endpoint must be HOST:PORT, got {text[:80]!r}")
    return host, int(port)


def endpoints(text: str) -> tuple[str, ...]:
    """EDGED_RPC / a model's rpc setting: comma-separated HOST:PORT, at most 16."""
    found = tuple(e.strip() for e in text.split(",") if e.strip())
    for e in found:
        parse_endpoint(e)
    if len(found) > MAX_SERVERS:
        raise InvalidArgument(f"at most {MAX_SERVERS} RPC servers may be used, got {len(found)}")
    return found


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {str(info[4][0]) for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def unreachable(servers: tuple[str, ...], timeout_s: float = 0.5) -> list[str]:
    """The endpoints where nothing accepts a TCP connection now."""
    gone = []
    for endpoint in servers:
        host, port = parse_endpoint(endpoint)
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except OSError:
            gone.append(endpoint)
    return gone
