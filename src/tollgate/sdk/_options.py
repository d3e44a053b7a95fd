"""Gateway options and Universal steps, checked locally and turned into `cf-aig-*` headers.

Every check here runs before a request is sent. A wrong type is a `TypeError`, an unknown
option or an out-of-range value a `ValueError`, and both name the option at fault. What only
the gateway knows (a cache TTL's bounds, at most 5 metadata entries, string lengths) is left to
it: its 400 comes back as `InvalidRequest`, naming the header.

    option              header                    value
    id                  cf-aig-gateway-id         the gateway (REST surface; in the URL elsewhere)
    skip_cache          cf-aig-skip-cache         true | false
    cache_ttl           cf-aig-cache-ttl          seconds
    cache_key           cf-aig-cache-key          text
    metadata            cf-aig-metadata           a flat JSON object
    collect_log         cf-aig-collect-log        true | false
    event_id            cf-aig-event-id           text
    request_timeout_ms  cf-aig-request-timeout    milliseconds to the first byte
    retries.max_attempts    cf-aig-max-attempts   1 to 5
    retries.retry_delay_ms  cf-aig-retry-delay    milliseconds
    retries.backoff         cf-aig-backoff        constant | linear | exponential
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NotRequired, TypedDict

from tollgate.ids import ACCOUNT_ID, GATEWAY_ID

DEFAULT_GATEWAY = "default"
Backoff = Literal["constant", "linear", "exponential"]
BACKOFFS: tuple[str, ...] = ("constant", "linear", "exponential")
MAX_ATTEMPTS = 5
MetadataValue = str | int | float | bool | None


class RetryOptions(TypedDict, total=False):
    """`gateway["retries"]`: how the gateway retries a failing provider."""

    max_attempts: int
    retry_delay_ms: int
    backoff: Backoff


class GatewayOptions(TypedDict, total=False):
    """The `gateway=` options of `run` (Cloudflare's `GatewayOptions`, in snake_case)."""

    id: str
    skip_cache: bool
    cache_ttl: int
    cache_key: str
    metadata: Mapping[str, MetadataValue]
    collect_log: bool
    event_id: str
    request_timeout_ms: int
    retries: RetryOptions


class UniversalStep(TypedDict):
    """One step of a Universal request: a provider, its endpoint and the body (`query`)."""

    provider: str
    endpoint: str
    query: Mapping[str, Any]
    headers: NotRequired[Mapping[str, Any]]
    config: NotRequired[Mapping[str, Any]]


_BOOLEANS = {"skip_cache": "cf-aig-skip-cache", "collect_log": "cf-aig-collect-log"}
_TEXTS = {"cache_key": "cf-aig-cache-key", "event_id": "cf-aig-event-id"}
# option -> (header, lowest value, unit for messages)
_INTEGERS = {
    "cache_ttl": ("cf-aig-cache-ttl", 0, "seconds"),
    "request_timeout_ms": ("cf-aig-request-timeout", 1, "milliseconds"),
}
_RETRIES = {
    "max_attempts": ("cf-aig-max-attempts", 1, "attempts"),
    "retry_delay_ms": ("cf-aig-retry-delay", 0, "milliseconds"),
}
OPTION_NAMES = ("id", *_BOOLEANS, *_TEXTS, *_INTEGERS, "metadata", "retries")
_CAMEL = re.compile(r"(?<!^)([A-Z])")


def gateway_headers(
    options: object, *, id_allowed: bool = True, where: str = "gateway option"
) -> tuple[str, dict[str, bytes]]:
    """(gateway id, headers) for `options`; the id is `default` when not given."""
    if options is None:
        return DEFAULT_GATEWAY, {}
    if not isinstance(options, Mapping):
        raise TypeError(f"gateway must be a dict of options, got {type(options).__name__}")
    headers: dict[str, bytes] = {}
    gateway_id = DEFAULT_GATEWAY
    for name, value in options.items():
        label = f"{where} '{name}'"
        if name == "id" and id_allowed:
            gateway_id = check_gateway_id(value, label)
        elif name in _BOOLEANS:
            headers[_BOOLEANS[name]] = b"true" if _boolean(value, label) else b"false"
        elif name in _TEXTS:
            headers[_TEXTS[name]] = _header_text(value, label).encode()
        elif name in _INTEGERS:
            header, low, unit = _INTEGERS[name]
            headers[header] = str(_integer(value, label, low, None, unit)).encode()
        elif name == "metadata":
            headers["cf-aig-metadata"] = metadata_json(value, label).encode()
        elif name == "retries":
            headers.update(_retry_headers(value, label))
        elif name == "id":
            raise ValueError(
                f"{label} is not accepted here: the gateway is the one named in ai.gateway(id)"
            )
        else:
            raise ValueError(_unknown(name, where, OPTION_NAMES))
    return gateway_id, headers


def metadata_json(value: object, label: str) -> str:
    """A flat mapping of metadata as compact JSON (ASCII, so it travels in a header)."""
    return json.dumps(check_metadata(value, label), separators=(",", ":"), allow_nan=False)


def check_metadata(value: object, label: str) -> dict[str, MetadataValue]:
    """A flat mapping of metadata (string keys; string, number, boolean or None values)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{label} must be a dict, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"{label} keys must be strings, got {type(key).__name__}")
        if not isinstance(item, str | int | float | bool) and item is not None:
            raise TypeError(
                f"{label} value for {key!r} must be a string, number, boolean or None, "
                f"got {type(item).__name__}"
            )
    return dict(value)


def _retry_headers(value: object, label: str) -> dict[str, bytes]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{label} must be a dict, got {type(value).__name__}")
    headers: dict[str, bytes] = {}
    for name, item in value.items():
        inner = f"{label[:-1]}.{name}'"
        if name == "backoff":
            if not isinstance(item, str):
                raise TypeError(f"{inner} must be a string, got {type(item).__name__}")
            if item not in BACKOFFS:
                raise ValueError(f"{inner} must be one of {', '.join(BACKOFFS)}, got {item!r}")
            headers["cf-aig-backoff"] = item.encode()
        elif name in _RETRIES:
            header, low, unit = _RETRIES[name]
            high = MAX_ATTEMPTS if name == "max_attempts" else None
            headers[header] = str(_integer(item, inner, low, high, unit)).encode()
        else:
            known = ("max_attempts", "retry_delay_ms", "backoff")
            raise ValueError(_unknown(name, "retries option", known))
    return headers


def _boolean(value: object, label: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{label} must be True or False, got {type(value).__name__}")
    return value


def _integer(value: object, label: str, low: int, high: int | None, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{label} must be an int ({unit}), got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{label} must be {bounds} ({unit}), got {value}")
    return value


def _header_text(value: object, label: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{label} must be a string, got {type(value).__name__}")
    if not value or "\r" in value or "\n" in value:
        raise ValueError(f"{label} must be a non-empty string without line breaks")
    return value


def _unknown(name: object, where: str, known: Sequence[str]) -> str:
    hint = ""
    if isinstance(name, str):
        snake = _CAMEL.sub(r"_\1", name).lower()
        if snake != name and snake in known:
            hint = f" (did you mean '{snake}'?)"
    return f"unknown {where} {name!r}{hint}; known: {', '.join(known)}"


def check_gateway_id(value: object, label: str = "gateway id") -> str:
    """A gateway id: 1 to 64 of a-z, 0-9, '-' and '_'."""
    if not isinstance(value, str):
        raise TypeError(f"{label} must be a string, got {type(value).__name__}")
    if not GATEWAY_ID.fullmatch(value):
        raise ValueError(f"{label} must be 1 to 64 of a-z, 0-9, '-' and '_', got {value!r}")
    return value


def check_account_id(value: object) -> str:
    """An account id: 32 lowercase hexadecimal characters."""
    if not isinstance(value, str):
        raise TypeError(f"account_id must be a string, got {type(value).__name__}")
    if not ACCOUNT_ID.fullmatch(value):
        raise ValueError(f"account_id must be 32 lowercase hex characters, got {value!r}")
    return value


def universal_steps(steps: object) -> list[dict[str, Any]]:
    """Steps as the gateway takes them: always a list; header values that are numbers, booleans
    or objects sent as text (as Cloudflare's binding does). The caller's steps are not changed."""
    if isinstance(steps, Mapping):
        given: list[object] = [steps]
    elif isinstance(steps, Sequence) and not isinstance(steps, str | bytes):
        given = list(steps)
    else:
        raise TypeError(f"steps must be a step dict or a list of them, got {type(steps).__name__}")
    if not given:
        raise ValueError("steps must not be empty")
    prepared: list[dict[str, Any]] = []
    for index, step in enumerate(given):
        if not isinstance(step, Mapping):
            raise TypeError(f"steps[{index}] must be a dict, got {type(step).__name__}")
        copy = dict(step)
        headers = copy.get("headers")
        if isinstance(headers, Mapping):
            copy["headers"] = {name: _header_value(value) for name, value in headers.items()}
        prepared.append(copy)
    return prepared


def _header_value(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping | list):
        return json.dumps(value, separators=(",", ":"))
    return value
