"""Which spending limits apply to a request. Pure: config in, `LimitSpec`s out; no I/O, no clock.

Two sources (PRODUCT.md §4, Cloudflare's spend limits):

- **The account limit** `{amount, duration: daily|weekly|monthly, strategy: fixed|sliding}` caps
  Unified Billing spend across all gateways. `fixed` is the UTC calendar day, ISO week or month;
  `sliding` is the last 24 h, 7 d or 30 d (`windows.SLIDING_SECONDS`). It applies to Unified
  Billing requests only (`unified_billing=False` leaves it out).
- **Gateway `spend_limits.rules`** (the shape `gateway_config.spend_limits` validates): `limit` in
  USD over `window` seconds, `technique` fixed (epoch-aligned windows) or sliding. They apply only
  when `spend_limits.enabled` and the rule's own `enabled` are true, and to Unified Billing and
  BYOK alike (the caller decides whether a BYOK request has a known price).

  - `model` / `provider` `{mode: "filter", values}`: the rule applies only when the request's
    provider slug is listed, or its model is listed either bare (`gpt-4o`) or as
    `provider/model` (`openai/gpt-4o`). Exact, case-sensitive matches.
  - `metadata` per key, on the request's `cf-aig-metadata` values (strings as they are; numbers
    and booleans in their JSON form: `1`, `true`): `{mode: "filter", values}` applies the rule only
    when the key is present with a listed value; `{mode: "partition"}` gives each distinct value
    its own bucket. Requests **without** a partition key share one bucket (the value "absent"),
    so leaving the key out cannot escape the limit.

Every applicable limit must admit a request (a refusal names all those that did not).

**Limit keys** name the spend counted against a limit: `account:{account_id}` and
`gateway:{account_id}:{gateway_id}:{quoted rule id}[:{partition digest}]`. Every key begins with
its account id, which the store relies on: it serialises admissions per account (see
`tollgate.store.holds`). A key does not include the amount, window or technique, so raising a
limit or changing its window keeps the spend already counted; renaming a rule starts afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from tollgate.billing.windows import PERIODS, SLIDING_SECONDS, Window
from tollgate.money import from_dollars

MetadataValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """A limit a hold must fit under: spend under `key` within `window` ≤ `limit_nanos`."""

    key: str
    limit_nanos: int
    window: Window
    label: str  # for people: "gateway 'prod' spend rule 'daily-cap'"


class AccountLimitConfig(Protocol):
    """The account limit as stored (`tollgate.store.limits.AccountLimit` has this shape)."""

    @property
    def amount_nanos(self) -> int: ...
    @property
    def duration(self) -> str: ...
    @property
    def strategy(self) -> str: ...


def account_key(account_id: str) -> str:
    return f"account:{account_id}"


def account_limit(account_id: str, config: AccountLimitConfig) -> LimitSpec:
    """The account's own limit as a `LimitSpec`."""
    if config.duration not in PERIODS:
        raise ValueError(f"duration must be daily, weekly or monthly; got {config.duration!r}")
    if config.strategy == "fixed":
        window = Window.calendar(PERIODS[config.duration])
    elif config.strategy == "sliding":
        window = Window.sliding(SLIDING_SECONDS[config.duration])
    else:
        raise ValueError(f"strategy must be fixed or sliding; got {config.strategy!r}")
    return LimitSpec(
        key=account_key(account_id),
        limit_nanos=config.amount_nanos,
        window=window,
        label=f"account {config.duration} spending limit ({config.strategy})",
    )


def belongs_to(key: str, account_id: str) -> bool:
    """Whether a limit key counts one account's spend (the store serialises per account)."""
    return key == account_key(account_id) or key.startswith(f"gateway:{account_id}:")


def key_account(key: str) -> str | None:
    """The account whose spend a limit key counts; None for a key of no known shape."""
    kind, _, rest = key.partition(":")
    account, sep, _ = rest.partition(":")
    if (kind == "account" and not sep) or (kind == "gateway" and sep):
        return account
    return None


def unpartitioned(key: str) -> str | None:
    """A gateway rule's key without its partition digest (what `rule_key` gives for no
    partition); None for any other key. Account and gateway ids and quoted rule ids hold no ':'."""
    parts = key.split(":")
    return ":".join(parts[:4]) if parts[0] == "gateway" and len(parts) in (4, 5) else None


def metadata_text(value: object) -> str:
    """A metadata value as rules compare it: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _filter_passes(rule_filter: Mapping[str, Any] | None, candidates: Sequence[str]) -> bool:
    if rule_filter is None:
        return True
    values = rule_filter.get("values", [])
    return any(candidate in values for candidate in candidates)


def _model_candidates(model: str | None, provider: str | None) -> list[str]:
    if model is None:
        return []
    return [model, f"{provider}/{model}"] if provider else [model]


def _metadata_partition(
    dimensions: Mapping[str, Any], metadata: Mapping[str, MetadataValue]
) -> list[tuple[str, str | None]] | None:
    """The rule's partition values; None if a metadata filter excludes the request."""
    partition: list[tuple[str, str | None]] = []
    for key in sorted(dimensions):
        present = key in metadata
        text = metadata_text(metadata[key]) if present else None
        mode = dimensions[key].get("mode")
        if mode == "filter":
            if text is None or text not in dimensions[key].get("values", []):
                return None
        elif mode == "partition":
            partition.append((key, text))
        else:
            raise ValueError(f"unknown metadata mode {mode!r} for key {key!r}")
    return partition


def _usd_to_nanos(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int | float | Decimal | str):
        raise ValueError(f"a spend rule limit must be a number of USD; got {limit!r}")
    # str() of a float is its shortest round-trip form: 0.1 -> "0.1", parsed exactly.
    return from_dollars(limit if isinstance(limit, int) else str(limit))


def rule_key(
    account_id: str, gateway_id: str, rule_id: str, partition: Sequence[tuple[str, str | None]]
) -> str:
    key = f"gateway:{account_id}:{gateway_id}:{quote(rule_id, safe='')}"
    if partition:
        digest = hashlib.sha256(orjson.dumps([list(pair) for pair in partition])).hexdigest()
        key += f":{digest[:32]}"
    return key


def _rule_spec(
    account_id: str,
    gateway_id: str,
    rule: Mapping[str, Any],
    partition: Sequence[tuple[str, str | None]],
) -> LimitSpec:
    window_seconds = rule["window"]
    technique = rule.get("technique", "sliding")
    window = (
        Window.fixed(window_seconds) if technique == "fixed" else Window.sliding(window_seconds)
    )
    label = f"gateway '{gateway_id}' spend rule '{rule['id']}'"
    if partition:
        shown = ", ".join(f"{k}={'(absent)' if v is None else v}" for k, v in partition)
        label += f" for {shown}"
    return LimitSpec(
        key=rule_key(account_id, gateway_id, str(rule["id"]), partition),
        limit_nanos=_usd_to_nanos(rule["limit"]),
        window=window,
        label=label,
    )


def gateway_limits(
    account_id: str,
    gateway_id: str,
    spend_limits: Mapping[str, Any] | None,
    *,
    model: str | None,
    provider: str | None,
    metadata: Mapping[str, MetadataValue] | None = None,
) -> list[LimitSpec]:
    """The gateway's enabled rules that match this request, one `LimitSpec` each."""
    if not spend_limits or not spend_limits.get("enabled", False):
        return []
    specs: list[LimitSpec] = []
    for rule in spend_limits.get("rules", []):
        if not rule.get("enabled", True):
            continue
        if not _filter_passes(rule.get("model"), _model_candidates(model, provider)):
            continue
        if not _filter_passes(rule.get("provider"), [provider] if provider else []):
            continue
        partition = _metadata_partition(rule.get("metadata") or {}, metadata or {})
        if partition is None:
            continue
        specs.append(_rule_spec(account_id, gateway_id, rule, partition))
    return specs


def applicable_limits(
    account_id: str,
    *,
    account_limit_config: AccountLimitConfig | None,
    gateway_id: str | None,
    spend_limits: Mapping[str, Any] | None,
    model: str | None,
    provider: str | None,
    metadata: Mapping[str, MetadataValue] | None = None,
    unified_billing: bool = True,
) -> list[LimitSpec]:
    """Every limit a request must fit under, sorted by key (the order holds take them in)."""
    specs: list[LimitSpec] = []
    if account_limit_config is not None and unified_billing:
        specs.append(account_limit(account_id, account_limit_config))
    if gateway_id is not None:
        specs.extend(
            gateway_limits(
                account_id,
                gateway_id,
                spend_limits,
                model=model,
                provider=provider,
                metadata=metadata,
            )
        )
    keys = [spec.key for spec in specs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two limits share a key: {sorted(keys)}")
    return sorted(specs, key=lambda spec: spec.key)
