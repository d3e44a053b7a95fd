"""Account-chosen upstreams never reach the gateway's own network unless the operator allows it
(tollgate/netguard.py): custom providers' base URLs and the image URLs the Unified API fetches.

The simulator plays a service on the gateway's loopback interface. Operator-configured providers
point at it too, and keep working: only destinations API users choose are checked.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from tests.e2e.conftest import Gateway, Sim
from tests.e2e.test_request_limits import books
from tests.support.accounts import Seeded

ALLOW_HTTP = {"TOLLGATE_CUSTOM_PROVIDERS__ALLOW_HTTP": "true"}
ALLOW_LOOPBACK = {
    **ALLOW_HTTP,
    "TOLLGATE_UPSTREAM__ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8,::1/128",
}
CHAT: list[Any] = [{"role": "user", "content": "hi"}]


def create(gateway: Gateway, account: Seeded, slug: str, base_url: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/client/v4/accounts/{account.account_id}/ai-gateway/custom-providers",
        headers={"authorization": f"Bearer {account.token}"},
        json={
            "name": slug,
            "slug": slug,
            "base_url": base_url,
            "enable": True,
            "headers": json.dumps({"authorization": "Bearer sk-the-accounts-own-key"}),
        },
    )


def sim_port(sim: Sim) -> int:
    port = urlsplit(sim.url).port
    assert port is not None
    return port


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "10.0.0.8",
        "172.16.5.4",
        "192.168.1.20",
        "169.254.169.254",  # the cloud metadata service
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "[::1]",
        "[fd12:3456::1]",
        "[fe80::1]",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[64:ff9b::a9fe:a9fe]",  # NAT64 for 169.254.169.254
        "[ff02::1]",
    ],
)
def test_private_base_urls_are_refused_when_stored(
    start_gateway: Callable[..., AbstractContextManager[Gateway]], sim: Sim, host: str
) -> None:
    with start_gateway(**ALLOW_HTTP) as gateway:
        refused = create(gateway, gateway.account, "inside", f"http://{host}:8000/v1")
        assert refused.status_code == 400, refused.text
        error = refused.json()["errors"][0]
        assert "must point at a public host" in error["message"]
        assert "allowed_private_networks" in error["message"]


def test_a_host_name_that_resolves_to_a_private_address_is_refused_when_stored(
    gateway: Gateway,
) -> None:
    name = socket.gethostname()
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(name, 443)}
    except OSError:
        pytest.skip(f"this machine's name {name!r} does not resolve")
    if any(ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses):
        pytest.skip(f"this machine's name {name!r} resolves to a public address")
    refused = create(gateway, gateway.account, "named", f"https://{name}/v1")
    assert refused.status_code == 400, refused.text
    message = refused.json()["errors"][0]["message"]
    assert f"'{name}' resolves to a local or private address" in message
    assert not any(address in message for address in addresses)  # no internal DNS leaks


def test_allowed_networks_open_only_themselves(
    start_gateway: Callable[..., AbstractContextManager[Gateway]], sim: Sim
) -> None:
    with start_gateway(**ALLOW_LOOPBACK) as gateway:
        assert create(gateway, gateway.account, "lan", f"{sim.url}/openai/v1").status_code == 200
        metadata = create(gateway, gateway.account, "meta", "http://169.254.169.254/latest")
        assert metadata.status_code == 400, metadata.text
        client = openai.OpenAI(
            api_key=gateway.account.token, base_url=gateway.base("custom-lan"), max_retries=0
        )
        assert client.chat.completions.create(model="m", messages=CHAT).choices


def test_stored_providers_are_checked_again_at_every_connection(
    start_gateway: Callable[..., AbstractContextManager[Gateway]], sim: Sim
) -> None:
    """Providers stored while the operator allowed loopback (or whose name resolved elsewhere
    then: DNS rebinding) are refused when the gateway connects, by literal address and by
    name, on every surface; the operator's own providers on the same address still answer."""
    port = sim_port(sim)
    with start_gateway(**ALLOW_LOOPBACK) as gateway:
        account = gateway.account
        by_address = create(gateway, account, "by-address", f"http://127.0.0.1:{port}/openai/v1")
        by_name = create(gateway, account, "by-name", f"http://localhost:{port}/openai/v1")
        assert by_address.status_code == 200 and by_name.status_code == 200
        base = gateway.base("custom-by-name")
        client = openai.OpenAI(api_key=account.token, base_url=base, max_retries=0)
        assert client.chat.completions.create(model="m", messages=CHAT).choices

    with start_gateway(**ALLOW_HTTP) as gateway:  # the same database, loopback no longer allowed
        sim.clear()
        before = books(gateway, account.account_id)
        for slug in ("custom-by-address", "custom-by-name"):
            base = gateway.base(slug, account.account_id)
            client = openai.OpenAI(api_key=account.token, base_url=base, max_retries=0)
            with pytest.raises(openai.PermissionDeniedError) as native:
                client.chat.completions.create(model="m", messages=CHAT)
            assert native.value.code == "upstream_address_refused"
            assert "allowed_private_networks" in native.value.message
            assert "127.0.0.1" not in native.value.message.replace(f"127.0.0.1:{port}", "")

        compat = openai.OpenAI(
            api_key=account.token,
            base_url=gateway.base("compat", account.account_id),
            max_retries=0,
        )
        with pytest.raises(openai.PermissionDeniedError) as unified:
            compat.chat.completions.create(model="custom-by-name/m", messages=CHAT)
        assert unified.value.code == "upstream_address_refused"

        universal = httpx.post(
            f"{gateway.url}/v1/{account.account_id}/default",
            headers={"cf-aig-authorization": f"Bearer {account.token}"},
            json=[
                {
                    "provider": "custom-by-address",
                    "endpoint": "chat/completions",
                    "query": {"model": "m", "messages": CHAT},
                },
                {
                    "provider": "openai",
                    "endpoint": "chat/completions",
                    "query": {"model": "gpt-4o-mini", "messages": CHAT},
                },
            ],
        )
        assert universal.status_code == 403, universal.text  # a refusal is not a fallback
        assert universal.json()["error"]["code"] == "upstream_address_refused"
        assert sim.requests() == [], "a refused destination was reached"
        assert books(gateway, account.account_id) == before

        # The operator's own provider, on the very same loopback address, is trusted.
        own = openai.OpenAI(
            api_key=gateway.account.token, base_url=gateway.base("openai"), max_retries=0
        )
        assert own.chat.completions.create(model="gpt-4o-mini", messages=CHAT).choices
        assert len(sim.requests()) == 1


def image_request(url: str) -> list[Any]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1:{port}/cat.png", "https://localhost:{port}/cat.png"]
)
def test_image_urls_inside_the_gateway_network_are_not_fetched(
    gateway: Gateway, sim: Sim, url: str
) -> None:
    compat = openai.OpenAI(
        api_key=gateway.account.token, base_url=gateway.base("compat"), max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as caught:
        compat.chat.completions.create(
            model="google-ai-studio/gemini-2.5-flash",
            messages=image_request(url.format(port=sim_port(sim))),
        )
    assert caught.value.code == "image_fetch_failed"
    assert "inside the gateway's own network" in caught.value.message
    assert sim.requests() == []


def test_image_urls_in_allowed_networks_are_fetched(
    start_gateway: Callable[..., AbstractContextManager[Gateway]], sim: Sim
) -> None:
    with start_gateway(TOLLGATE_UPSTREAM__ALLOWED_PRIVATE_NETWORKS="127.0.0.0/8") as gateway:
        compat = openai.OpenAI(
            api_key=gateway.account.token, base_url=gateway.base("compat"), max_retries=0
        )
        # The simulator speaks http, so the https fetch is attempted and fails on TLS: the
        # address itself was allowed.
        with pytest.raises(openai.BadRequestError) as caught:
            compat.chat.completions.create(
                model="google-ai-studio/gemini-2.5-flash",
                messages=image_request(f"https://127.0.0.1:{sim_port(sim)}/cat.png"),
            )
        assert caught.value.code == "image_fetch_failed"
        assert "own network" not in caught.value.message
