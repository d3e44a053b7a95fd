"""Which limits apply to a request: pure, table-tested on rules as gateway configs store them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tollgate.billing import limits
from tollgate.billing.limits import LimitSpec, applicable_limits, gateway_limits
from tollgate.billing.windows import Window
from tollgate.gateway_config import spend_limits as validate_spend_limits

ACCOUNT = "a" * 32


@dataclass(frozen=True)
class Config:
    amount_nanos: int
    duration: str
    strategy: str


def rules(*raw: dict[str, Any], enabled: bool = True) -> dict[str, Any]:
    """Rules through the gateway config validator, as they are stored."""
    return validate_spend_limits({"enabled": enabled, "rules": list(raw)}, "spend_limits")


def rule(**fields: Any) -> dict[str, Any]:
    return {"limit": 5, "limitType": "cost", "window": 3600, **fields}


def specs(spend_limits: dict[str, Any], **request: Any) -> list[LimitSpec]:
    request.setdefault("model", "gpt-4o")
    request.setdefault("provider", "openai")
    return gateway_limits(ACCOUNT, "gw", spend_limits, **request)


@pytest.mark.parametrize(
    ("duration", "strategy", "window"),
    [
        ("daily", "fixed", Window.calendar("day")),
        ("weekly", "fixed", Window.calendar("week")),
        ("monthly", "fixed", Window.calendar("month")),
        ("daily", "sliding", Window.sliding(86_400)),
        ("weekly", "sliding", Window.sliding(7 * 86_400)),
        ("monthly", "sliding", Window.sliding(30 * 86_400)),
    ],
)
def test_account_limit_windows(duration: str, strategy: str, window: Window) -> None:
    spec = limits.account_limit(ACCOUNT, Config(1_000, duration, strategy))
    assert spec == LimitSpec(
        key=f"account:{ACCOUNT}",
        limit_nanos=1_000,
        window=window,
        label=f"account {duration} spending limit ({strategy})",
    )


@pytest.mark.parametrize(("duration", "strategy"), [("hourly", "fixed"), ("daily", "rolling")])
def test_account_limit_rejects_unknown_shapes(duration: str, strategy: str) -> None:
    with pytest.raises(ValueError):
        limits.account_limit(ACCOUNT, Config(1, duration, strategy))


def test_rule_fields_become_a_spec() -> None:
    [spec] = specs(rules(rule(id="cap", limit=0.1, window=60, technique="fixed")))
    assert spec == LimitSpec(
        key=f"gateway:{ACCOUNT}:gw:cap",
        limit_nanos=100_000_000,  # 0.1 USD exactly, never via a binary float
        window=Window.fixed(60),
        label="gateway 'gw' spend rule 'cap'",
    )
    [sliding] = specs(rules(rule(id="s", limit=1_000_000_000)))  # technique defaults to sliding
    assert sliding.window == Window.sliding(3600)
    assert sliding.limit_nanos == 10**18


@pytest.mark.parametrize(
    ("spend_limits", "applies"),
    [
        (rules(rule()), True),
        (rules(rule(), enabled=False), False),
        (rules(rule(enabled=False)), False),
        ({"enabled": False, "rules": []}, False),
        (None, False),
    ],
)
def test_disabled_rules_and_settings(spend_limits: dict[str, Any] | None, applies: bool) -> None:
    assert bool(gateway_limits(ACCOUNT, "gw", spend_limits, model="m", provider="p")) is applies


@pytest.mark.parametrize(
    ("model_filter", "provider_filter", "model", "provider", "applies"),
    [
        (["gpt-4o"], None, "gpt-4o", "openai", True),
        (["openai/gpt-4o"], None, "gpt-4o", "openai", True),
        (["gpt-4o-mini"], None, "gpt-4o", "openai", False),
        (["GPT-4o"], None, "gpt-4o", "openai", False),  # exact, case-sensitive
        (None, ["openai"], "gpt-4o", "openai", True),
        (None, ["anthropic", "openai"], "gpt-4o", "openai", True),
        (None, ["anthropic"], "gpt-4o", "openai", False),
        (["gpt-4o"], ["anthropic"], "gpt-4o", "openai", False),  # every filter must pass
        (["gpt-4o"], ["openai"], None, "openai", False),  # no model, model filter
    ],
)
def test_model_and_provider_filters(
    model_filter: list[str] | None,
    provider_filter: list[str] | None,
    model: str | None,
    provider: str,
    applies: bool,
) -> None:
    fields: dict[str, Any] = {}
    if model_filter:
        fields["model"] = {"mode": "filter", "values": model_filter}
    if provider_filter:
        fields["provider"] = {"mode": "filter", "values": provider_filter}
    found = specs(rules(rule(**fields)), model=model, provider=provider)
    assert bool(found) is applies


@pytest.mark.parametrize(
    ("metadata", "applies"),
    [
        ({"team": "red"}, True),
        ({"team": "blue", "other": "x"}, True),
        ({"team": "green"}, False),
        ({}, False),  # a filter needs the key
        ({"team": 7}, True),  # numbers compare in their JSON form
        ({"team": True}, True),
    ],
)
def test_metadata_filter(metadata: dict[str, Any], applies: bool) -> None:
    spend = rules(
        rule(metadata={"team": {"mode": "filter", "values": ["red", "blue", "7", "true"]}})
    )
    assert bool(specs(spend, metadata=metadata)) is applies


def test_metadata_partition_gives_each_value_its_own_key() -> None:
    spend = rules(rule(id="per-user", metadata={"user": {"mode": "partition"}}))
    alice = specs(spend, metadata={"user": "alice"})[0]
    bob = specs(spend, metadata={"user": "bob"})[0]
    alice_again = specs(spend, metadata={"user": "alice", "unrelated": "x"})[0]
    absent = specs(spend, metadata={})[0]
    absent_again = specs(spend, metadata={"other": "y"})[0]
    assert alice.key == alice_again.key
    assert len({alice.key, bob.key, absent.key}) == 3
    assert absent.key == absent_again.key  # no value: one shared bucket, not an escape
    assert "user=alice" in alice.label and "user=(absent)" in absent.label
    assert specs(spend, metadata={"user": 1})[0].key == specs(spend, metadata={"user": "1"})[0].key
    for spec in (alice, bob, absent):
        assert spec.key.startswith(f"gateway:{ACCOUNT}:gw:per-user:")


def test_partition_and_filter_combine() -> None:
    spend = rules(
        rule(
            metadata={
                "user": {"mode": "partition"},
                "env": {"mode": "filter", "values": ["prod"]},
            }
        )
    )
    assert specs(spend, metadata={"user": "a", "env": "dev"}) == []
    a = specs(spend, metadata={"user": "a", "env": "prod"})
    b = specs(spend, metadata={"user": "b", "env": "prod"})
    assert len(a) == len(b) == 1 and a[0].key != b[0].key


def test_rule_ids_are_quoted_so_keys_cannot_collide() -> None:
    spend = rules(rule(id="a:b"), rule(id="a"), rule(id="a/b c"))
    keys = [spec.key for spec in specs(spend)]
    assert keys == [
        f"gateway:{ACCOUNT}:gw:a%3Ab",
        f"gateway:{ACCOUNT}:gw:a",
        f"gateway:{ACCOUNT}:gw:a%2Fb%20c",
    ]


def test_rules_without_ids_get_stable_keys() -> None:
    first = [s.key for s in specs(rules(rule(), rule(window=60)))]
    second = [s.key for s in specs(rules(rule(), rule(window=60)))]
    assert first == second == [f"gateway:{ACCOUNT}:gw:rule-1", f"gateway:{ACCOUNT}:gw:rule-2"]


def test_applicable_limits_combines_account_and_gateway_sorted_by_key() -> None:
    spend = rules(rule(id="z"), rule(id="b", model={"mode": "filter", "values": ["other"]}))
    found = applicable_limits(
        ACCOUNT,
        account_limit_config=Config(10, "daily", "fixed"),
        gateway_id="gw",
        spend_limits=spend,
        model="gpt-4o",
        provider="openai",
    )
    assert [s.key for s in found] == [f"account:{ACCOUNT}", f"gateway:{ACCOUNT}:gw:z"]


def test_the_account_limit_applies_to_unified_billing_only() -> None:
    found = applicable_limits(
        ACCOUNT,
        account_limit_config=Config(10, "daily", "fixed"),
        gateway_id="gw",
        spend_limits=rules(rule(id="r")),
        model="gpt-4o",
        provider="openai",
        unified_billing=False,
    )
    assert [s.key for s in found] == [f"gateway:{ACCOUNT}:gw:r"]


def test_no_limits_at_all() -> None:
    assert (
        applicable_limits(
            ACCOUNT,
            account_limit_config=None,
            gateway_id=None,
            spend_limits=None,
            model=None,
            provider=None,
        )
        == []
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [("x", "x"), (1, "1"), (1.5, "1.5"), (True, "true"), (False, "false"), ("", "")],
)
def test_metadata_text(value: object, text: str) -> None:
    assert limits.metadata_text(value) == text


@pytest.mark.parametrize(
    ("key", "belongs"),
    [
        (f"account:{ACCOUNT}", True),
        (f"gateway:{ACCOUNT}:gw:r", True),
        (f"account:{ACCOUNT}x", False),
        (f"gateway:{ACCOUNT}x:gw:r", False),
        (f"gateway:{'b' * 32}:gw:r", False),
    ],
)
def test_every_key_belongs_to_exactly_its_account(key: str, belongs: bool) -> None:
    assert limits.belongs_to(key, ACCOUNT) is belongs
