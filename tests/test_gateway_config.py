"""The gateway object's validation, table-driven: what is accepted and stored, what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.errors import InvalidRequest
from tollgate.gateway_config import (
    default_gateway_config,
    parse_gateway_create,
    parse_gateway_update,
    validate_gateway_id,
)

REQUIRED: dict[str, Any] = {
    "cache_invalidate_on_update": False,
    "cache_ttl": 0,
    "collect_logs": True,
    "rate_limiting_interval": 0,
    "rate_limiting_limit": 0,
}


def create(**fields: Any) -> dict[str, Any]:
    _, config = parse_gateway_create({"id": "gw", **REQUIRED, **fields})
    return config


def rule(**fields: Any) -> dict[str, Any]:
    return {"limit": 10, "limitType": "cost", "window": 3600, **fields}


def test_default_config_is_cloudflares_default_gateway() -> None:
    config = default_gateway_config()
    assert config["authentication"] is True and config["collect_logs"] is True
    assert config["cache_ttl"] == 0
    assert config["rate_limiting_limit"] == 0 and config["rate_limiting_interval"] == 0
    assert config["byok_only"] is False and config["zdr"] is False
    assert config["workers_ai_billing_mode"] == "postpaid"
    assert config["spend_limits"] == {"enabled": False, "rules": []}
    default_gateway_config()["spend_limits"]["rules"].append("x")
    assert default_gateway_config()["spend_limits"]["rules"] == []  # a fresh dict each call


def test_a_minimal_create_is_the_defaults() -> None:
    gateway_id, config = parse_gateway_create({"id": "my-gw_1", **REQUIRED})
    assert gateway_id == "my-gw_1"
    assert config == default_gateway_config()


# (given fields, expected stored values)
ACCEPTED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {"cache_ttl": None, "rate_limiting_limit": None},
        {"cache_ttl": None, "rate_limiting_limit": None},
    ),
    ({"cache_ttl": 2592000}, {"cache_ttl": 2592000}),
    ({"rate_limiting_technique": "sliding"}, {"rate_limiting_technique": "sliding"}),
    ({"rate_limiting_technique": None}, {"rate_limiting_technique": None}),
    ({"authentication": False}, {"authentication": False}),
    (
        {"log_management": 10_000_000, "log_management_strategy": "STOP_INSERTING"},
        {"log_management": 10_000_000, "log_management_strategy": "STOP_INSERTING"},
    ),
    (
        {"retry_max_attempts": 5, "retry_delay": 5000, "retry_backoff": "linear"},
        {"retry_max_attempts": 5, "retry_delay": 5000, "retry_backoff": "linear"},
    ),
    ({"workers_ai_billing_mode": "unified"}, {"workers_ai_billing_mode": "unified"}),
    (
        {"store_id": "abc", "log_classification": False},
        {"store_id": "abc", "log_classification": False},
    ),
    ({"spend_limits": None}, {"spend_limits": {"enabled": False, "rules": []}}),
    ({"spend_limits": {"enabled": True}}, {"spend_limits": {"enabled": True, "rules": []}}),
    (
        {"spend_limits": {"enabled": True, "rules": [rule(limit=0.5)]}},
        {
            "spend_limits": {
                "enabled": True,
                "rules": [
                    {
                        "id": "rule-1",
                        "enabled": True,
                        "limit": 0.5,
                        "limitType": "cost",
                        "window": 3600,
                        "technique": "sliding",
                    }
                ],
            }
        },
    ),
    (
        {
            "spend_limits": {
                "rules": [
                    rule(
                        id="per-user",
                        enabled=False,
                        technique="fixed",
                        metadata={
                            "user": {"mode": "partition"},
                            "team": {"mode": "filter", "values": ["a"]},
                        },
                        model={"mode": "filter", "values": ["openai/gpt-4o"]},
                        provider={"mode": "filter", "values": ["openai"]},
                    )
                ]
            }
        },
        {
            "spend_limits": {
                "enabled": False,
                "rules": [
                    {
                        "id": "per-user",
                        "enabled": False,
                        "limit": 10,
                        "limitType": "cost",
                        "window": 3600,
                        "technique": "fixed",
                        "metadata": {
                            "user": {"mode": "partition"},
                            "team": {"mode": "filter", "values": ["a"]},
                        },
                        "model": {"mode": "filter", "values": ["openai/gpt-4o"]},
                        "provider": {"mode": "filter", "values": ["openai"]},
                    }
                ],
            }
        },
    ),
    (
        {"dlp": {"action": "BLOCK", "enabled": True, "profiles": []}},
        {"dlp": {"action": "BLOCK", "enabled": True, "profiles": []}},
    ),
    (
        {
            "dlp": {
                "enabled": True,
                "policies": [
                    {
                        "id": "p",
                        "action": "FLAG",
                        "check": ["REQUEST", "RESPONSE"],
                        "enabled": True,
                        "profiles": ["x"],
                    }
                ],
            }
        },
        {
            "dlp": {
                "enabled": True,
                "policies": [
                    {
                        "id": "p",
                        "action": "FLAG",
                        "check": ["REQUEST", "RESPONSE"],
                        "enabled": True,
                        "profiles": ["x"],
                    }
                ],
            }
        },
    ),
    (
        {"guardrails": {"prompt": {"P1": "BLOCK"}, "response": {"S13": "FLAG"}}},
        {"guardrails": {"prompt": {"P1": "BLOCK"}, "response": {"S13": "FLAG"}}},
    ),
    (
        {"otel": [{"url": "http://collector:4318", "headers": {}, "content_type": "protobuf"}]},
        {"otel": [{"url": "http://collector:4318", "headers": {}, "content_type": "protobuf"}]},
    ),
    (
        {"otel": None, "guardrails": None, "stripe": None},
        {"otel": None, "guardrails": None, "stripe": None},
    ),
    (
        {"stripe": {"authorization": "sk", "usage_events": [{"payload": "p"}]}},
        {"stripe": {"authorization": "sk", "usage_events": [{"payload": "p"}]}},
    ),
    # read-only fields of the object are ignored, so a client may send back what it read
    ({"created_at": "x", "modified_at": "y", "is_default": True, "account_tag": "t"}, {}),
]


@pytest.mark.parametrize(("fields", "stored"), ACCEPTED)
def test_accepted_settings_are_stored(fields: dict[str, Any], stored: dict[str, Any]) -> None:
    config = create(**fields)
    assert config == {**default_gateway_config(), **stored}


# (fields sent on create, error code, param, text the message must contain)
REFUSED: list[tuple[dict[str, Any], str, str, str]] = [
    ({"id": "Upper"}, "invalid_field", "id", "id must be 1 to 64 characters"),
    ({"id": "a b"}, "invalid_field", "id", "lowercase letters, digits"),
    ({"id": ""}, "invalid_field", "id", 'got ""'),
    ({"id": "é"}, "invalid_field", "id", "id must be"),
    ({"id": "a" * 65}, "invalid_field", "id", "id must be"),
    ({"id": 7}, "invalid_field", "id", "got 7"),
    ({"cache_ttl": -1}, "invalid_field", "cache_ttl", "from 0 to 2592000 or null; got -1"),
    ({"cache_ttl": 2592001}, "invalid_field", "cache_ttl", "cache_ttl must be"),
    ({"cache_ttl": "60"}, "invalid_field", "cache_ttl", 'got "60"'),
    ({"cache_ttl": 60.0}, "invalid_field", "cache_ttl", "got 60.0"),
    ({"cache_ttl": True}, "invalid_field", "cache_ttl", "got true"),
    ({"collect_logs": "yes"}, "invalid_field", "collect_logs", "true or false"),
    ({"collect_logs": None}, "invalid_field", "collect_logs", "got null"),
    ({"cache_invalidate_on_update": 1}, "invalid_field", "cache_invalidate_on_update", "got 1"),
    ({"rate_limiting_interval": -1}, "invalid_field", "rate_limiting_interval", "from 0"),
    ({"rate_limiting_limit": 2**40}, "invalid_field", "rate_limiting_limit", "to 2147483647"),
    (
        {"rate_limiting_technique": "token-bucket"},
        "invalid_field",
        "rate_limiting_technique",
        '"fixed" or "sliding" or null',
    ),
    ({"authentication": "false"}, "invalid_field", "authentication", "true or false"),
    ({"log_management": 9_999}, "invalid_field", "log_management", "from 10000 to 10000000"),
    (
        {"log_management_strategy": "DROP"},
        "invalid_field",
        "log_management_strategy",
        '"STOP_INSERTING" or "DELETE_OLDEST"',
    ),
    ({"logpush_public_key": ""}, "invalid_field", "logpush_public_key", "non-empty string"),
    ({"retry_max_attempts": 0}, "invalid_field", "retry_max_attempts", "from 1 to 5"),
    ({"retry_max_attempts": 6}, "invalid_field", "retry_max_attempts", "from 1 to 5"),
    ({"retry_delay": 5001}, "invalid_field", "retry_delay", "milliseconds from 0 to 5000"),
    ({"retry_backoff": "fibonacci"}, "invalid_field", "retry_backoff", '"exponential"'),
    ({"zdr": "true"}, "invalid_field", "zdr", "true or false"),
    ({"byok_only": 0}, "invalid_field", "byok_only", "true or false"),
    ({"workers_ai_billing_mode": None}, "invalid_field", "workers_ai_billing_mode", '"postpaid"'),
    ({"store_id": 5}, "invalid_field", "store_id", "string"),
    ({"colour": "red"}, "unknown_field", "colour", "unknown field 'colour'"),
    ({"b": 1, "a": 2}, "unknown_field", "a", "unknown field 'a', 'b'"),
    ({"spend_limits": []}, "invalid_field", "spend_limits", "an object"),
    ({"spend_limits": {"on": True}}, "unknown_field", "spend_limits.on", "unknown field 'on'"),
    (
        {"spend_limits": {"enabled": "yes"}},
        "invalid_field",
        "spend_limits.enabled",
        "true or false",
    ),
    (
        {"spend_limits": {"rules": [rule()] * 21}},
        "invalid_field",
        "spend_limits.rules",
        "at most 20 rules",
    ),
    (
        {"spend_limits": {"rules": [{"limitType": "cost", "window": 60}]}},
        "missing_field",
        "spend_limits.rules[0].limit",
        "spend_limits.rules[0].limit is required",
    ),
    (
        {"spend_limits": {"rules": [rule(limit=0)]}},
        "invalid_field",
        "spend_limits.rules[0].limit",
        "above 0",
    ),
    (
        {"spend_limits": {"rules": [rule(limit=-3)]}},
        "invalid_field",
        "spend_limits.rules[0].limit",
        "above 0",
    ),
    (
        {"spend_limits": {"rules": [rule(limit=True)]}},
        "invalid_field",
        "spend_limits.rules[0].limit",
        "got true",
    ),
    (
        {"spend_limits": {"rules": [rule(limit="5")]}},
        "invalid_field",
        "spend_limits.rules[0].limit",
        'got "5"',
    ),
    (
        {"spend_limits": {"rules": [rule(limit=2e9)]}},
        "invalid_field",
        "spend_limits.rules[0].limit",
        "at most 1000000000",
    ),
    (
        {"spend_limits": {"rules": [rule(limitType="tokens")]}},
        "invalid_field",
        "spend_limits.rules[0].limitType",
        '"cost"',
    ),
    (
        {"spend_limits": {"rules": [rule(window=0)]}},
        "invalid_field",
        "spend_limits.rules[0].window",
        "seconds from 1",
    ),
    (
        {"spend_limits": {"rules": [rule(window=86400.5)]}},
        "invalid_field",
        "spend_limits.rules[0].window",
        "integer",
    ),
    (
        {"spend_limits": {"rules": [rule(technique="calendar")]}},
        "invalid_field",
        "spend_limits.rules[0].technique",
        '"fixed" or "sliding"',
    ),
    (
        {"spend_limits": {"rules": [rule(limit_type="cost")]}},
        "unknown_field",
        "spend_limits.rules[0].limit_type",
        "unknown field 'limit_type'",
    ),
    (
        {"spend_limits": {"rules": [rule(id="a"), rule(id="a")]}},
        "invalid_field",
        "spend_limits.rules",
        "'a' is used twice",
    ),
    (
        {"spend_limits": {"rules": [rule(metadata={"k": {"mode": "split"}})]}},
        "invalid_field",
        "spend_limits.rules[0].metadata.k",
        '{"mode": "partition"}',
    ),
    (
        {"spend_limits": {"rules": [rule(metadata={"k": {"mode": "filter", "values": []}})]}},
        "invalid_field",
        "spend_limits.rules[0].metadata.k.values",
        "at least one item",
    ),
    (
        {
            "spend_limits": {
                "rules": [rule(metadata={f"k{i}": {"mode": "partition"} for i in range(6)})]
            }
        },
        "invalid_field",
        "spend_limits.rules[0].metadata",
        "1 to 5 metadata keys",
    ),
    (
        {"spend_limits": {"rules": [rule(model={"mode": "partition"})]}},
        "missing_field",
        "spend_limits.rules[0].model.values",
        "is required",
    ),
    (
        {"spend_limits": {"rules": [rule(provider={"mode": "filter", "values": [3]})]}},
        "invalid_field",
        "spend_limits.rules[0].provider.values[0]",
        "non-empty string",
    ),
    (
        {"dlp": {"action": "ALLOW", "enabled": True, "profiles": []}},
        "invalid_field",
        "dlp.action",
        '"BLOCK" or "FLAG"',
    ),
    ({"dlp": {"enabled": True}}, "missing_field", "dlp.action", "dlp.action is required"),
    (
        {"dlp": {"enabled": True, "policies": [{"id": "p"}]}},
        "missing_field",
        "dlp.policies[0].action",
        "is required",
    ),
    ({"dlp": None}, "invalid_field", "dlp", "an object"),
    (
        {"guardrails": {"prompt": {"S14": "FLAG"}, "response": {}}},
        "unknown_field",
        "guardrails.prompt.S14",
        "unknown field 'S14'",
    ),
    (
        {"guardrails": {"prompt": {"S1": "IGNORE"}, "response": {}}},
        "invalid_field",
        "guardrails.prompt.S1",
        '"FLAG" or "BLOCK"',
    ),
    ({"otel": [{"url": "ftp://x", "headers": {}}]}, "invalid_field", "otel[0].url", "http"),
    (
        {"otel": [{"url": "http://x", "headers": {"a": 1}}]},
        "invalid_field",
        "otel[0].headers",
        "string values",
    ),
    ({"otel": {"url": "http://x"}}, "invalid_field", "otel", "a list"),
    ({"stripe": {"authorization": "sk"}}, "missing_field", "stripe.usage_events", "is required"),
]


@pytest.mark.parametrize(("fields", "code", "param", "text"), REFUSED)
def test_refused_settings_name_the_field_and_what_is_expected(
    fields: dict[str, Any], code: str, param: str, text: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_gateway_create({"id": "gw", **REQUIRED, **fields})
    assert (caught.value.code, caught.value.param) == (code, param)
    assert text in caught.value.message
    assert caught.value.status == 400


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_cloudflares_required_fields_are_required(missing: str) -> None:
    body = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(InvalidRequest, match=f"missing required field '{missing}'") as caught:
        parse_gateway_update(body, "gw")
    assert (caught.value.code, caught.value.param) == ("missing_field", missing)


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ([], "must be a JSON object"),
        ("gw", "must be a JSON object"),
        (None, "got null"),
        ({**REQUIRED}, "id is required"),
    ],
)
def test_create_needs_an_object_with_an_id(body: object, text: str) -> None:
    with pytest.raises(InvalidRequest, match=text):
        parse_gateway_create(body)


def test_update_replaces_every_setting_and_keeps_the_id() -> None:
    assert parse_gateway_update({**REQUIRED, "zdr": True}, "gw") == {
        **default_gateway_config(),
        "zdr": True,
    }
    assert parse_gateway_update({**REQUIRED, "id": "gw"}, "gw") == default_gateway_config()
    with pytest.raises(InvalidRequest, match="id cannot be changed") as caught:
        parse_gateway_update({**REQUIRED, "id": "other"}, "gw")
    assert caught.value.param == "id"


def test_rules_without_ids_get_stable_ids_that_avoid_given_ones() -> None:
    body = {"spend_limits": {"rules": [rule(), rule(id="rule-2"), rule(), rule()]}}
    first = create(**body)["spend_limits"]["rules"]
    assert [r["id"] for r in first] == ["rule-1", "rule-2", "rule-3", "rule-4"]
    assert [r["id"] for r in create(**body)["spend_limits"]["rules"]] == [
        "rule-1",
        "rule-2",
        "rule-3",
        "rule-4",
    ]


@pytest.mark.parametrize("gateway_id", ["a", "default", "a-b_c-9", "x" * 64])
def test_valid_gateway_ids(gateway_id: str) -> None:
    assert validate_gateway_id(gateway_id) == gateway_id


def test_messages_show_long_values_shortened() -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_gateway_id("A" * 500)
    assert len(caught.value.message) < 200 and caught.value.message.endswith("...")
