"""The Gateways pages' pure parts: the create, settings and spend-rule forms (what they store,
what they refuse and with which words) and what the pages show (windows, rules, URLs)."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.dashboard.gateways_forms import (
    FormErrors,
    parse_new_gateway,
    parse_settings,
    parse_spend_rule,
    settings_values,
    with_rule_added,
    with_rule_removed,
    with_spend_limits_enabled,
)
from tollgate.dashboard.gateways_view import (
    curl_example,
    describe_seconds,
    endpoints,
    glance,
    rule_view,
)
from tollgate.errors import InvalidRequest
from tollgate.gateway_config import SPEND_RULES_MAX, default_gateway_config, parse_gateway_update


def _config(**changes: Any) -> dict[str, Any]:
    return {**default_gateway_config(), **changes}


def _errors(call: Any, *args: Any) -> dict[str, str]:
    with pytest.raises(FormErrors) as caught:
        call(*args)
    return caught.value.errors


# --- create -------------------------------------------------------------------------------------


def test_a_new_gateway_gets_the_apis_defaults() -> None:
    gateway_id, config = parse_new_gateway({"id": " team-a_1 "})
    assert gateway_id == "team-a_1"
    assert config == default_gateway_config()


@pytest.mark.parametrize(
    ("typed", "words"),
    [
        ("", "Enter a gateway id"),
        ("Team-A", "lowercase letters"),
        ("team a", "lowercase letters"),
        ("x" * 65, "1 to 64 characters"),
        ("über", "lowercase letters"),
    ],
)
def test_a_malformed_gateway_id_is_refused_in_words(typed: str, words: str) -> None:
    assert words in _errors(parse_new_gateway, {"id": typed})["id"]


# --- settings -----------------------------------------------------------------------------------


def test_the_settings_form_round_trips_a_stored_config() -> None:
    stored = _config(
        zdr=True,
        cache_ttl=300,
        rate_limiting_limit=10,
        rate_limiting_interval=60,
        rate_limiting_technique="sliding",
        log_management=50_000,
        log_management_strategy="DELETE_OLDEST",
        retry_max_attempts=4,
        retry_backoff="linear",
        dlp={"action": "BLOCK", "enabled": True, "profiles": ["p1"]},  # kept as stored
        spend_limits={"enabled": True, "rules": [{"limit": 5, "limitType": "cost", "window": 60}]},
    )
    stored = parse_gateway_update(stored, "gw")
    assert parse_settings(settings_values(stored), stored, "gw") == stored


def test_nulls_show_as_what_they_mean_and_save_as_the_same() -> None:
    stored = _config(cache_ttl=None, rate_limiting_limit=None, retry_max_attempts=None)
    values = settings_values(stored)
    assert (values["cache_ttl"], values["rate_limiting_limit"]) == ("0", "0")
    assert values["retry_max_attempts"] == "1" and values["log_management"] == ""
    assert values["log_management_strategy"] == "STOP_INSERTING"
    saved = parse_settings(values, stored, "gw")
    assert saved["cache_ttl"] == 0 and saved["retry_max_attempts"] == 1


def test_the_form_changes_exactly_its_fields() -> None:
    stored = parse_gateway_update(_config(otel=[{"url": "https://o.example", "headers": {}}]), "gw")
    form = settings_values(stored) | {
        "zdr": "on",
        "collect_logs": "",
        "rate_limiting_limit": "1,000",
        "rate_limiting_interval": "60",
        "retry_delay": "250",
    }
    saved = parse_settings(form, stored, "gw")
    assert saved["zdr"] is True and saved["collect_logs"] is False
    assert saved["rate_limiting_limit"] == 1000 and saved["retry_delay"] == 250
    assert saved["otel"] == stored["otel"]  # a setting the page does not show stays


@pytest.mark.parametrize(
    ("field", "typed", "words"),
    [
        ("rate_limiting_limit", "ten", "whole number of requests"),
        ("rate_limiting_limit", "-1", "from 0 to"),
        ("rate_limiting_limit", "--5", "whole number"),
        ("rate_limiting_interval", "", "Enter the rate limit interval"),
        ("cache_ttl", "1.5", "whole number of seconds"),
        ("cache_ttl", "2592001", "from 0 to 2,592,000 seconds"),
        ("retry_max_attempts", "0", "from 1 to 5 attempts"),
        ("retry_max_attempts", "6", "from 1 to 5 attempts"),
        ("retry_delay", "5001", "from 0 to 5,000 milliseconds"),
        ("log_management", "9999", "from 10,000 to 10,000,000 logs"),
        ("rate_limiting_technique", "token-bucket", "Choose a rate limit window: fixed, sliding"),
        ("retry_backoff", "random", "Choose a backoff"),
        ("log_management_strategy", "KEEP", "Choose what happens at the log limit"),
    ],
)
def test_bad_settings_are_refused_next_to_their_field(field: str, typed: str, words: str) -> None:
    stored = default_gateway_config()
    form = settings_values(stored) | {field: typed}
    errors = _errors(parse_settings, form, stored, "gw")
    assert list(errors) == [field]
    assert words in errors[field]


def test_a_rate_limit_needs_an_interval() -> None:
    stored = default_gateway_config()
    form = settings_values(stored) | {"rate_limiting_limit": "10", "rate_limiting_interval": "0"}
    assert (
        "set the rate limit to 0"
        in _errors(parse_settings, form, stored, "gw")["rate_limiting_interval"]
    )


# --- spend-limit rules --------------------------------------------------------------------------

RULE_FORM = {"rule_amount": "5", "rule_window": "86400", "rule_technique": "sliding"}


def test_a_rule_from_the_form_is_the_apis_shape() -> None:
    form = RULE_FORM | {
        "rule_amount": "$1,234.56",
        "rule_window": "other",
        "rule_window_seconds": "90",
        "rule_technique": "fixed",
        "rule_model": "gpt-4o, openai/gpt-4o-mini, gpt-4o",
        "rule_provider": "openai",
        "rule_metadata_filter": "plan = free, trial",
        "rule_partition": "user",
        "rule_name": "per-user",
    }
    assert parse_spend_rule(form, []) == {
        "id": "per-user",
        "enabled": True,
        "limitType": "cost",
        "limit": 1234.56,
        "window": 90,
        "technique": "fixed",
        "model": {"mode": "filter", "values": ["gpt-4o", "openai/gpt-4o-mini"]},
        "provider": {"mode": "filter", "values": ["openai"]},
        "metadata": {
            "plan": {"mode": "filter", "values": ["free", "trial"]},
            "user": {"mode": "partition"},
        },
    }
    assert parse_spend_rule(RULE_FORM, [])["limit"] == 5  # whole dollars stay an integer


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"rule_amount": ""}, "rule_amount", "Enter the rule's amount"),
        ({"rule_amount": "abc"}, "rule_amount", "must be a number of dollars"),
        ({"rule_amount": "-5"}, "rule_amount", "more than $0"),
        ({"rule_amount": "0"}, "rule_amount", "more than $0"),
        ({"rule_amount": "0.001"}, "rule_amount", "two decimal places"),
        ({"rule_amount": "1000000000.01"}, "rule_amount", "$1,000,000,000.00"),
        ({"rule_window": "other", "rule_window_seconds": "0"}, "rule_window_seconds", "from 1"),
        ({"rule_window": "other", "rule_window_seconds": "-60"}, "rule_window_seconds", "from 1"),
        ({"rule_window": "other", "rule_window_seconds": "1h"}, "rule_window_seconds", "digits"),
        ({"rule_window": "other"}, "rule_window_seconds", "Enter the window"),
        (
            {"rule_window": "other", "rule_window_seconds": "31622401"},
            "rule_window_seconds",
            "31,622,400",
        ),
        ({"rule_window": "42"}, "rule_window", "Choose a window"),
        ({"rule_window_seconds": "60"}, "rule_window_seconds", "Choose Other under Window"),
        ({"rule_technique": "bogus"}, "rule_technique", "Choose a window type: sliding, fixed"),
        ({"rule_metadata_filter": "plan"}, "rule_metadata_filter", "key=value"),
        ({"rule_metadata_filter": "=free"}, "rule_metadata_filter", "key=value"),
        ({"rule_metadata_filter": "plan="}, "rule_metadata_filter", "key=value"),
        ({"rule_partition": "a=b"}, "rule_partition", "one metadata key"),
        (
            {"rule_metadata_filter": "user=x", "rule_partition": "user"},
            "rule_partition",
            "different metadata key",
        ),
        ({"rule_name": "n" * 129}, "rule_name", "at most 128"),
    ],
)
def test_bad_rules_are_refused_next_to_their_field(
    changes: dict[str, str], field: str, words: str
) -> None:
    errors = _errors(parse_spend_rule, RULE_FORM | changes, [])
    assert list(errors) == [field]
    assert words in errors[field]


def test_adding_and_removing_rules_keeps_the_others() -> None:
    stored = default_gateway_config()
    added = with_rule_added(stored, RULE_FORM | {"enable_spend_limits": "on"}, "gw")
    assert added["spend_limits"]["enabled"] is True
    assert [r["id"] for r in added["spend_limits"]["rules"]] == ["rule-1"]
    twice = with_rule_added(added, RULE_FORM | {"rule_name": "team"}, "gw")
    assert [r["id"] for r in twice["spend_limits"]["rules"]] == ["rule-1", "team"]
    assert twice["spend_limits"]["enabled"] is True  # not ticked: stays as it was
    duplicate = RULE_FORM | {"rule_name": "team"}
    assert "exists already" in _errors(with_rule_added, twice, duplicate, "gw")["rule_name"]
    removed = with_rule_removed(twice, "rule-1", "gw")
    assert [r["id"] for r in removed["spend_limits"]["rules"]] == ["team"]
    with pytest.raises(KeyError):
        with_rule_removed(removed, "rule-1", "gw")
    off = with_spend_limits_enabled(removed, False, "gw")
    assert off["spend_limits"] == {"enabled": False, "rules": removed["spend_limits"]["rules"]}


def test_a_rule_added_while_spend_limits_are_off_stays_off_unless_asked() -> None:
    added = with_rule_added(default_gateway_config(), RULE_FORM, "gw")
    assert added["spend_limits"]["enabled"] is False


def test_no_more_rules_than_the_api_allows() -> None:
    rules = [{"id": f"r{n}", "limit": 1, "limitType": "cost", "window": 60} for n in range(20)]
    full = parse_gateway_update(_config(spend_limits={"enabled": True, "rules": rules}), "gw")
    assert len(full["spend_limits"]["rules"]) == SPEND_RULES_MAX
    errors = _errors(with_rule_added, full, RULE_FORM, "gw")
    assert "at most 20" in errors["rule_amount"]


def test_whatever_the_form_stores_passes_the_apis_validation() -> None:
    # The last gate: a stored config that the API would refuse is refused here too.
    broken = _config(spend_limits={"enabled": True, "rules": [{"limit": 1}]})
    with pytest.raises(InvalidRequest):
        with_spend_limits_enabled(broken, True, "gw")


# --- what the pages show ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (1, "1 second"),
        (45, "45 seconds"),
        (60, "1 minute"),
        (5400, "90 minutes"),
        (3600, "1 hour"),
        (86_400, "1 day"),
        (604_800, "1 week"),
        (1_209_600, "2 weeks"),
        (2_592_000, "30 days"),
        (31_622_400, "366 days"),
    ],
)
def test_windows_read_in_the_largest_whole_unit(seconds: int, words: str) -> None:
    assert describe_seconds(seconds) == words


def test_a_rule_in_words() -> None:
    rule = {
        "id": "r",
        "enabled": False,
        "limit": 0.1,
        "limitType": "cost",
        "window": 3600,
        "technique": "fixed",
        "provider": {"mode": "filter", "values": ["openai", "anthropic"]},
        "metadata": {"team": {"mode": "filter", "values": ["a"]}},
    }
    view = rule_view(rule, 25_000_000)
    assert view.amount_nanos == 100_000_000  # $0.10 exactly, not the float's binary value
    assert (view.window, view.technique, view.enabled) == ("1 hour", "fixed", False)
    assert view.conditions == ("provider is openai or anthropic", "metadata team is a")
    assert view.percent == 25
    split = rule_view({**rule, "metadata": {"user": {"mode": "partition"}}}, 5)
    assert split.split_by == ("user",) and split.spent_nanos is None


def test_the_list_shows_settings_at_a_glance() -> None:
    seen = glance(
        _config(zdr=True, cache_ttl=300, rate_limiting_limit=5, rate_limiting_interval=60)
    )
    assert (seen.zdr, seen.logs, seen.cache) == (True, True, "5 minutes")
    assert seen.rate_limit == "5 requests per 1 minute (fixed)"
    assert glance(_config(rate_limiting_limit=5, rate_limiting_interval=0)).rate_limit == "Off"


def test_endpoint_urls_and_the_curl_example() -> None:
    shown = {e.key: e.url for e in endpoints("https://ai.example.com/", "acc", "gw")}
    assert shown == {
        "compat": "https://ai.example.com/v1/acc/gw/compat",
        "native": "https://ai.example.com/v1/acc/gw/openai",
        "universal": "https://ai.example.com/v1/acc/gw",
    }
    curl = curl_example("https://ai.example.com", "acc", "gw")
    assert curl.startswith("curl https://ai.example.com/v1/acc/gw/compat/chat/completions \\\n")
    assert "$TG_TOKEN" in curl and "tg_" not in curl
