"""Stored provider keys (BYOK provider_configs) on the data plane, on SQLite and PostgreSQL.

Keys are stored with the official `cloudflare` SDK (and httpx for PUT/DELETE, which the SDK
lacks); traffic goes through the official `openai` and `anthropic` SDKs; the simulator's record
of each upstream request shows which key paid. Nothing of tollgate is mocked.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import cloudflare
import httpx
import openai
import pytest
from sqlalchemy import inspect, select, table, text

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import MANAGED_OPENAI_KEY, Gateway, Sim, managed_key, provider_env
from tests.e2e.test_billing_cost import books
from tests.support.accounts import seed_account
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS
from tests.support.server import serve_in_thread
from tollgate.app import create_app
from tollgate.settings import load_settings
from tollgate.store import Store

MASTER_KEY = base64.b64encode(bytes(range(32))).decode()
STORED_OPENAI = "sk-stored-openai-0123456789abcdef"
STORED_ANTHROPIC = "sk-ant-stored-0123456789abcdef"
HI = [{"role": "user", "content": "hi"}]


@dataclass
class Keyed:
    """A running gateway with a master key, its `cloudflare` client, and helpers."""

    gateway: Gateway
    sim: Sim
    cf: cloudflare.Cloudflare
    responses: list[str] = field(default_factory=list)  # every management response body

    @property
    def account_id(self) -> str:
        return self.gateway.account.account_id

    def store_key(
        self, provider: str, secret: str, gateway_id: str = "default", **fields: Any
    ) -> Any:
        raw = self.cf.ai_gateway.provider_configs.with_raw_response.create(
            gateway_id,
            account_id=self.account_id,
            provider_slug=provider,
            secret=secret,
            alias=fields.pop("alias", "default"),
            default_config=fields.pop("default_config", False),
            **fields,
        )
        self.responses.append(raw.http_response.text)
        return raw.parse()

    def configs_url(self, gateway_id: str = "default") -> str:
        return (
            f"{self.gateway.url}/client/v4/accounts/{self.account_id}/ai-gateway/gateways/"
            f"{gateway_id}/provider_configs"
        )

    def call(self, method: str, path: str = "", gateway_id: str = "default", **kw: Any) -> Any:
        headers = {"authorization": f"Bearer {self.gateway.account.token}"}
        response = httpx.request(method, self.configs_url(gateway_id) + path, headers=headers, **kw)
        self.responses.append(response.text)
        return response

    def create_gateway(self, gateway_id: str, **settings: Any) -> None:
        self.cf.ai_gateway.create(
            account_id=self.account_id, id=gateway_id, **REQUIRED_GATEWAY_FIELDS, **settings
        )

    def openai(self, gateway_id: str = "default", api_key: str | None = None) -> openai.OpenAI:
        """A client with the tollgate token as its key, or with its own provider key (and the
        token in cf-aig-authorization)."""
        token = self.gateway.account.token
        return openai.OpenAI(
            api_key=api_key or token,
            base_url=self.gateway.base("openai", gateway=gateway_id),
            default_headers={"cf-aig-authorization": f"Bearer {token}"} if api_key else None,
            max_retries=0,
        )

    def chat(self, gateway_id: str = "default", **headers: str) -> Any:
        """A chat completion through the openai SDK; returns the raw response."""
        return self.openai(gateway_id).chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=HI,
            extra_headers=headers,  # type: ignore[arg-type]
        )

    def last_upstream(self) -> dict[str, Any]:
        return self.sim.requests()[-1]


@pytest.fixture
def keyed(database_url: str, tmp_path: Path, sim: Sim) -> Iterator[Keyed]:
    settings = load_settings(
        env={
            "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
            "TOLLGATE_DATABASE_URL": database_url,
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "TOLLGATE_OPERATOR__MASTER_KEY": MASTER_KEY,
            **provider_env(sim.url),
        }
    )
    account = seed_account(database_url)
    sim.clear()
    with serve_in_thread(create_app(settings)) as url:
        cf = cloudflare.Cloudflare(
            api_token=account.token, base_url=f"{url}/client/v4", max_retries=0
        )
        yield Keyed(Gateway(url, database_url, account), sim, cf)
        cf.close()


def authorization(request: dict[str, Any]) -> str:
    return str(request["headers"].get("authorization"))


# --- selection --------------------------------------------------------------------------------


def test_a_stored_key_pays_instead_of_unified_billing(keyed: Keyed) -> None:
    before = books(keyed.gateway)
    unified = keyed.chat()
    assert authorization(keyed.last_upstream()) == f"Bearer {MANAGED_OPENAI_KEY}"
    assert unified.headers["cf-aig-zdr"] == "false"
    charged = books(keyed.gateway)
    assert [e.kind for e in charged.since(before)] == ["usage"]  # Unified Billing drew credits

    keyed.store_key("openai", STORED_OPENAI)
    stored = keyed.chat()
    assert stored.parse().choices[0].message.content
    upstream = keyed.last_upstream()
    assert authorization(upstream) == f"Bearer {STORED_OPENAI}"
    assert keyed.gateway.account.token not in str(upstream["headers"])
    assert stored.headers["cf-aig-zdr"] == "false"
    after = books(keyed.gateway)
    assert after.since(charged) == [] and after.balance_nanos == charged.balance_nanos


def test_the_clients_own_key_wins_over_a_stored_one(keyed: Keyed) -> None:
    keyed.store_key("openai", STORED_OPENAI)
    client = keyed.openai(api_key="sk-client-own-key")
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HI,  # type: ignore[arg-type]
        extra_headers={"cf-aig-byok-alias": "not-stored"},  # ignored: nothing is looked up
    )
    assert authorization(keyed.last_upstream()) == "Bearer sk-client-own-key"


def test_aliases_pick_the_key_and_default_config_marks_the_default(keyed: Keyed) -> None:
    keyed.store_key("openai", STORED_OPENAI)
    keyed.store_key("openai", "sk-team-b-0123456789abcdef", alias="team-b")

    keyed.chat(**{"cf-aig-byok-alias": "team-b"})
    assert authorization(keyed.last_upstream()) == "Bearer sk-team-b-0123456789abcdef"
    keyed.chat()
    assert authorization(keyed.last_upstream()) == f"Bearer {STORED_OPENAI}"

    # A key marked default_config is used without the header (and unmarks none it replaces).
    keyed.store_key("openai", "sk-primary-0123456789abcdef", alias="primary", default_config=True)
    keyed.chat()
    assert authorization(keyed.last_upstream()) == "Bearer sk-primary-0123456789abcdef"
    keyed.chat(**{"cf-aig-byok-alias": "default"})
    assert authorization(keyed.last_upstream()) == f"Bearer {STORED_OPENAI}"


def test_an_unknown_alias_is_a_400_naming_the_header_and_sends_nothing(keyed: Keyed) -> None:
    keyed.store_key("openai", STORED_OPENAI)
    keyed.sim.clear()
    with pytest.raises(openai.BadRequestError) as refused:
        keyed.chat(**{"cf-aig-byok-alias": "nobody"})
    assert refused.value.status_code == 400
    message = str(refused.value)
    assert "cf-aig-byok-alias" in message and "nobody" in message and "default" in message
    assert refused.value.response.headers["cf-aig-log-id"]
    with pytest.raises(openai.BadRequestError, match="cf-aig-byok-alias"):
        keyed.chat(**{"cf-aig-byok-alias": "bad alias!"})
    assert keyed.sim.requests() == []


def test_anthropic_native_and_compat_use_the_stored_key_the_providers_way(keyed: Keyed) -> None:
    keyed.store_key("anthropic", STORED_ANTHROPIC)
    client = anthropic.Anthropic(
        api_key=keyed.gateway.account.token,
        base_url=keyed.gateway.base("anthropic"),
        max_retries=0,
    )
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6",
        max_tokens=32,
        messages=HI,  # type: ignore[arg-type]
    )
    assert raw.headers["cf-aig-zdr"] == "false"
    upstream = keyed.last_upstream()
    assert upstream["path"] == "/anthropic/v1/messages"
    assert upstream["headers"]["x-api-key"] == STORED_ANTHROPIC

    compat = openai.OpenAI(
        api_key=keyed.gateway.account.token, base_url=keyed.gateway.base("compat"), max_retries=0
    )
    before = books(keyed.gateway)
    reply = compat.chat.completions.with_raw_response.create(
        model="anthropic/claude-sonnet-4-6",
        messages=HI,  # type: ignore[arg-type]
    )
    assert reply.parse().choices[0].message.content
    assert reply.headers["cf-aig-zdr"] == "false"
    assert keyed.last_upstream()["headers"]["x-api-key"] == STORED_ANTHROPIC
    assert books(keyed.gateway).since(before) == []  # not paid from credits
    # the openai key stays Unified Billing's
    compat.chat.completions.create(model="openai/gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    assert authorization(keyed.last_upstream()) == f"Bearer {MANAGED_OPENAI_KEY}"


# --- rotation and deletion --------------------------------------------------------------------


def test_rotation_and_deletion_apply_to_the_next_request(keyed: Keyed) -> None:
    created = keyed.store_key("openai", STORED_OPENAI)
    keyed.chat()
    assert authorization(keyed.last_upstream()) == f"Bearer {STORED_OPENAI}"

    rotated = keyed.call("PUT", f"/{created.id}", json={"secret": "sk-rotated-0123456789abcdef"})
    assert rotated.status_code == 200, rotated.text
    result = rotated.json()["result"]
    assert result["secret_id"] != created.secret_id and result["id"] == created.id
    assert result["secret_preview"] == "sk-...cdef"
    keyed.chat()
    assert authorization(keyed.last_upstream()) == "Bearer sk-rotated-0123456789abcdef"

    deleted = keyed.call("DELETE", f"/{created.id}")
    assert deleted.status_code == 200 and deleted.json()["result"]["id"] == created.id
    keyed.chat()
    assert authorization(keyed.last_upstream()) == f"Bearer {MANAGED_OPENAI_KEY}"
    assert keyed.call("GET", f"/{created.id}").status_code == 404


# --- byok_only and cf-aig-no-wholesale ------------------------------------------------------


def test_byok_only_refuses_unified_billing_and_the_header_cannot_relax_it(keyed: Keyed) -> None:
    keyed.create_gateway("strict", byok_only=True)
    keyed.sim.clear()
    for headers in ({}, {"cf-aig-no-wholesale": "false"}):
        with pytest.raises(openai.BadRequestError) as refused:
            keyed.chat("strict", **headers)
        assert "byok_only" in str(refused.value) and "provider_configs" in str(refused.value)
    assert keyed.sim.requests() == []

    keyed.openai("strict", api_key="sk-client-own-key").chat.completions.create(
        model="gpt-4o-mini",
        messages=HI,  # type: ignore[arg-type]
    )
    assert authorization(keyed.last_upstream()) == "Bearer sk-client-own-key"
    keyed.store_key("openai", STORED_OPENAI, gateway_id="strict")
    keyed.chat("strict")
    assert authorization(keyed.last_upstream()) == f"Bearer {STORED_OPENAI}"


def test_no_wholesale_header_refuses_unified_billing_for_one_request(keyed: Keyed) -> None:
    before = books(keyed.gateway)
    with pytest.raises(openai.BadRequestError) as refused:
        keyed.chat(**{"cf-aig-no-wholesale": "true"})
    assert "cf-aig-no-wholesale" in str(refused.value)
    with pytest.raises(openai.BadRequestError, match="cf-aig-no-wholesale"):
        keyed.chat(**{"cf-aig-no-wholesale": "maybe"})
    assert keyed.sim.requests() == [] and books(keyed.gateway).since(before) == []
    keyed.chat(**{"cf-aig-no-wholesale": "false"})
    assert authorization(keyed.last_upstream()) == f"Bearer {MANAGED_OPENAI_KEY}"
    keyed.store_key("openai", STORED_OPENAI)
    keyed.chat(**{"cf-aig-no-wholesale": "true"})
    assert authorization(keyed.last_upstream()) == f"Bearer {STORED_OPENAI}"


def test_byok_only_also_guards_the_unified_api(keyed: Keyed) -> None:
    keyed.create_gateway("strict-compat", byok_only=True)
    compat = openai.OpenAI(
        api_key=keyed.gateway.account.token,
        base_url=keyed.gateway.base("compat", gateway="strict-compat"),
        max_retries=0,
    )
    with pytest.raises(openai.BadRequestError, match="byok_only"):
        compat.chat.completions.create(model="openai/gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    assert keyed.sim.requests() == []


# --- the secret stays secret ------------------------------------------------------------------


async def _every_row(database_url: str) -> str:
    store = Store(database_url)
    try:
        async with store.read() as conn:
            names = await conn.run_sync(lambda c: inspect(c).get_table_names())
            dumped = []
            for name in names:
                rows = await conn.execute(select(text("*")).select_from(table(name)))
                dumped.append(repr(rows.all()))
            return "\n".join(dumped)
    finally:
        await store.close()


def test_the_secret_is_encrypted_at_rest_and_in_no_response(keyed: Keyed) -> None:
    created = keyed.store_key("openai", STORED_OPENAI, rate_limit=100)
    assert created.secret_preview == "sk-...cdef" and created.rate_limit == 100
    assert created.rate_limit_period == 60
    listed = keyed.cf.ai_gateway.provider_configs.list("default", account_id=keyed.account_id)
    assert [c.id for c in listed] == [created.id]
    keyed.responses.append(keyed.call("GET").text)
    keyed.responses.append(keyed.call("GET", f"/{created.id}").text)
    keyed.responses.append(keyed.call("PUT", f"/{created.id}", json={"alias": "renamed"}).text)
    reply = keyed.chat(**{"cf-aig-byok-alias": "renamed"})
    assert authorization(keyed.last_upstream()) == f"Bearer {STORED_OPENAI}"
    keyed.responses.append(reply.http_response.text + str(reply.headers))
    for body in keyed.responses:
        assert STORED_OPENAI not in body and STORED_OPENAI[3:-4] not in body

    dumped = asyncio.run(_every_row(keyed.gateway.database_url))
    assert created.id in dumped  # the row is there...
    assert STORED_OPENAI not in dumped and STORED_OPENAI[3:-4] not in dumped  # ...sealed
    if keyed.gateway.database_url.startswith("sqlite:///"):
        path = Path(keyed.gateway.database_url.removeprefix("sqlite:///"))
        for file in (path, path.with_name(path.name + "-wal")):
            if file.exists():
                assert STORED_OPENAI.encode() not in file.read_bytes()


def test_stored_keys_are_per_gateway(keyed: Keyed) -> None:
    keyed.create_gateway("other")
    keyed.store_key("openai", STORED_OPENAI, gateway_id="other")
    keyed.chat()
    assert authorization(keyed.last_upstream()) == f"Bearer {MANAGED_OPENAI_KEY}"
    keyed.chat("other")
    assert authorization(keyed.last_upstream()) == f"Bearer {STORED_OPENAI}"
    # deleting the gateway deletes its keys
    keyed.cf.ai_gateway.delete("other", account_id=keyed.account_id)
    keyed.create_gateway("other")
    keyed.chat("other")
    assert authorization(keyed.last_upstream()) == f"Bearer {managed_key('openai')}"
