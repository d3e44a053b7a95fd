"""The Gateways pages' forms, parsed into what the management API stores. Pure: no I/O.

Every parser checks the typed fields first, field by field, with messages in plain words
(`FormErrors`: field name -> message, shown next to that field), and then runs the management
API's own validators (`gateway_config.parse_gateway_create` / `parse_gateway_update`) on the
result, so the dashboard can never store a gateway the API would refuse. The form fields carry
the API's names (`cache_ttl`, `rate_limiting_limit`, ...); the spend-rule editor's fields start
with `rule_`.

A save is a full replacement, as `PUT /gateways/{id}` is: the page's fields over the stored
config, every other setting (DLP, OTel, guardrails, ...) sent back as stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollgate.dashboard.format import AmountError, parse_dollars_to_cents
from tollgate.errors import InvalidRequest
from tollgate.gateway_config import (
    CACHE_TTL_MAX_SECONDS,
    GATEWAY_ID_MAX_LENGTH,
    LOG_MANAGEMENT_MAX,
    LOG_MANAGEMENT_MIN,
    REQUIRED_FIELDS,
    RETRY_DELAY_MAX_MS,
    RETRY_MAX_ATTEMPTS,
    SETTINGS,
    SPEND_LIMIT_MAX_USD,
    SPEND_RULES_MAX,
    SPEND_WINDOW_MAX_SECONDS,
    default_gateway_config,
    parse_gateway_create,
    parse_gateway_update,
    validate_gateway_id,
)

# The API's bound for counts and intervals (`gateway_config._INT_MAX`); its validator runs after
# ours anyway, so a drift here could only make a message less precise, never store a bad value.
COUNT_MAX = 2**31 - 1
RULE_NAME_MAX_LENGTH = 128
_INTEGER = re.compile(r"-?[0-9]+")

BOOLEAN_SETTINGS = (
    "zdr",
    "zdr_strict",
    "authentication",
    "collect_logs",
    "cache_invalidate_on_update",
    "byok_only",
)
RATE_TECHNIQUES = ("fixed", "sliding")
RETRY_BACKOFFS = ("constant", "linear", "exponential")
LOG_STRATEGIES = ("STOP_INSERTING", "DELETE_OLDEST")
RULE_TECHNIQUES = ("sliding", "fixed")  # the API's default first
# Spend-rule window presets: (form value, words). "other" takes `rule_window_seconds`.
WINDOW_PRESETS = (
    ("3600", "1 hour"),
    ("86400", "1 day"),
    ("604800", "1 week"),
    ("2592000", "30 days"),
    ("other", "Other (seconds, below)"),
)

LOG_STRATEGY_WORDS = {
    "STOP_INSERTING": "Stop storing new logs",
    "DELETE_OLDEST": "Delete the oldest",
}
# Each select's (value, words), in the order shown.
OPTIONS = {
    "rate_limiting_technique": tuple((v, v.capitalize()) for v in RATE_TECHNIQUES),
    "retry_backoff": tuple((v, v.capitalize()) for v in RETRY_BACKOFFS),
    "log_management_strategy": tuple(LOG_STRATEGY_WORDS.items()),
    "rule_window": WINDOW_PRESETS,
    "rule_technique": tuple((v, v.capitalize()) for v in RULE_TECHNIQUES),
}


class FormErrors(Exception):
    """What is wrong with a form: field name -> a message saying what to type instead."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = dict(errors)


@dataclass(frozen=True, slots=True)
class WholeNumber:
    """An integer setting: its words for messages, its range and its unit."""

    words: str
    low: int
    high: int
    unit: str
    example: int

    def parse(self, raw: str | None) -> int:
        text = (raw or "").strip().replace(",", "")
        if not text:
            raise ValueError(
                f"Enter the {self.words} as a whole number of {self.unit}, "
                f"for example {self.example:,}."
            )
        if not _INTEGER.fullmatch(text):
            raise ValueError(
                f"The {self.words} must be a whole number of {self.unit} (digits only), "
                f"like {self.example:,}."
            )
        value = int(text)
        if not self.low <= value <= self.high:
            raise ValueError(
                f"The {self.words} must be from {self.low:,} to {self.high:,} {self.unit}."
            )
        return value


NUMBERS: dict[str, WholeNumber] = {
    "cache_ttl": WholeNumber("cache time-to-live", 0, CACHE_TTL_MAX_SECONDS, "seconds", 300),
    "rate_limiting_limit": WholeNumber("rate limit", 0, COUNT_MAX, "requests", 100),
    "rate_limiting_interval": WholeNumber("rate limit interval", 0, COUNT_MAX, "seconds", 60),
    "retry_max_attempts": WholeNumber("number of attempts", 1, RETRY_MAX_ATTEMPTS, "attempts", 3),
    "retry_delay": WholeNumber("retry delay", 0, RETRY_DELAY_MAX_MS, "milliseconds", 500),
}
# The ranges the forms' hints state, as the API's constants say.
BOUNDS = {
    "cache_ttl_max": f"{CACHE_TTL_MAX_SECONDS:,}",
    "log_min": f"{LOG_MANAGEMENT_MIN:,}",
    "log_max": f"{LOG_MANAGEMENT_MAX:,}",
    "retry_attempts_max": str(RETRY_MAX_ATTEMPTS),
    "retry_delay_max": f"{RETRY_DELAY_MAX_MS:,}",
    "window_max": f"{SPEND_WINDOW_MAX_SECONDS:,}",
    "rule_name_max": str(RULE_NAME_MAX_LENGTH),
}
LOG_LIMIT = WholeNumber("log limit", LOG_MANAGEMENT_MIN, LOG_MANAGEMENT_MAX, "logs", 100_000)
RULE_WINDOW = WholeNumber("window", 1, SPEND_WINDOW_MAX_SECONDS, "seconds", 86_400)


# --- create -------------------------------------------------------------------------------------


def parse_new_gateway(form: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The create form: an id; every setting takes the API's defaults (a create body with the
    required fields at the values of `default_gateway_config()`)."""
    gateway_id = form.get("id", "").strip()
    try:
        validate_gateway_id(gateway_id)
    except InvalidRequest:
        if not gateway_id:
            message = "Enter a gateway id, for example production or team-a."
        else:
            message = (
                f"A gateway id is 1 to {GATEWAY_ID_MAX_LENGTH} characters of lowercase letters, "
                "digits, '-' and '_' (no spaces or capitals), for example team-a."
            )
        raise FormErrors({"id": message}) from None
    defaults = default_gateway_config()
    return parse_gateway_create({"id": gateway_id, **{k: defaults[k] for k in REQUIRED_FIELDS}})


# --- settings -----------------------------------------------------------------------------------


def stored_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config as a PUT body: every setting the API knows, defaults for those missing."""
    body = default_gateway_config()
    body.update({name: value for name, value in config.items() if name in SETTINGS})
    return body


def settings_values(config: Mapping[str, Any]) -> dict[str, str]:
    """The settings form's fields filled from a stored config (`parse_settings` reads them back).

    `null` shows as what it means: 0 (off) for the cache and the rate limit, the API's default
    for retries, the rate limit window and the log strategy (STOP_INSERTING, as the log writer
    reads an unset one), an empty log limit (no cap)."""
    body = stored_settings(config)
    defaults = default_gateway_config()
    values = {name: "on" if body[name] else "" for name in BOOLEAN_SETTINGS}
    for name in NUMBERS:
        value = body[name]
        values[name] = str(defaults[name] if value is None else value)
    values["log_management"] = "" if body["log_management"] is None else str(body["log_management"])
    values["rate_limiting_technique"] = body["rate_limiting_technique"] or "fixed"
    values["retry_backoff"] = body["retry_backoff"] or "constant"
    values["log_management_strategy"] = body["log_management_strategy"] or "STOP_INSERTING"
    return values


def _choice(raw: str | None, allowed: tuple[str, ...], what: str) -> str:
    if raw not in allowed:
        raise ValueError(f"Choose {what}: {', '.join(allowed)}.")
    return raw


def parse_settings(
    form: Mapping[str, str], config: Mapping[str, Any], gateway_id: str
) -> dict[str, Any]:
    """The settings form over the stored `config`: the new config, as the API would store it."""
    errors: dict[str, str] = {}
    body = stored_settings(config)
    for name in BOOLEAN_SETTINGS:  # a checkbox is sent only when ticked
        body[name] = form.get(name) == "on"
    for name, number in NUMBERS.items():
        try:
            body[name] = number.parse(form.get(name))
        except ValueError as exc:
            errors[name] = str(exc)
    if (form.get("log_management") or "").strip():
        try:
            body["log_management"] = LOG_LIMIT.parse(form.get("log_management"))
        except ValueError as exc:
            errors["log_management"] = str(exc)
    else:
        body["log_management"] = None  # no cap on stored logs
    choices = (
        ("rate_limiting_technique", RATE_TECHNIQUES, "a rate limit window"),
        ("retry_backoff", RETRY_BACKOFFS, "a backoff"),
        ("log_management_strategy", LOG_STRATEGIES, "what happens at the log limit"),
    )
    for name, allowed, what in choices:
        try:
            body[name] = _choice(form.get(name), allowed, what)
        except ValueError as exc:
            errors[name] = str(exc)
    if (
        "rate_limiting_limit" not in errors
        and "rate_limiting_interval" not in errors
        and body["rate_limiting_limit"] > 0
        and body["rate_limiting_interval"] == 0
    ):
        # The data plane ignores a limit without an interval; say so rather than store a no-op.
        errors["rate_limiting_interval"] = (
            "Enter the interval the rate limit counts over, in seconds (for example 60), or set "
            "the rate limit to 0 to turn it off."
        )
    if errors:
        raise FormErrors(errors)
    return parse_gateway_update(body, gateway_id)


# --- spend-limit rules --------------------------------------------------------------------------


def _names(raw: str | None) -> list[str]:
    """A comma-separated list, trimmed, without empty items or repeats, in the given order."""
    return list(dict.fromkeys(item.strip() for item in (raw or "").split(",") if item.strip()))


def _dollars(cents: int) -> int | float:
    # A JSON number of USD, as the API stores it. cents / 100 is the double nearest the exact
    # amount, whose shortest repr is the typed amount (at most 12 significant digits here).
    return cents // 100 if cents % 100 == 0 else cents / 100


def _rule_window(form: Mapping[str, str]) -> int:
    preset = form.get("rule_window")
    if preset == "other":
        return RULE_WINDOW.parse(form.get("rule_window_seconds"))
    allowed = tuple(value for value, _ in WINDOW_PRESETS)
    seconds = int(_choice(preset, allowed, "a window"))
    if (form.get("rule_window_seconds") or "").strip():  # typed, but a preset is chosen
        raise ValueError(
            "Choose Other under Window to use a window in seconds, or empty this field to use "
            "the window chosen there."
        )
    return seconds


def _metadata(form: Mapping[str, str], errors: dict[str, str]) -> dict[str, Any]:
    dimensions: dict[str, Any] = {}
    raw_filter = (form.get("rule_metadata_filter") or "").strip()
    if raw_filter:
        key, equals, values = raw_filter.partition("=")
        key, listed = key.strip(), _names(values)
        if not equals or not key or not listed:
            errors["rule_metadata_filter"] = (
                "Write the metadata filter as key=value (several values separated by commas), "
                "for example plan=free or team=a,b."
            )
        else:
            dimensions[key] = {"mode": "filter", "values": listed}
    partition = (form.get("rule_partition") or "").strip()
    if partition:
        if partition in dimensions:
            errors["rule_partition"] = (
                f"'{partition}' is already the filter's key: split by a different metadata key, "
                "or leave this empty."
            )
        elif "=" in partition or "," in partition:
            errors["rule_partition"] = (
                "Enter one metadata key to split by (just the key, like user), or leave this empty."
            )
        else:
            dimensions[partition] = {"mode": "partition"}
    return dimensions


def parse_spend_rule(form: Mapping[str, str], rules: list[dict[str, Any]]) -> dict[str, Any]:
    """The add-a-rule form as a rule in the API's shape (without `id` when no name was typed:
    the API names it `rule-<n>`). `rules` are the gateway's current ones."""
    errors: dict[str, str] = {}
    rule: dict[str, Any] = {"enabled": True, "limitType": "cost"}
    name = (form.get("rule_name") or "").strip()
    if name:
        if len(name) > RULE_NAME_MAX_LENGTH:
            errors["rule_name"] = f"A rule name is at most {RULE_NAME_MAX_LENGTH} characters."
        elif any(existing.get("id") == name for existing in rules):
            errors["rule_name"] = f"A rule named '{name}' exists already: choose another name."
        else:
            rule["id"] = name
    try:
        cents = parse_dollars_to_cents(
            form.get("rule_amount", ""),
            field="the rule's amount",
            minimum_cents=1,
            maximum_cents=SPEND_LIMIT_MAX_USD * 100,
        )
        rule["limit"] = _dollars(cents)
    except AmountError as exc:
        errors["rule_amount"] = str(exc)
    try:
        rule["window"] = _rule_window(form)
    except ValueError as exc:
        preset_known = form.get("rule_window") in {value for value, _ in WINDOW_PRESETS}
        errors["rule_window_seconds" if preset_known else "rule_window"] = str(exc)
    try:
        rule["technique"] = _choice(form.get("rule_technique"), RULE_TECHNIQUES, "a window type")
    except ValueError as exc:
        errors["rule_technique"] = str(exc)
    for dimension in ("model", "provider"):
        if values := _names(form.get(f"rule_{dimension}")):
            rule[dimension] = {"mode": "filter", "values": values}
    if metadata := _metadata(form, errors):
        rule["metadata"] = metadata
    if errors:
        raise FormErrors(errors)
    return rule


def with_rule_added(
    config: Mapping[str, Any], form: Mapping[str, str], gateway_id: str
) -> dict[str, Any]:
    """The config with the form's rule appended (and spend limits turned on when the form asks)."""
    body = stored_settings(config)
    spend = body["spend_limits"] or {"enabled": False, "rules": []}
    rules = list(spend.get("rules", []))
    if len(rules) >= SPEND_RULES_MAX:
        raise FormErrors(
            {
                "rule_amount": f"A gateway has at most {SPEND_RULES_MAX} spend-limit rules: "
                "remove one before adding another."
            }
        )
    rules.append(parse_spend_rule(form, rules))
    enabled = bool(spend.get("enabled")) or form.get("enable_spend_limits") == "on"
    body["spend_limits"] = {"enabled": enabled, "rules": rules}
    return parse_gateway_update(body, gateway_id)


def with_rule_removed(config: Mapping[str, Any], rule_id: str, gateway_id: str) -> dict[str, Any]:
    """The config without the rule `rule_id`; `KeyError` when there is no such rule."""
    body = stored_settings(config)
    spend = body["spend_limits"] or {"enabled": False, "rules": []}
    rules = list(spend.get("rules", []))
    kept = [rule for rule in rules if rule.get("id") != rule_id]
    if len(kept) == len(rules):
        raise KeyError(rule_id)
    body["spend_limits"] = {"enabled": bool(spend.get("enabled")), "rules": kept}
    return parse_gateway_update(body, gateway_id)


def with_spend_limits_enabled(
    config: Mapping[str, Any], enabled: bool, gateway_id: str
) -> dict[str, Any]:
    """The config with spend-limit enforcement turned on or off (the rules stay)."""
    body = stored_settings(config)
    spend = body["spend_limits"] or {"enabled": False, "rules": []}
    body["spend_limits"] = {"enabled": enabled, "rules": list(spend.get("rules", []))}
    return parse_gateway_update(body, gateway_id)
