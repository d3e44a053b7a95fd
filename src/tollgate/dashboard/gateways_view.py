"""What the Gateways pages show, worked out from a stored gateway config. Pure: no I/O.

- the settings at a glance on the list (ZDR, logs, cache, rate limit, provider keys required);
- a spend-limit rule in words (amount, window, filters, split) with what its window has counted;
- the gateway's endpoint URLs and a ready-to-paste `curl` example, from the public base URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tollgate import money
from tollgate.providers.registry import PROVIDERS

_UNITS = (("week", 604_800), ("day", 86_400), ("hour", 3_600), ("minute", 60))
# The model in the curl example: one the Unified API bills (PRODUCT.md §2.1 model prefixes).
EXAMPLE_MODEL = "openai/gpt-4o-mini"


def plural(count: int, unit: str) -> str:
    return f"{count:,} {unit}{'' if count == 1 else 's'}"


def describe_seconds(seconds: int) -> str:
    """A length of time in the largest whole unit: `1 day`, `30 days`, `90 minutes`, `45 seconds`.

    30 days reads as days, not weeks (the usual "monthly" window)."""
    if seconds % 86_400 == 0 and seconds % 604_800 != 0:
        return plural(seconds // 86_400, "day")
    for unit, size in _UNITS:
        if seconds % size == 0:
            return plural(seconds // size, unit)
    return plural(seconds, "second")


def when(instant: datetime) -> str:
    """A stored timestamp as people read it, in UTC (SQLite hands back naive UTC)."""
    aware = instant if instant.tzinfo else instant.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True, slots=True)
class Glance:
    """One gateway's row on the list."""

    zdr: bool
    logs: bool
    cache: str
    rate_limit: str
    retries: str
    byok_only: bool


def glance(config: Mapping[str, Any]) -> Glance:
    ttl = config.get("cache_ttl") or 0
    limit = config.get("rate_limiting_limit") or 0
    interval = config.get("rate_limiting_interval") or 0
    rate = "Off"
    if limit and interval:
        technique = config.get("rate_limiting_technique") or "fixed"
        rate = f"{plural(limit, 'request')} per {describe_seconds(interval)} ({technique})"
    attempts = config.get("retry_max_attempts") or 1
    retries = "None (1 attempt)"
    if attempts > 1:
        delay = config.get("retry_delay") or 0
        backoff = config.get("retry_backoff") or "constant"
        retries = f"Up to {attempts} attempts, {delay:,} ms apart ({backoff})"
    return Glance(
        zdr=bool(config.get("zdr")),
        logs=config.get("collect_logs", True) is not False,
        cache=describe_seconds(ttl) if ttl else "Off",
        rate_limit=rate,
        retries=retries,
        byok_only=bool(config.get("byok_only")),
    )


@dataclass(frozen=True, slots=True)
class RuleView:
    """A spend-limit rule as the page lists it. `spent_nanos` is what its current window has
    counted (held or charged), or None for a rule split by metadata (a budget per value)."""

    id: str
    enabled: bool
    amount_nanos: int
    window: str
    technique: str
    conditions: tuple[str, ...]
    split_by: tuple[str, ...]
    spent_nanos: int | None

    @property
    def percent(self) -> int:
        if self.spent_nanos is None or self.amount_nanos <= 0:
            return 0
        return min(100, self.spent_nanos * 100 // self.amount_nanos)


def rule_amount_nanos(limit: object) -> int:
    """A rule's `limit` (a JSON number of USD) in nano-dollars, exactly as typed."""
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        raise ValueError(f"a spend rule limit must be a number of USD; got {limit!r}")
    # str() of a float is its shortest round-trip form: 0.1 -> "0.1", read exactly.
    return money.from_dollars(limit if isinstance(limit, int) else str(limit))


def is_split(rule: Mapping[str, Any]) -> bool:
    metadata = rule.get("metadata") or {}
    return any(mode.get("mode") == "partition" for mode in metadata.values())


def rule_view(rule: Mapping[str, Any], spent_nanos: int | None) -> RuleView:
    conditions: list[str] = []
    for dimension in ("model", "provider"):
        if found := rule.get(dimension):
            conditions.append(f"{dimension} is {' or '.join(found.get('values', []))}")
    split_by: list[str] = []
    for key, mode in sorted((rule.get("metadata") or {}).items()):
        if mode.get("mode") == "partition":
            split_by.append(key)
        else:
            conditions.append(f"metadata {key} is {' or '.join(mode.get('values', []))}")
    return RuleView(
        id=str(rule.get("id")),
        enabled=rule.get("enabled", True) is not False,
        amount_nanos=rule_amount_nanos(rule.get("limit")),
        window=describe_seconds(int(rule.get("window", 0))),
        technique=str(rule.get("technique") or "sliding"),
        conditions=tuple(conditions),
        split_by=tuple(split_by),
        spent_nanos=None if split_by else spent_nanos,
    )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A URL the page shows with a copy button; `key` names its element (`url-{key}`)."""

    key: str
    title: str
    url: str
    note: str


def endpoints(base_url: str, account_id: str, gateway_id: str) -> list[Endpoint]:
    root = f"{base_url.rstrip('/')}/v1/{account_id}/{gateway_id}"
    return [
        Endpoint(
            "compat",
            "OpenAI-compatible base URL",
            f"{root}/compat",
            "The base URL for any OpenAI SDK. Name models as provider/model, for example "
            f"{EXAMPLE_MODEL}.",
        ),
        Endpoint(
            "native",
            "Provider-native base URL",
            f"{root}/openai",
            "Each provider's own API under its slug: put this in place of the provider's base "
            "URL. Shown for openai; the other providers are listed below.",
        ),
        Endpoint(
            "universal",
            "Universal endpoint",
            root,
            "POST a list of steps (provider, endpoint, headers, query); the next step runs if "
            "one fails.",
        ),
    ]


def provider_urls(base_url: str, account_id: str, gateway_id: str) -> list[tuple[str, str]]:
    """Every provider's native base URL: (slug, URL), the registry's order."""
    root = f"{base_url.rstrip('/')}/v1/{account_id}/{gateway_id}"
    return [(slug, f"{root}/{slug}") for slug in PROVIDERS]


def curl_example(base_url: str, account_id: str, gateway_id: str) -> str:
    """A chat request through the gateway's Unified API, billed to the account's credits. The
    token is a shell variable: the page never shows the session's API token."""
    root = f"{base_url.rstrip('/')}/v1/{account_id}/{gateway_id}"
    return (
        f"curl {root}/compat/chat/completions \\\n"
        '  -H "cf-aig-authorization: Bearer $TG_TOKEN" \\\n'
        '  -H "content-type: application/json" \\\n'
        f'  -d \'{{"model": "{EXAMPLE_MODEL}", '
        '"messages": [{"role": "user", "content": "Hello!"}]}\''
    )
