"""`cf-aig-custom-cost` end to end: the official SDKs send it, a real gateway (on SQLite and on
PostgreSQL) meters it, and the ledger, the holds and the spend buckets show it to the nano-dollar.

- BYOK: the client's own key pays the provider; the custom price feeds the spend rules (also for
  a model the catalog does not price) and is metered even with no rule, for the log.
- Unified Billing: refused with a 400 unless the operator allows it; allowed, it is what the
  credits are charged, natively and through the Unified API's translation.
- Bad values: a 400 naming the header, with nothing sent, held or created.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import anthropic
import cloudflare
import openai
import pytest
from sqlalchemy import select

from tests.e2e.conftest import Gateway, Sim
from tests.e2e.test_billing_cost import books, header_nanos, one_usage_entry, run_store
from tests.support.databases import fresh_postgres_database
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS
from tollgate.billing.limits import rule_key
from tollgate.store import Store
from tollgate.store import limits as limits_repo
from tollgate.store.schema_billing import holds

OWN_OPENAI_KEY = "sk-client-own-openai-key"
OWN_ANTHROPIC_KEY = "sk-ant-client-own-key"
UNPRICED_MODEL = "my-finetune-v1"  # not in the catalog
# USD per token -> nano-dollars per token: 1000, 2000 and 100 (cache reads).
RATES = {"per_token_in": 0.000001, "per_token_out": 0.000002, "per_cache_read_token": 1e-7}
IN, OUT, READ = 1000, 2000, 100

StartGateway = Callable[..., AbstractContextManager[Gateway]]


DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@contextmanager
def gateways_on(engine: str, start_gateway: StartGateway) -> Iterator[StartGateway]:
    """Start gateways (conftest's `start_gateway`) on SQLite or on a fresh PostgreSQL database
    (shared with test_metadata.py)."""
    if engine == "sqlite":
        yield lambda **env: start_gateway(**env)
    else:
        with fresh_postgres_database() as url:
            yield lambda **env: start_gateway(url, **env)


@pytest.fixture(params=DATABASES)
def start(request: pytest.FixtureRequest, start_gateway: StartGateway) -> Iterator[StartGateway]:
    with gateways_on(request.param, start_gateway) as starter:
        yield starter


@pytest.fixture
def gateway(start: StartGateway) -> Iterator[Gateway]:
    with start() as running:
        yield running


def management(gateway: Gateway) -> cloudflare.Cloudflare:
    return cloudflare.Cloudflare(
        api_token=gateway.account.token, base_url=f"{gateway.url}/client/v4", max_retries=0
    )


def create_gateway(gateway: Gateway, gateway_id: str, **settings: Any) -> None:
    with management(gateway) as client:
        client.ai_gateway.create(
            account_id=gateway.account.account_id,
            id=gateway_id,
            **{**REQUIRED_GATEWAY_FIELDS, **settings},
        )


def gateway_ids(gateway: Gateway) -> list[str]:
    with management(gateway) as client:
        listed = client.ai_gateway.list(account_id=gateway.account.account_id, per_page=50)
        return sorted(g.id for g in listed)


def byok_openai(gateway: Gateway, gateway_id: str, **headers: str) -> openai.OpenAI:
    """The client's own OpenAI key pays; the tollgate token authenticates in its own header."""
    return openai.OpenAI(
        base_url=gateway.base("openai", gateway=gateway_id),
        api_key=OWN_OPENAI_KEY,
        default_headers={"cf-aig-authorization": f"Bearer {gateway.account.token}", **headers},
        max_retries=0,
    )


def unified_openai(gateway: Gateway, base_url: str | None = None, **headers: str) -> openai.OpenAI:
    """Unified Billing: the tollgate token is the SDK's api_key, the managed key pays."""
    return openai.OpenAI(
        base_url=base_url or gateway.openai_base(),
        api_key=gateway.account.token,
        default_headers=headers,
        max_retries=0,
    )


def hold_rows(gateway: Gateway) -> list[Any]:
    gateway.sync_books()

    async def read(store: Store) -> list[Any]:
        async with store.read() as conn:
            query = select(holds).where(holds.c.account_id == gateway.account.account_id)
            return list(await conn.execute(query.order_by(holds.c.created_at)))

    return run_store(gateway.database_url, read)


def bucket_total(gateway: Gateway, key: str) -> int:
    gateway.sync_books()

    async def read(store: Store) -> int:
        return sum((await limits_repo.bucket_amounts(store, [key])).values())

    return run_store(gateway.database_url, read)


def chat(client: openai.OpenAI, model: str, **extra: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Price this reply."}], **extra
    )


# --- BYOK: spend rules and the log ------------------------------------------------------------


def test_byok_custom_cost_for_an_unpriced_model_counts_exactly_toward_a_spend_rule(
    gateway: Gateway, sim: Sim
) -> None:
    rule = {"id": "cap", "limit": 0.0001, "limit_type": "cost", "window": 86400}
    create_gateway(gateway, "byok", spend_limits={"enabled": True, "rules": [rule]})
    key = rule_key(gateway.account.account_id, "byok", "cap", [])
    before = books(gateway)
    rates = json.dumps(RATES)
    headers = {"x-sim-output-tokens": "7", "x-sim-cached-tokens": "3"}

    with byok_openai(gateway, "byok", **{"cf-aig-custom-cost": rates, **headers}) as client:
        reply = chat(client, UNPRICED_MODEL, max_tokens=7)
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens or 0
    assert (cached, usage.completion_tokens) == (3, 7)
    # OpenAI's prompt_tokens include the cached ones; those pay the cache-read rate.
    first = (usage.prompt_tokens - cached) * IN + cached * READ + usage.completion_tokens * OUT
    assert bucket_total(gateway, key) == first
    (hold,) = hold_rows(gateway)
    assert hold.state == "settled" and hold.charged_nanos == first
    assert hold.uses_credits is False and hold.model == f"openai/{UNPRICED_MODEL}"
    # The client's own key reached the provider; its credits were never touched.
    (forwarded,) = sim.requests()
    assert forwarded["headers"]["authorization"] == f"Bearer {OWN_OPENAI_KEY}"  # type: ignore[index]
    assert books(gateway).balance_nanos == before.balance_nanos

    # A total cost that does not fit what is left of the rule: 429, and the bucket unchanged.
    over = json.dumps({"total_cost": 0.0001})
    with (
        byok_openai(gateway, "byok", **{"cf-aig-custom-cost": over}) as client,
        pytest.raises(openai.RateLimitError, match="spend rule 'cap'"),
    ):
        chat(client, UNPRICED_MODEL)
    assert bucket_total(gateway, key) == first
    # One that fits is charged to the nano-dollar, whatever the usage.
    fits = json.dumps({"total_cost": 0.00005})
    with byok_openai(gateway, "byok", **{"cf-aig-custom-cost": fits}) as client:
        chat(client, "gpt-4o-mini")  # a listed model: the custom price still wins
    assert bucket_total(gateway, key) == first + 50_000
    assert books(gateway).balance_nanos == before.balance_nanos


def test_byok_custom_cost_is_metered_without_any_spend_rule(gateway: Gateway, sim: Sim) -> None:
    before = books(gateway)
    client = anthropic.Anthropic(
        base_url=gateway.base("anthropic"),
        api_key=OWN_ANTHROPIC_KEY,
        default_headers={
            "cf-aig-authorization": f"Bearer {gateway.account.token}",
            "cf-aig-custom-cost": '{"total_cost": 0.002}',
        },
        max_retries=0,
    )
    with client:
        client.messages.create(
            model="claude-my-tune", max_tokens=20, messages=[{"role": "user", "content": "Hi"}]
        )
    (hold,) = hold_rows(gateway)
    assert hold.state == "settled" and hold.charged_nanos == 2_000_000
    assert hold.uses_credits is False and hold.model == "anthropic/claude-my-tune"
    (forwarded,) = sim.requests()
    sent = forwarded["headers"].values()  # type: ignore[attr-defined]
    assert any(OWN_ANTHROPIC_KEY in value for value in sent)  # the client's key, as it sent it
    assert books(gateway).balance_nanos == before.balance_nanos


# --- Unified Billing --------------------------------------------------------------------------


def test_unified_billing_refuses_a_custom_cost_without_the_operators_permission(
    gateway: Gateway, sim: Sim
) -> None:
    before = books(gateway)
    with (
        unified_openai(gateway, **{"cf-aig-custom-cost": '{"total_cost": 0}'}) as client,
        pytest.raises(openai.BadRequestError) as refused,
    ):
        chat(client, "gpt-4o-mini")
    assert "cf-aig-custom-cost" in str(refused.value) and "BYOK" in str(refused.value)
    assert "billing.allow_custom_cost_unified" in str(refused.value)
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == (
        "custom_cost_not_allowed"
    )
    compat = f"{gateway.url}/v1/{gateway.account.account_id}/default/compat"
    with (
        unified_openai(gateway, compat, **{"cf-aig-custom-cost": '{"total_cost": 0}'}) as client,
        pytest.raises(openai.BadRequestError, match="cf-aig-custom-cost"),
    ):
        chat(client, "anthropic/claude-haiku-4-5")
    assert sim.requests() == [] and hold_rows(gateway) == []
    after = books(gateway)
    assert after.balance_nanos == before.balance_nanos and after.entries == before.entries


def test_unified_billing_with_permission_charges_the_custom_price_exactly(
    start: StartGateway, sim: Sim
) -> None:
    with start(TOLLGATE_BILLING__ALLOW_CUSTOM_COST_UNIFIED="true") as gateway:
        # Native OpenAI, per-token rates: the ledger, the header and the balance agree.
        before = books(gateway)
        headers = {"cf-aig-custom-cost": json.dumps(RATES), "x-sim-output-tokens": "9"}
        with unified_openai(gateway, **headers) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Price this reply."}],
                max_tokens=9,
            )
        usage = raw.parse().usage
        assert usage is not None
        cost = usage.prompt_tokens * IN + usage.completion_tokens * OUT
        after = books(gateway)
        assert one_usage_entry(after, before).amount_nanos == -cost
        assert "custom cost" in (one_usage_entry(after, before).note or "")
        assert header_nanos(raw.headers, "cf-aig-cost") == cost
        assert after.balance_nanos == before.balance_nanos - cost

        # Native Anthropic with cache reads and writes: writes default to the input rate.
        before = after
        rates = {"per_token_in": 0.000003, "per_token_out": 0.000015, "per_cache_read_token": 3e-7}
        client = anthropic.Anthropic(
            base_url=gateway.base("anthropic"),
            api_key=gateway.account.token,
            default_headers={
                "cf-aig-custom-cost": json.dumps(rates),
                "x-sim-cached-tokens": "4",
                "x-sim-cache-write-tokens": "2",
                "x-sim-output-tokens": "5",
            },
            max_retries=0,
        )
        with client:
            message = client.messages.create(
                model="claude-haiku-4-5",
                max_tokens=5,
                messages=[{"role": "user", "content": "A prompt long enough to cache a little."}],
            )
        used = message.usage
        assert (used.cache_read_input_tokens, used.cache_creation_input_tokens) == (4, 2)
        # Anthropic's input_tokens exclude the cache reads and writes.
        cost = used.input_tokens * 3000 + 4 * 300 + 2 * 3000 + used.output_tokens * 15000
        after = books(gateway)
        assert one_usage_entry(after, before).amount_nanos == -cost

        # The Unified API, translated to Anthropic, streamed, with a total cost.
        before = after
        compat = f"{gateway.url}/v1/{gateway.account.account_id}/default/compat"
        with unified_openai(
            gateway, compat, **{"cf-aig-custom-cost": '{"total_cost": 0.0123}'}
        ) as c:
            stream = c.chat.completions.create(
                model="anthropic/claude-haiku-4-5",
                messages=[{"role": "user", "content": "Stream a short reply."}],
                max_tokens=16,
                stream=True,
            )
            assert "".join(
                chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
            )
        assert one_usage_entry(books(gateway), before).amount_nanos == -12_300_000

        # A model the catalog does not price stays refused for Unified Billing.
        with (
            unified_openai(gateway, **{"cf-aig-custom-cost": json.dumps(RATES)}) as client,
            pytest.raises(openai.BadRequestError, match="has no price"),
        ):
            chat(client, UNPRICED_MODEL)


# --- bad values change nothing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{not json", "expected {"),
        ('{"per_token_in": 0.001}', "no per_token_out"),
        ('{"total_cost": -1}', "total_cost from 0"),
        ('{"total_cost": "0.01"}', "total_cost as a number"),
        ('{"total_cost": 0.01, "per_token_in": 0.1}', "either total_cost alone"),
        ('{"per_token_in": 1, "per_token_out": 1, "per_image": 1}', "unknown field"),
    ],
)
def test_bad_custom_costs_are_a_400_naming_the_header_and_change_nothing(
    gateway: Gateway, sim: Sim, value: str, says: str
) -> None:
    before = books(gateway)
    with (
        byok_openai(gateway, "never-created", **{"cf-aig-custom-cost": value}) as client,
        pytest.raises(openai.BadRequestError) as refused,
    ):
        chat(client, "gpt-4o-mini")
    assert "Invalid cf-aig-custom-cost header" in str(refused.value) and says in str(refused.value)
    assert refused.value.response.headers["cf-aig-log-id"]
    assert sim.requests() == [] and hold_rows(gateway) == []
    assert "never-created" not in gateway_ids(gateway)
    assert books(gateway).entries == before.entries
