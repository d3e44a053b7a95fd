"""The SSRF guard's address rules (tollgate/netguard.py), table-driven, and its socket factory,
the check aiohttp runs on every address it connects to."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from tollgate.netguard import (
    PUBLIC_ONLY,
    AddressPolicy,
    AddressRefused,
    guarded_socket_factory,
    is_public,
    literal_address_refused,
    parse_networks,
    resolves_to_refused,
)

NOT_PUBLIC = [
    "127.0.0.1",
    "127.255.0.9",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "255.255.255.255",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "198.18.0.1",  # benchmarking
    "192.0.2.1",  # documentation
    "::1",
    "::",
    "fd00::1",  # unique local
    "fc00::1",
    "fe80::1",  # link-local
    "ff02::1",  # multicast
    "ff0e::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "2001:db8::1",  # documentation
]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "2002:808:808::",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_addresses_inside_a_network_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))
    assert not PUBLIC_ONLY.permits(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_allowed_networks_open_exactly_themselves() -> None:
    lan = AddressPolicy(parse_networks(["10.0.0.0/8", "fd00::/8", "127.0.0.1"]))
    allowed = ["10.0.0.1", "10.255.255.255", "fd00::5", "127.0.0.1", "::ffff:10.2.3.4"]
    for address in allowed:
        assert lan.permits(ipaddress.ip_address(address)), address
    for address in ["127.0.0.2", "169.254.169.254", "192.168.1.1", "fe80::1", "::1"]:
        assert not lan.permits(ipaddress.ip_address(address)), address
    assert lan.permits(ipaddress.ip_address("8.8.8.8"))


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-a-network", "", "fd00::/129"])
def test_bad_networks_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a network: write it as CIDR"):
        parse_networks([bad])


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("127.0.0.1", True),
        ("[::1]", True),
        ("::1", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("api.localhost", True),
        ("fe80::1%eth0", True),
        ("8.8.8.8", False),
        ("api.example.com", False),  # names are checked by resolving them
        ("localhost.example.com", False),
    ],
)
def test_literal_hosts(host: str, refused: bool) -> None:
    assert literal_address_refused(host, PUBLIC_ONLY) is refused


def test_localhost_needs_both_loopback_addresses_allowed() -> None:
    v4_only = AddressPolicy(parse_networks(["127.0.0.0/8"]))
    both = AddressPolicy(parse_networks(["127.0.0.0/8", "::1/128"]))
    assert literal_address_refused("localhost", v4_only)
    assert not literal_address_refused("localhost", both)


def info(address: str, port: int) -> tuple[int, int, int, str, tuple[object, ...]]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockaddr: tuple[object, ...] = (address, port, 0, 0) if ":" in address else (address, port)
    return (family, socket.SOCK_STREAM, 6, "", sockaddr)


def test_the_socket_factory_refuses_before_any_socket_is_opened() -> None:
    open_socket = guarded_socket_factory(PUBLIC_ONLY)
    for address in ["127.0.0.1", "169.254.169.254", "::1", "fe80::1%1", "::ffff:127.0.0.1"]:
        with pytest.raises(AddressRefused) as caught:
            open_socket(info(address, 443))
        assert address.split("%")[0] not in str(caught.value)  # never names the address
    with open_socket(info("8.8.8.8", 443)) as opened:  # opened, not connected
        assert opened.family == socket.AF_INET and opened.type == socket.SOCK_STREAM


async def test_host_names_are_refused_by_what_they_resolve_to() -> None:
    assert await resolves_to_refused("localhost", 80, PUBLIC_ONLY)
    loopback = AddressPolicy(parse_networks(["127.0.0.0/8", "::1/128"]))
    assert not await resolves_to_refused("localhost", 80, loopback)
    # A name that does not resolve is left to the check at connect time.
    assert not await resolves_to_refused("nothing.invalid", 80, PUBLIC_ONLY)
