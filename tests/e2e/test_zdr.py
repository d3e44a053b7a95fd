"""Zero Data Retention routing: gateway `zdr`, the `cf-aig-zdr` header, fallback, `zdr_strict`.

Two simulators: the standard upstreams, and a second one standing in for the operator's ZDR
endpoints (another port), so each recorded request shows which base URL and key it used.
Traffic goes through the official `openai` and `anthropic` SDKs, settings through `cloudflare`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import anthropic
import cloudflare
import openai
import pytest

from tests.e2e.conftest import MANAGED_OPENAI_KEY, Gateway, Sim, managed_key
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS
from tests.support.server import serve_in_thread
from tollgate.sim import create_sim_app

ZDR_OPENAI_KEY = "sk-zdr-openai-operator"
ZDR_GROQ_KEY = "gsk-zdr-groq-operator"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def zdr_sim() -> Iterator[Sim]:
    with serve_in_thread(create_sim_app()) as url:
        yield Sim(url)


@dataclass
class Zdr:
    gateway: Gateway
    sim: Sim  # the standard upstreams
    zdr_sim: Sim  # the operator's ZDR upstreams
    cf: cloudflare.Cloudflare

    @property
    def token(self) -> str:
        return self.gateway.account.token

    def create_gateway(self, gateway_id: str, **settings: Any) -> Any:
        return self.cf.ai_gateway.create(
            account_id=self.gateway.account.account_id,
            id=gateway_id,
            **REQUIRED_GATEWAY_FIELDS,
            **settings,
        )

    def client(self, provider: str = "openai", gateway_id: str = "default") -> openai.OpenAI:
        return openai.OpenAI(
            api_key=self.token,
            base_url=self.gateway.base(provider, gateway=gateway_id),
            max_retries=0,
        )

    def chat(self, gateway_id: str = "default", provider: str = "openai", **headers: str) -> Any:
        model = "llama-3.1-8b-instant" if provider == "groq" else "gpt-4o-mini"
        return self.client(provider, gateway_id).chat.completions.with_raw_response.create(
            model=model,
            messages=HI,
            extra_headers=headers,  # type: ignore[arg-type]
        )

    def claude(self, gateway_id: str = "default", **headers: str) -> Any:
        client = anthropic.Anthropic(
            api_key=self.token,
            base_url=self.gateway.base("anthropic", gateway=gateway_id),
            max_retries=0,
        )
        return client.messages.with_raw_response.create(
            model="claude-sonnet-4-6",
            max_tokens=32,
            messages=HI,
            extra_headers=headers,  # type: ignore[arg-type]
        )

    def clear(self) -> None:
        self.sim.clear()
        self.zdr_sim.clear()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def zdr(
    request: pytest.FixtureRequest,
    start_gateway: Callable[..., AbstractContextManager[Gateway]],
    sim: Sim,
    zdr_sim: Sim,
) -> Iterator[Zdr]:
    """On SQLite and on the session's PostgreSQL database (each test seeds its own account)."""
    database_url = request.getfixturevalue("postgres_url") if request.param != "sqlite" else None
    env = {
        # OpenAI: a ZDR endpoint and key of its own; groq: only a ZDR key (same base URL);
        # anthropic: no ZDR configuration at all.
        "TOLLGATE_PROVIDERS__OPENAI__ZDR_BASE_URL": f"{zdr_sim.url}/openai/v1",
        "TOLLGATE_PROVIDERS__OPENAI__ZDR_API_KEY": ZDR_OPENAI_KEY,
        "TOLLGATE_PROVIDERS__GROQ__ZDR_API_KEY": ZDR_GROQ_KEY,
        "TOLLGATE_OPERATOR__MASTER_KEY": base64.b64encode(b"z" * 32).decode(),
    }
    with start_gateway(database_url, **env) as gateway:
        cf = cloudflare.Cloudflare(
            api_token=gateway.account.token, base_url=f"{gateway.url}/client/v4", max_retries=0
        )
        running = Zdr(gateway, sim, zdr_sim, cf)
        running.clear()
        yield running
        cf.close()


def only(sim: Sim) -> dict[str, Any]:
    recorded = sim.requests()
    assert len(recorded) == 1, recorded
    return recorded[0]


def test_gateway_zdr_sends_unified_requests_to_the_zdr_endpoint_and_key(zdr: Zdr) -> None:
    created = zdr.create_gateway("private", zdr=True)
    assert created.zdr is True and (created.model_extra or {}).get("zdr_strict") is False
    reply = zdr.chat("private")
    assert reply.parse().choices[0].message.content
    assert reply.headers["cf-aig-zdr"] == "true"
    upstream = only(zdr.zdr_sim)
    assert upstream["path"] == "/openai/v1/chat/completions"
    assert upstream["headers"]["authorization"] == f"Bearer {ZDR_OPENAI_KEY}"
    assert zdr.sim.requests() == []


def test_the_header_overrides_the_gateway_either_way(zdr: Zdr) -> None:
    zdr.create_gateway("private", zdr=True)
    reply = zdr.chat("private", **{"cf-aig-zdr": "false"})
    assert reply.headers["cf-aig-zdr"] == "false"
    assert only(zdr.sim)["headers"]["authorization"] == f"Bearer {MANAGED_OPENAI_KEY}"
    assert zdr.zdr_sim.requests() == []

    zdr.clear()
    reply = zdr.chat("default", **{"cf-aig-zdr": "true"})  # the default gateway has zdr off
    assert reply.headers["cf-aig-zdr"] == "true"
    assert only(zdr.zdr_sim)["headers"]["authorization"] == f"Bearer {ZDR_OPENAI_KEY}"
    assert zdr.sim.requests() == []


def test_a_zdr_key_without_a_zdr_base_url_keeps_the_standard_url(zdr: Zdr) -> None:
    reply = zdr.chat(provider="groq", **{"cf-aig-zdr": "TRUE"})
    assert reply.headers["cf-aig-zdr"] == "true"
    upstream = only(zdr.sim)
    assert upstream["path"] == "/openai/v1/chat/completions"
    assert upstream["headers"]["authorization"] == f"Bearer {ZDR_GROQ_KEY}"


def test_a_provider_without_zdr_credentials_falls_back_to_the_standard_ones(zdr: Zdr) -> None:
    zdr.create_gateway("private", zdr=True)
    reply = zdr.claude("private")
    assert reply.headers["cf-aig-zdr"] == "false"
    upstream = only(zdr.sim)
    assert upstream["path"] == "/anthropic/v1/messages"
    assert upstream["headers"]["x-api-key"] == managed_key("anthropic")
    assert zdr.zdr_sim.requests() == []


def test_zdr_strict_refuses_instead_of_falling_back(zdr: Zdr) -> None:
    zdr.create_gateway("strict", zdr=True, extra_body={"zdr_strict": True})
    with pytest.raises(anthropic.BadRequestError) as refused:
        zdr.claude("strict")
    assert refused.value.status_code == 400
    assert "zdr_strict" in str(refused.value) and "anthropic" in str(refused.value)
    assert zdr.sim.requests() == [] and zdr.zdr_sim.requests() == []

    # a provider with ZDR credentials is served; the header can still turn ZDR off
    assert zdr.chat("strict").headers["cf-aig-zdr"] == "true"
    assert zdr.claude("strict", **{"cf-aig-zdr": "false"}).headers["cf-aig-zdr"] == "false"
    assert len(zdr.zdr_sim.requests()) == 1 and len(zdr.sim.requests()) == 1

    # on a gateway with zdr off, asking for it by header is refused the same way
    zdr.create_gateway("strict-off", extra_body={"zdr_strict": True})
    with pytest.raises(anthropic.BadRequestError, match="cf-aig-zdr"):
        zdr.claude("strict-off", **{"cf-aig-zdr": "true"})


def test_byok_and_stored_keys_are_never_rerouted(zdr: Zdr) -> None:
    zdr.create_gateway("private", zdr=True, extra_body={"zdr_strict": True})
    own = openai.OpenAI(
        api_key="sk-client-own",
        base_url=zdr.gateway.base("openai", gateway="private"),
        default_headers={"cf-aig-authorization": f"Bearer {zdr.token}"},
        max_retries=0,
    )
    reply = own.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    assert reply.headers["cf-aig-zdr"] == "false"
    assert only(zdr.sim)["headers"]["authorization"] == "Bearer sk-client-own"

    zdr.clear()
    zdr.cf.ai_gateway.provider_configs.create(
        "private",
        account_id=zdr.gateway.account.account_id,
        alias="default",
        default_config=False,
        provider_slug="anthropic",  # no ZDR credentials, yet zdr_strict does not refuse
        secret="sk-ant-stored-0123456789",
    )
    reply = zdr.claude("private", **{"cf-aig-zdr": "true"})
    assert reply.headers["cf-aig-zdr"] == "false"
    assert only(zdr.sim)["headers"]["x-api-key"] == "sk-ant-stored-0123456789"
    assert zdr.zdr_sim.requests() == []


def test_the_unified_api_follows_zdr_too(zdr: Zdr) -> None:
    zdr.create_gateway("private", zdr=True)
    compat = zdr.client("compat", "private")
    reply = compat.chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini",
        messages=HI,  # type: ignore[arg-type]
    )
    assert reply.headers["cf-aig-zdr"] == "true"
    assert only(zdr.zdr_sim)["headers"]["authorization"] == f"Bearer {ZDR_OPENAI_KEY}"
    translated = compat.chat.completions.with_raw_response.create(
        model="anthropic/claude-sonnet-4-6",
        messages=HI,  # type: ignore[arg-type]
    )
    assert translated.headers["cf-aig-zdr"] == "false"
    assert only(zdr.sim)["headers"]["x-api-key"] == managed_key("anthropic")


def test_a_bad_zdr_header_is_a_400_naming_it(zdr: Zdr) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        zdr.chat(**{"cf-aig-zdr": "yes"})
    assert "cf-aig-zdr" in str(refused.value) and "'true' or 'false'" in str(refused.value)
    assert zdr.sim.requests() == [] and zdr.zdr_sim.requests() == []


def test_zdr_strict_must_be_a_boolean(zdr: Zdr) -> None:
    with pytest.raises(cloudflare.BadRequestError, match="zdr_strict"):
        zdr.create_gateway("bad", extra_body={"zdr_strict": "yes"})
