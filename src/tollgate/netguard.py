"""Where account-chosen upstream URLs may connect: public addresses, and networks allowed.

The SSRF guard. Two kinds of destination are chosen by API users rather than by the operator: a
custom provider's `base_url` (`custom-{slug}`, set through the management API) and the image URLs
the Unified API downloads for Gemini. Without a guard an account could make the gateway call its
own loopback services, its LAN, or the cloud metadata endpoint (169.254.169.254), and read the
answers back. Providers the operator configures (`providers.<slug>.base_url`, `workers-ai`
included) are trusted and never checked: tests and the simulator run them on 127.0.0.1.

An address is allowed when it is public (`is_public`) or inside one of the operator's
`[upstream] allowed_private_networks` (`AddressPolicy`). Not public: loopback, private (RFC 1918,
unique-local fc00::/7), link-local (169.254.0.0/16 with the metadata address, fe80::/10),
unspecified (0.0.0.0, ::), multicast, shared (100.64.0.0/10), reserved, benchmarking and
documentation ranges. IPv6 addresses that carry an IPv4 address (IPv4-mapped ::ffff:a.b.c.d,
6to4 2002::/16, NAT64 64:ff9b::/96) are judged by the IPv4 address they carry.

Where it is enforced: `guarded_socket_factory` is given to the aiohttp connector of the
account-chosen pool (`tollgate.upstream`), so every address is checked as the socket is opened,
after DNS resolution. A host name that resolves to a private address is refused like a literal
one, and a name that resolves to a public address when stored and to a private one later (DNS
rebinding) is refused at that later connection. `literal_address_refused` (pure) and
`resolves_to_refused` (one DNS lookup) only give an early, clear error when a URL is stored.

Refusals never name the address a host resolved to: an account must not learn the gateway's
internal DNS through error messages.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (family, type, proto, canonname, sockaddr): one `getaddrinfo` entry, as aiohttp passes it.
AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]
SocketFactory = Callable[[AddrInfo], socket.socket]

ALLOW_SETTING = (
    "[upstream] allowed_private_networks (TOLLGATE_UPSTREAM__ALLOWED_PRIVATE_NETWORKS), "
    'e.g. ["10.0.0.0/8"]'
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOOPBACK = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))


class AddressRefused(OSError):
    """A connection to a non-public address the operator does not allow. The message is the
    same for every address, so aiohttp (which raises one error when all of a host's addresses
    fail the same way) keeps this type, and never shows the address."""

    def __init__(self) -> None:
        super().__init__(
            "refused: not a public address, and not in the operator's allowed networks"
        )


def carried_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """True for an address on the public internet (see the module docstring for what is not)."""
    address = carried_ipv4(address) or address
    return address.is_global and not address.is_multicast and not address.is_reserved


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings (`10.0.0.0/8`, `fd00::/8`, or one address) as networks; ValueError names
    the first bad one. Host bits may be set (`10.1.2.3/8` is `10.0.0.0/8`)."""
    networks: list[IPNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{value!r} is not a network: write it as CIDR, e.g. 10.0.0.0/8 or fd00::/8"
            ) from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses account-chosen upstreams may connect to: public ones, and these."""

    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, networks: Iterable[str]) -> AddressPolicy:
        return cls(parse_networks(networks))

    def permits(self, address: IPAddress) -> bool:
        if is_public(address):
            return True
        candidates = (address, carried_ipv4(address) or address)
        return any(a in network for network in self.allowed_networks for a in candidates)


PUBLIC_ONLY = AddressPolicy()


def guarded_socket_factory(policy: AddressPolicy) -> SocketFactory:
    """aiohttp's `TCPConnector(socket_factory=...)`: opens a socket only to a permitted address
    (raises `AddressRefused` otherwise, which aiohttp reports as a connection error)."""

    def open_socket(addr_info: AddrInfo) -> socket.socket:
        family, kind, proto, _, sockaddr = addr_info
        if not policy.permits(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])):
            raise AddressRefused()
        return socket.socket(family=family, type=kind, proto=proto)

    return open_socket


def refused(error: BaseException) -> bool:
    """Whether an aiohttp connection error was this guard's refusal."""
    return isinstance(getattr(error, "os_error", None), AddressRefused)


def literal_address_refused(host: str, policy: AddressPolicy) -> bool:
    """For a URL's host as written (no DNS): an IP literal, or `localhost` / `*.localhost`
    (which always name loopback), outside `policy`. Other names: False (see
    `resolves_to_refused`)."""
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return not all(policy.permits(address) for address in _LOOPBACK)
    try:
        address = ipaddress.ip_address(name.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return not policy.permits(address)


async def resolves_to_refused(
    host: str, port: int, policy: AddressPolicy, *, timeout: float = 2.0
) -> bool:
    """Whether `host` resolves, now, to any address outside `policy`. A name that does not
    resolve (yet) is not refused here: the connection is checked again when it is made."""
    try:
        async with asyncio.timeout(timeout):
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
    except (OSError, TimeoutError):
        return False
    return any(
        not policy.permits(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])) for info in infos
    )
