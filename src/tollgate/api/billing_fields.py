"""The billing API's request fields: integer cents, a choice among names, a time in
milliseconds. A wrong value is a 400 `invalid_field` naming the field, as Cloudflare's billing
API answers (`tollgate.api.billing`); the CLI and the dashboard share the limits' bounds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from tollgate.errors import InvalidRequest

MIN_LIMIT_CENTS = 100
MAX_LIMIT_CENTS = 1_000_000_000  # $10M


def cents(body: dict[str, Any], name: str, minimum: int, maximum: int) -> int:
    """A strict JSON integer of cents in [minimum, maximum], or a 400 naming the field."""
    value = body.get(name)
    if value is None:
        raise bad_field(
            f"{name} is required: an integer number of cents (e.g. 2500 for $25.00)", name
        )
    if isinstance(value, bool) or not isinstance(value, int):
        shown = orjson.dumps(value).decode()[:40]
        raise bad_field(
            f"{name} must be an integer number of cents (e.g. 2500 for $25.00), not {shown}", name
        )
    if not minimum <= value <= maximum:
        raise bad_field(f"{name} must be from {minimum} to {maximum} cents; got {value}", name)
    return value


def choice(body: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = body.get(name)
    if not isinstance(value, str) or value not in allowed:
        shown = orjson.dumps(value).decode()[:40] if value is not None else "nothing"
        raise bad_field(f"{name} must be one of {', '.join(allowed)}; got {shown}", name)
    return value


def bad_field(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_field", param=param)


def ms_param(raw: str | None, name: str) -> datetime | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 253_402_300_799_000:  # up to year 9999; rejects nan and inf
        raise bad_field(f"{name} must be a Unix time in milliseconds; got '{raw[:40]}'", name)
    return datetime.fromtimestamp(value / 1000, UTC)
