"""`cf-aig-metadata` and `cf-aig-event-id` end to end, on SQLite and PostgreSQL: the official
SDKs tag requests, and the gateway's spend rules partition and filter on the tags.

A rule partitioned by a metadata key gives each value its own bucket: once one value's spend is
used up its requests are refused (429) while another value still passes. A rule filtered on a
value applies only to requests carrying it. Bad header values are a 400 naming the header, with
nothing sent, held or created.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.conftest import Gateway, Sim
from tests.e2e.test_billing_cost import books, one_usage_entry
from tests.e2e.test_custom_cost import (
    DATABASES,
    StartGateway,
    bucket_total,
    create_gateway,
    gateway_ids,
    gateways_on,
    hold_rows,
)
from tollgate.billing.limits import rule_key

# gpt-4o-mini: $0.15 in, $0.60 out per million tokens. A request capped at (and answering with)
# 200 output tokens holds and costs about $0.000125; two of them do not fit under $0.0002.
MAX_TOKENS = 200
TEAM_LIMIT_USD = 0.0002


@pytest.fixture(params=DATABASES)
def gateway(request: pytest.FixtureRequest, start_gateway: StartGateway) -> Iterator[Gateway]:
    with gateways_on(request.param, start_gateway) as start, start() as running:
        yield running


def tagged_openai(gateway: Gateway, gateway_id: str, metadata: dict[str, Any] | None) -> Any:
    headers = {"x-sim-output-tokens": str(MAX_TOKENS)}
    if metadata is not None:
        headers["cf-aig-metadata"] = json.dumps(metadata)
    return openai.OpenAI(
        base_url=gateway.base("openai", gateway=gateway_id),
        api_key=gateway.account.token,
        default_headers=headers,
        max_retries=0,
    )


def ask(client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Summarise the team's week."}],
        max_tokens=MAX_TOKENS,
    )


def test_a_rule_partitioned_by_metadata_refuses_one_spent_value_and_passes_another(
    gateway: Gateway,
) -> None:
    rule = {
        "id": "per-team",
        "limit": TEAM_LIMIT_USD,
        "limit_type": "cost",
        "window": 86400,
        "technique": "fixed",
        "metadata": {"team": {"mode": "partition"}},
    }
    create_gateway(gateway, "teams", spend_limits={"enabled": True, "rules": [rule]})
    account = gateway.account.account_id

    def bucket(team: str | None) -> int:
        return bucket_total(gateway, rule_key(account, "teams", "per-team", [("team", team)]))

    before = books(gateway)
    with tagged_openai(gateway, "teams", {"team": "red", "user": 7}) as red:
        ask(red)
        red_cost = -one_usage_entry(books(gateway), before).amount_nanos
        assert red_cost > 0 and bucket("red") == red_cost
        with pytest.raises(openai.RateLimitError) as refused:
            ask(red)
    assert "spend rule 'per-team' for team=red" in str(refused.value)
    assert refused.value.response.headers["retry-after"]
    assert bucket("red") == red_cost  # the refused request held nothing

    with tagged_openai(gateway, "teams", {"team": "blue"}) as blue:
        ask(blue)
    assert bucket("blue") > 0 and bucket("red") == red_cost
    # Requests without the key share one bucket of their own: leaving it out escapes nothing.
    with tagged_openai(gateway, "teams", None) as untagged:
        ask(untagged)
        with pytest.raises(openai.RateLimitError, match="team=\\(absent\\)"):
            ask(untagged)
    assert bucket(None) > 0


def test_a_rule_filtered_on_a_metadata_value_applies_only_to_that_value(
    gateway: Gateway, sim: Sim
) -> None:
    rule = {
        "id": "prod-only",
        "limit": 0.000001,  # a thousand nano-dollars: no request fits
        "limit_type": "cost",
        "window": 3600,
        "metadata": {"env": {"mode": "filter", "values": ["prod", "1"]}},
    }
    create_gateway(gateway, "envs", spend_limits={"enabled": True, "rules": [rule]})

    def message(env: object) -> None:
        client = anthropic.Anthropic(
            base_url=gateway.base("anthropic", gateway="envs"),
            api_key=gateway.account.token,
            default_headers={"cf-aig-metadata": json.dumps({"env": env, "team": "x"})},
            max_retries=0,
        )
        with client:
            client.messages.create(
                model="claude-haiku-4-5",
                max_tokens=16,
                messages=[{"role": "user", "content": "Deploy status?"}],
            )

    with pytest.raises(anthropic.RateLimitError, match="spend rule 'prod-only'"):
        message("prod")
    with pytest.raises(anthropic.RateLimitError, match="prod-only"):
        message(1)  # a number matches the rule's value in its JSON form
    assert sim.requests() == []
    message("dev")
    message(True)
    assert len(sim.requests()) == 2


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("cf-aig-metadata", "{not json", "expected a JSON object"),
        ("cf-aig-metadata", '["team", "red"]', "expected a JSON object"),
        ("cf-aig-metadata", json.dumps({f"k{i}": i for i in range(6)}), "at most 5 entries"),
        ("cf-aig-metadata", json.dumps({"team": "x" * 9000}), "at most 8192 bytes"),
        ("cf-aig-event-id", "e" * 257, "at most 256 characters"),
    ],
)
def test_bad_metadata_and_event_ids_are_a_400_naming_the_header_and_change_nothing(
    gateway: Gateway, sim: Sim, name: str, value: str, says: str
) -> None:
    before = books(gateway)
    account = gateway.account.account_id
    native = openai.OpenAI(
        base_url=gateway.base("openai", gateway="never-created"),
        api_key=gateway.account.token,
        default_headers={name: value},
        max_retries=0,
    )
    rest = openai.OpenAI(  # the REST surface: the gateway comes from a header
        base_url=f"{gateway.url}/client/v4/accounts/{account}/ai/v1",
        api_key=gateway.account.token,
        default_headers={name: value, "cf-aig-gateway-id": "never-created"},
        max_retries=0,
    )
    for client, model in ((native, "gpt-4o-mini"), (rest, "openai/gpt-4o-mini")):
        with client, pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hello"}]
            )
        assert f"Invalid {name} header" in str(refused.value) and says in str(refused.value)
        assert refused.value.response.headers["cf-aig-log-id"]
    assert sim.requests() == [] and hold_rows(gateway) == []
    assert "never-created" not in gateway_ids(gateway)
    assert books(gateway).entries == before.entries


def test_nested_metadata_values_are_ignored_and_the_flat_ones_still_count(
    gateway: Gateway,
) -> None:
    rule = {
        "id": "per-team",
        "limit": TEAM_LIMIT_USD,
        "limit_type": "cost",
        "window": 86400,
        "metadata": {"team": {"mode": "partition"}},
    }
    create_gateway(gateway, "nested", spend_limits={"enabled": True, "rules": [rule]})
    with tagged_openai(gateway, "nested", {"team": "red", "profile": {"tier": "gold"}}) as client:
        ask(client)
    key = rule_key(gateway.account.account_id, "nested", "per-team", [("team", "red")])
    assert bucket_total(gateway, key) > 0
