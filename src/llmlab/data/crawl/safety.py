"""The SSRF guard: a crawler must not become a way into the network it runs on.

A link, or a redirect, can point anywhere: at `file:///etc/passwd`, at a cloud metadata service on
169.254.169.254, at an admin page on 127.0.0.1 or 10.0.0.1. Checking the URL's text is not enough,
since any host name can resolve to a private address, so `Guard.resolve` checks the addresses DNS
returns and the fetcher then connects to exactly those addresses (no second lookup that could answer
differently). Every redirect hop goes through the same check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from llmlab.data.crawl.outcomes import FetchFailed, Refused

ALLOWED_SCHEMES = ("http", "https")

# (host, port) -> IP address strings, in the order to try them.
Resolver = Callable[[str, int], Awaitable[list[str]]]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the operating system's resolver (getaddrinfo), without blocking the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """An IPv4 address an IPv6 address tunnels to (mapped, 6to4, Teredo, NAT64): it is what gets reached."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress, allow_loopback: bool = False) -> str | None:
    """Why connecting to `ip` is refused, or None when it is a public unicast address (or allowed loopback)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            # Only the plain mapped form (::ffff:127.0.0.1) reaches this machine; tunnels never may.
            return address_problem(inner, allow_loopback and ip.ipv4_mapped is not None)
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


def check_scheme(url: str) -> None:
    """Refuse anything but http(s): `file:`, `ftp:`, `data:`, `javascript:`..."""
    scheme = urlsplit(url).scheme
    if scheme not in ALLOWED_SCHEMES:
        raise Refused(f"scheme {scheme or '(none)'}: is not crawled (only http and https)")


@dataclass
class Guard:
    """Resolves hosts and keeps only addresses the crawl may connect to; caches answers for the crawl."""

    allow_loopback: bool = False
    resolver: Resolver = system_resolver

    def __post_init__(self) -> None:
        self._cache: dict[tuple[str, int], list[str]] = {}

    async def resolve(self, host: str, port: int) -> list[str]:
        """Addresses of `host` that are safe to connect to; raises Refused or FetchFailed."""
        key = (host, port)
        if key not in self._cache:
            self._cache[key] = await self._resolve(host, port)
        return self._cache[key]

    async def _resolve(self, host: str, port: int) -> list[str]:
        try:
            addresses = [str(ipaddress.ip_address(host.strip("[]")))]
            what = "address"
        except ValueError:
            what = "host"
            try:
                addresses = await self.resolver(host, port)
            except (OSError, UnicodeError) as e:
                raise FetchFailed(f"cannot resolve host {host}: {e}") from None
            if not addresses:
                raise FetchFailed(f"cannot resolve host {host}: no addresses")
        allowed, problems = [], []
        for address in addresses:
            problem = address_problem(ipaddress.ip_address(address.split("%")[0]), self.allow_loopback)
            if problem is None:
                allowed.append(address)
            else:
                problems.append(f"{address} is {problem}")
        if not allowed:
            hint = " (--allow-loopback permits 127.0.0.0/8 and ::1)" if not self.allow_loopback else ""
            raise Refused(f"{what} {host} refused: {'; '.join(problems)}{hint}")
        return allowed
