"""The gateway object: Cloudflare's fields, their defaults and their validation.

Pure: no I/O, no settings. The management API parses request bodies with `parse_gateway_create`
and `parse_gateway_update`; the data plane creates the `default` gateway from
`default_gateway_config()`. A stored config is the dict these functions return: every key of
`default_gateway_config()`, plus `dlp`, `otel` (features/otel.py), `guardrails`, `stripe`,
`store_id` and `log_classification` when sent (all but `otel` stored and echoed, not acted on).

Decisions, where Cloudflare's documents leave a choice:

- Required on create and on PUT, as in Cloudflare's API and its SDK: `cache_invalidate_on_update`,
  `cache_ttl`, `collect_logs`, `rate_limiting_interval`, `rate_limiting_limit`. The last four
  may be `null`. `null` is stored and echoed as sent, and means off (`cache_ttl`, rate limiting)
  or the default (`retry_*`, `log_management*`, `rate_limiting_technique`). Readers of a config
  must treat `None` like 0 / the default.
- Optional settings the client omits take the defaults of `default_gateway_config()` (the
  defaults of Cloudflare's auto-created `default` gateway). PUT replaces every setting: what a
  PUT body omits goes back to its default, and omitted `dlp`/`otel`/... are removed.
- Read-only fields of the gateway object (`created_at`, `modified_at`, `is_default`, and the
  older `account_id`, `account_tag`, `internal_id`) are accepted and ignored, so a client may
  send back an object it read. `id` in a PUT body must equal the id in the URL. Any other
  unknown field is refused with 400 naming it.
- Booleans must be JSON booleans and integers JSON integers (no "yes", no 1 for true, no 2.0).
- `retry_delay` is at most 5000 ms (Cloudflare's limits page and its header limit; the SDK's
  docstring says 60000). `log_management` is 10,000 to 10,000,000 logs, or null.
- Spend-limit rules: at most 20; a rule without `id` gets `rule-<n>`, stable for the same list,
  so a PUT that resends rules without ids keeps their windows. `enabled` defaults to true and
  `technique` to "sliding". `limit` is USD, > 0 and at most 1e9 (so a limit in nano-dollars
  fits 64 bits); `window` is seconds, 1 to 366 days.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from tollgate.errors import InvalidRequest

GATEWAY_ID_MAX_LENGTH = 64
_GATEWAY_ID = re.compile(r"[a-z0-9_-]+")
CACHE_TTL_MAX_SECONDS = 30 * 24 * 3600  # one month
RETRY_MAX_ATTEMPTS = 5
RETRY_DELAY_MAX_MS = 5000
LOG_MANAGEMENT_MIN, LOG_MANAGEMENT_MAX = 10_000, 10_000_000
SPEND_RULES_MAX = 20
SPEND_LIMIT_MAX_USD = 1_000_000_000
SPEND_WINDOW_MAX_SECONDS = 366 * 24 * 3600
_INT_MAX = 2**31 - 1  # a sanity bound for counts and intervals

REQUIRED_FIELDS = (
    "cache_invalidate_on_update",
    "cache_ttl",
    "collect_logs",
    "rate_limiting_interval",
    "rate_limiting_limit",
)
READ_ONLY_FIELDS = frozenset(
    {"created_at", "modified_at", "is_default", "account_id", "account_tag", "internal_id"}
)
GUARDRAIL_CATEGORIES = ("P1", *(f"S{n}" for n in range(1, 14)))

Validator = Callable[[object, str], Any]


def default_gateway_config() -> dict[str, Any]:
    """The settings of a new gateway, as Cloudflare creates the `default` gateway."""
    return {
        "cache_invalidate_on_update": False,
        "cache_ttl": 0,
        "collect_logs": True,
        "rate_limiting_interval": 0,
        "rate_limiting_limit": 0,
        "rate_limiting_technique": "fixed",
        "authentication": True,
        "log_management": None,
        "log_management_strategy": None,
        "logpush": False,
        "logpush_public_key": None,
        "retry_max_attempts": 1,
        "retry_delay": 0,
        "retry_backoff": "constant",
        "zdr": False,
        # tollgate's addition: refuse (400) a ZDR request the provider has no ZDR credentials
        # for, instead of Cloudflare's silent fallback to the standard ones.
        "zdr_strict": False,
        "byok_only": False,
        "workers_ai_billing_mode": "postpaid",
        "spend_limits": {"enabled": False, "rules": []},
    }


# --- errors -------------------------------------------------------------------------------------


def _show(value: object) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # not JSON (a Python caller's value)
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def invalid(field: str, expected: str, value: object) -> InvalidRequest:
    """A 400 naming the field, what it expects and what it got."""
    return InvalidRequest(
        f"{field} must be {expected}; got {_show(value)}", code="invalid_field", param=field
    )


# --- scalar validators --------------------------------------------------------------------------


def boolean(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(field, "true or false", value)
    return value


def integer(low: int, high: int, *, nullable: bool = False, unit: str = "") -> Validator:
    expected = f"an integer{unit} from {low} to {high}" + (" or null" if nullable else "")

    def check(value: object, field: str) -> int | None:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise invalid(field, expected, value)
        return value

    return check


def choice(*choices: str, nullable: bool = False) -> Validator:
    expected = " or ".join(f'"{c}"' for c in choices) + (" or null" if nullable else "")

    def check(value: object, field: str) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or value not in choices:
            raise invalid(field, expected, value)
        return value

    return check


def text(max_length: int, *, nullable: bool = False) -> Validator:
    expected = f"a non-empty string of at most {max_length} characters" + (
        " or null" if nullable else ""
    )

    def check(value: object, field: str) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or not 0 < len(value) <= max_length:
            raise invalid(field, expected, value)
        return value

    return check


def _strings(value: object, field: str, *, non_empty: bool) -> list[str]:
    expected = "a list of strings" + (" with at least one item" if non_empty else "")
    if not isinstance(value, list) or (non_empty and not value):
        raise invalid(field, expected, value)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise invalid(f"{field}[{i}]", "a non-empty string", item)
    return list(value)


def _object(
    value: object, field: str, allowed: Iterable[str], required: Iterable[str] = ()
) -> dict[str, Any]:
    """`value` as a JSON object with only `allowed` keys and every `required` one."""
    if not isinstance(value, dict):
        raise invalid(field, "an object", value)
    allowed = tuple(allowed)
    unknown = sorted(k for k in value if k not in allowed)
    if unknown:
        raise InvalidRequest(
            f"{field} has unknown field {_names(unknown)}; allowed fields: {', '.join(allowed)}",
            code="unknown_field",
            param=f"{field}.{unknown[0]}",
        )
    missing = [k for k in required if k not in value]
    if missing:
        raise InvalidRequest(
            f"{field}.{missing[0]} is required ({field} needs {', '.join(required)})",
            code="missing_field",
            param=f"{field}.{missing[0]}",
        )
    return value


def _names(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


# --- structured settings ------------------------------------------------------------------------


def _filter(value: object, field: str) -> dict[str, Any]:
    rule = _object(value, field, ("mode", "values"), ("mode", "values"))
    choice("filter")(rule["mode"], f"{field}.mode")
    return {"mode": "filter", "values": _strings(rule["values"], f"{field}.values", non_empty=True)}


def _metadata_dimensions(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not 0 < len(value) <= 5:
        raise invalid(field, "an object of 1 to 5 metadata keys", value)
    dimensions: dict[str, Any] = {}
    for key, mode in value.items():
        where = f"{field}.{key}"
        if not key:
            raise invalid(field, "an object whose keys are non-empty metadata keys", value)
        if isinstance(mode, dict) and mode.get("mode") == "partition":
            _object(mode, where, ("mode",))
            dimensions[key] = {"mode": "partition"}
        elif isinstance(mode, dict) and mode.get("mode") == "filter":
            dimensions[key] = _filter(mode, where)
        else:
            raise invalid(
                where, '{"mode": "partition"} or {"mode": "filter", "values": [...]}', mode
            )
    return dimensions


_RULE_REQUIRED = ("limit", "limitType", "window")
_RULE_FIELDS = ("id", "enabled", *_RULE_REQUIRED, "technique", "metadata", "model", "provider")


def _spend_rule(value: object, field: str) -> dict[str, Any]:
    raw = _object(value, field, _RULE_FIELDS, _RULE_REQUIRED)
    limit = raw["limit"]
    if (
        isinstance(limit, bool)
        or not isinstance(limit, int | float)
        or not math.isfinite(limit)
        or not 0 < limit <= SPEND_LIMIT_MAX_USD
    ):
        raise invalid(
            f"{field}.limit", f"a number of USD above 0, at most {SPEND_LIMIT_MAX_USD}", limit
        )
    rule: dict[str, Any] = {
        "id": text(128)(raw["id"], f"{field}.id") if "id" in raw else None,
        "enabled": boolean(raw.get("enabled", True), f"{field}.enabled"),
        "limit": limit,
        "limitType": choice("cost")(raw["limitType"], f"{field}.limitType"),
        "window": integer(1, SPEND_WINDOW_MAX_SECONDS, unit=" of seconds")(
            raw["window"], f"{field}.window"
        ),
        "technique": choice("fixed", "sliding")(
            raw.get("technique", "sliding"), f"{field}.technique"
        ),
    }
    if "metadata" in raw:
        rule["metadata"] = _metadata_dimensions(raw["metadata"], f"{field}.metadata")
    for dimension in ("model", "provider"):
        if dimension in raw:
            rule[dimension] = _filter(raw[dimension], f"{field}.{dimension}")
    return rule


def spend_limits(value: object, field: str) -> dict[str, Any]:
    if value is None:
        return {"enabled": False, "rules": []}
    raw = _object(value, field, ("enabled", "rules"))
    rules_raw = raw.get("rules", [])
    if not isinstance(rules_raw, list) or len(rules_raw) > SPEND_RULES_MAX:
        raise invalid(f"{field}.rules", f"a list of at most {SPEND_RULES_MAX} rules", rules_raw)
    rules = [_spend_rule(rule, f"{field}.rules[{i}]") for i, rule in enumerate(rules_raw)]
    given = [rule["id"] for rule in rules if rule["id"] is not None]
    duplicates = sorted({rule_id for rule_id in given if given.count(rule_id) > 1})
    if duplicates:
        raise InvalidRequest(
            f"{field}.rules must have distinct ids; '{duplicates[0]}' is used twice",
            code="invalid_field",
            param=f"{field}.rules",
        )
    counter = 0
    for rule in rules:
        if rule["id"] is None:
            counter += 1
            while f"rule-{counter}" in given:
                counter += 1
            rule["id"] = f"rule-{counter}"
    return {"enabled": boolean(raw.get("enabled", False), f"{field}.enabled"), "rules": rules}


def _dlp_policy(value: object, field: str) -> dict[str, Any]:
    keys = ("id", "action", "check", "enabled", "profiles")
    policy = _object(value, field, keys, keys)
    checks = _strings(policy["check"], f"{field}.check", non_empty=True)
    for i, check in enumerate(checks):
        choice("REQUEST", "RESPONSE")(check, f"{field}.check[{i}]")
    return {
        "id": text(128)(policy["id"], f"{field}.id"),
        "action": choice("FLAG", "BLOCK")(policy["action"], f"{field}.action"),
        "check": checks,
        "enabled": boolean(policy["enabled"], f"{field}.enabled"),
        "profiles": _strings(policy["profiles"], f"{field}.profiles", non_empty=False),
    }


def dlp(value: object, field: str) -> dict[str, Any]:
    """Either `{action, enabled, profiles}` or `{enabled, policies: [...]}`, as Cloudflare's."""
    if isinstance(value, dict) and "policies" in value:
        raw = _object(value, field, ("enabled", "policies"), ("enabled", "policies"))
        if not isinstance(raw["policies"], list):
            raise invalid(f"{field}.policies", "a list of DLP policies", raw["policies"])
        return {
            "enabled": boolean(raw["enabled"], f"{field}.enabled"),
            "policies": [
                _dlp_policy(p, f"{field}.policies[{i}]") for i, p in enumerate(raw["policies"])
            ],
        }
    raw = _object(
        value, field, ("action", "enabled", "profiles"), ("action", "enabled", "profiles")
    )
    return {
        "action": choice("BLOCK", "FLAG")(raw["action"], f"{field}.action"),
        "enabled": boolean(raw["enabled"], f"{field}.enabled"),
        "profiles": _strings(raw["profiles"], f"{field}.profiles", non_empty=False),
    }


def guardrails(value: object, field: str) -> dict[str, Any] | None:
    if value is None:
        return None
    raw = _object(value, field, ("prompt", "response"), ("prompt", "response"))
    result: dict[str, Any] = {}
    for phase in ("prompt", "response"):
        categories = _object(raw[phase], f"{field}.{phase}", GUARDRAIL_CATEGORIES)
        result[phase] = {
            name: choice("FLAG", "BLOCK")(action, f"{field}.{phase}.{name}")
            for name, action in categories.items()
        }
    return result


def _otel_exporter(value: object, field: str) -> dict[str, Any]:
    raw = _object(
        value, field, ("url", "headers", "authorization", "content_type"), ("url", "headers")
    )
    url = raw["url"]
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url) or len(url) > 2048:
        raise invalid(f"{field}.url", "an http:// or https:// URL", url)
    headers = raw["headers"]
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise invalid(f"{field}.headers", "an object of header names to string values", headers)
    exporter: dict[str, Any] = {"url": url, "headers": dict(headers)}
    if "authorization" in raw:
        exporter["authorization"] = text(4096)(raw["authorization"], f"{field}.authorization")
    if "content_type" in raw:
        exporter["content_type"] = choice("json", "protobuf")(
            raw["content_type"], f"{field}.content_type"
        )
    return exporter


def otel(value: object, field: str) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid(field, "a list of OpenTelemetry exporters or null", value)
    return [_otel_exporter(item, f"{field}[{i}]") for i, item in enumerate(value)]


def _usage_event(value: object, field: str) -> dict[str, Any]:
    event = _object(value, field, ("payload",), ("payload",))
    return {"payload": text(65536)(event["payload"], f"{field}.payload")}


def stripe(value: object, field: str) -> dict[str, Any] | None:
    if value is None:
        return None
    keys = ("authorization", "usage_events")
    raw = _object(value, field, keys, keys)
    events = raw["usage_events"]
    if not isinstance(events, list):
        raise invalid(f"{field}.usage_events", 'a list of {"payload": string}', events)
    return {
        "authorization": text(4096)(raw["authorization"], f"{field}.authorization"),
        "usage_events": [
            _usage_event(e, f"{field}.usage_events[{i}]") for i, e in enumerate(events)
        ],
    }


SETTINGS: dict[str, Validator] = {
    "cache_invalidate_on_update": boolean,
    "cache_ttl": integer(0, CACHE_TTL_MAX_SECONDS, nullable=True, unit=" of seconds"),
    "collect_logs": boolean,
    "rate_limiting_interval": integer(0, _INT_MAX, nullable=True, unit=" of seconds"),
    "rate_limiting_limit": integer(0, _INT_MAX, nullable=True, unit=" of requests"),
    "rate_limiting_technique": choice("fixed", "sliding", nullable=True),
    "authentication": boolean,
    "log_management": integer(
        LOG_MANAGEMENT_MIN, LOG_MANAGEMENT_MAX, nullable=True, unit=" of logs"
    ),
    "log_management_strategy": choice("STOP_INSERTING", "DELETE_OLDEST", nullable=True),
    "logpush": boolean,
    "logpush_public_key": text(8192, nullable=True),
    "retry_max_attempts": integer(1, RETRY_MAX_ATTEMPTS, nullable=True, unit=" of attempts"),
    "retry_delay": integer(0, RETRY_DELAY_MAX_MS, nullable=True, unit=" of milliseconds"),
    "retry_backoff": choice("constant", "linear", "exponential", nullable=True),
    "zdr": boolean,
    "zdr_strict": boolean,
    "byok_only": boolean,
    "workers_ai_billing_mode": choice("postpaid", "unified"),
    "spend_limits": spend_limits,
    "dlp": dlp,
    "otel": otel,
    "guardrails": guardrails,
    "stripe": stripe,
    "store_id": text(128, nullable=True),
    "log_classification": boolean,
}


# --- whole bodies -------------------------------------------------------------------------------


def validate_gateway_id(value: object) -> str:
    """A gateway id: 1 to 64 characters of lowercase letters, digits, '-' and '_'."""
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= GATEWAY_ID_MAX_LENGTH
        or not _GATEWAY_ID.fullmatch(value)
    ):
        raise invalid(
            "id",
            f"1 to {GATEWAY_ID_MAX_LENGTH} characters of lowercase letters, digits, '-' and '_'",
            value,
        )
    return value


def parse_gateway_create(body: object) -> tuple[str, dict[str, Any]]:
    """Validate a create body; returns the gateway id and its full stored config."""
    fields = _body(body)
    if "id" not in fields:
        raise InvalidRequest(
            "id is required: the gateway's name, 1 to 64 characters of [a-z0-9-_]",
            code="missing_field",
            param="id",
        )
    gateway_id = validate_gateway_id(fields["id"])
    return gateway_id, _settings(fields)


def parse_gateway_update(body: object, gateway_id: str) -> dict[str, Any]:
    """Validate a PUT body (a full replacement of the settings); returns the stored config."""
    fields = _body(body)
    if "id" in fields and fields["id"] != gateway_id:
        raise InvalidRequest(
            f"id cannot be changed (the URL names gateway '{gateway_id}'); create a new "
            "gateway instead, or leave id out of the body",
            code="invalid_field",
            param="id",
        )
    return _settings(fields)


def _body(body: object) -> Mapping[str, object]:
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object of gateway settings; got {_show(body)}",
            code="invalid_body",
        )
    return body


def _settings(fields: Mapping[str, object]) -> dict[str, Any]:
    unknown = sorted(
        k for k in fields if k not in SETTINGS and k not in READ_ONLY_FIELDS and k != "id"
    )
    if unknown:
        raise InvalidRequest(
            f"unknown field {_names(unknown)}: a gateway has no such setting "
            f"(settings: {', '.join(SETTINGS)})",
            code="unknown_field",
            param=unknown[0],
        )
    missing = [name for name in REQUIRED_FIELDS if name not in fields]
    if missing:
        raise InvalidRequest(
            f"missing required field {_names(missing)}: creating or updating a gateway needs "
            f"{', '.join(REQUIRED_FIELDS)} (cache_ttl and rate_limiting_* may be 0 or null)",
            code="missing_field",
            param=missing[0],
        )
    config = default_gateway_config()
    for name, validate in SETTINGS.items():
        if name in fields:
            config[name] = validate(fields[name], name)
    return config
