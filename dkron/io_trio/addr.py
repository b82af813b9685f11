"""Addresses and reconnect timing for the node-to-node transports.

Dkron's defaults: bind ``0.0.0.0``, advertise the first private IPv4 address
(``{{ GetPrivateIP }}``) and fall back to loopback where there is none.  Every
error names the value it could not use.
"""

from __future__ import annotations

import ipaddress
import random
import re
import socket
import sys
from collections.abc import Iterable

from dkron.proto_sansio.swim import (
    Address,
)

__all__ = [
    "DEFAULT_GOSSIP_PORT",
    "DEFAULT_RPC_PORT",
    "AddressError",
    "advertise_addr",
    "backoff_delay",
    "local_ipv4_addresses",
    "parse_addr",
    "private_ipv4",
    "resolve_bind_addr",
]

DEFAULT_GOSSIP_PORT = 8946
DEFAULT_RPC_PORT = 6868

# -- addresses ----------------------------------------------------------------------

#: What go-sockaddr's GetPrivateIP calls private: RFC 1918 plus RFC 6598 shared space.
_PRIVATE_NETS = tuple(
    ipaddress.IPv4Network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
_TEMPLATE = re.compile(r"\{\{\s*(GetPrivateIP|GetInterfaceIP\s+\"([^\"]+)\")\s*\}\}")


class AddressError(ValueError):
    """A bind or advertise address that cannot be used; the message quotes it."""


def parse_addr(value: str, *, default_port: int) -> Address:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; the host must be an IP literal."""
    text = value.strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and text[end + 1] != ":"):
            raise AddressError(f"invalid address {value!r}: unbalanced brackets")
        host, rest = text[1:end], text[end + 2 :]
        port = _port(value, rest) if end + 1 < len(text) else default_port
    elif text.count(":") == 1:
        host, rest = text.split(":")
        port = _port(value, rest)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise AddressError(f"invalid address {value!r}: {host!r} is not an IP address") from None
    if text.count(":") > 1 and not text.startswith("["):
        raise AddressError(f"invalid address {value!r}: write IPv6 hosts as [addr]:port")
    return str(ip), port


def _port(value: str, text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise AddressError(f"invalid address {value!r}: port {text!r} is not within 0..65535")
    return int(text)


def local_ipv4_addresses() -> list[str]:
    """IPv4 addresses of this host, the default route's source first (GetPrivateIP's order)."""
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:  # connecting a UDP socket sends nothing; it only picks a route
            probe.connect(("192.0.2.1", 9))
            found.append(probe.getsockname()[0])
        except OSError:
            pass
        for _, name in socket.if_nameindex() if sys.platform == "linux" else ():
            addr = _interface_ip(probe, name)
            if addr is not None and addr not in found:
                found.append(addr)
    return found


def _interface_ip(sock: socket.socket, name: str) -> str | None:
    if sys.platform != "linux":
        return None
    import fcntl
    import struct

    try:  # SIOCGIFADDR
        raw = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
    except OSError:
        return None
    return socket.inet_ntoa(raw[20:24])


def private_ipv4(candidates: Iterable[str] | None = None) -> str | None:
    """The first private IPv4 address among ``candidates`` (default: this host's)."""
    for text in local_ipv4_addresses() if candidates is None else candidates:
        ip = ipaddress.ip_address(text)
        if isinstance(ip, ipaddress.IPv4Address) and any(ip in n for n in _PRIVATE_NETS):
            return text
    return None


def _expand(value: str, candidates: Iterable[str] | None) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(2) is not None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                ip = _interface_ip(s, m.group(2))
            if ip is None:
                raise AddressError(f"invalid address {value!r}: no IPv4 on {m.group(2)!r}")
            return ip
        return private_ipv4(candidates) or "127.0.0.1"

    return _TEMPLATE.sub(sub, value)


def resolve_bind_addr(
    value: str | None = None,
    *,
    default_port: int = DEFAULT_GOSSIP_PORT,
    candidates: Iterable[str] | None = None,
) -> Address:
    """``--bind-addr``: empty means every interface; go-sockaddr templates are expanded."""
    if not value:
        return "0.0.0.0", default_port
    text = _expand(value, candidates)
    if text.startswith(":"):
        text = "0.0.0.0" + text
    return parse_addr(text, default_port=default_port)


def advertise_addr(
    bind: Address, value: str | None = None, *, candidates: Iterable[str] | None = None
) -> Address:
    """``--advertise-addr``: explicit, else the bind IP, else GetPrivateIP, else loopback."""
    if value:
        return parse_addr(_expand(value, candidates), default_port=bind[1])
    if not ipaddress.ip_address(bind[0]).is_unspecified:
        return bind
    return private_ipv4(candidates) or "127.0.0.1", bind[1]


def backoff_delay(
    attempt: int, *, base: float, cap: float, jitter: float, rng: random.Random
) -> float:
    """Exponential backoff with multiplicative jitter, so restarted peers are not stampeded."""
    return min(cap, base * 2.0 ** min(attempt, 62)) * rng.uniform(1.0 - jitter, 1.0 + jitter)
