"""`cf-aig-custom-cost`: the client's own price for one request, in place of the catalog's.

    {"per_token_in": 0.000001, "per_token_out": 0.000002}          USD per token
    {..., "per_cache_read_token": n, "per_cache_write_token": n}    each defaults to per_token_in
    {"total_cost": 0.05}                                            USD for the whole request

Numbers are read as exact decimals (never floats) and become exact nano-dollar rates
(`money.exact_nanos`); a cost is then rounded once, half up, like every catalog cost. Reasoning
tokens pay the output rate; citation tokens and search fees cost nothing (the custom price is the
whole price). A `total_cost` is held and charged as it is, whatever the usage; a call that
produced nothing is released, as always.

Who may set one: a request paid with the client's own provider key (BYOK), where the price only
feeds the gateway's spend rules and the log. A Unified Billing request draws on credits at the
operator's prices, so there it is a 400 unless the operator sets
`billing.allow_custom_cost_unified` (and even then the model must be in the catalog). With a
custom cost, a BYOK request is metered (a hold without credits) even for a model the catalog does
not price, and even when no spend rule applies, so its log carries the cost.

Bad values are a 400 naming the header, before anything is stored or sent: invalid JSON, another
shape, unknown or missing fields, a non-number, a negative, more than `MAX_DECIMAL_PLACES`
places, or above the caps (which also keep an 8 KB header from expanding into a huge number).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from tollgate.billing.prices import ModelPrice, Prices
from tollgate.errors import InvalidRequest
from tollgate.features.headers import header, invalid_header
from tollgate.money import Nanos, exact_nanos, from_dollars
from tollgate.providers.registry import PROVIDER_ALIASES

CUSTOM_COST_HEADER = b"cf-aig-custom-cost"
RATE_FIELDS = ("per_token_in", "per_token_out", "per_cache_read_token", "per_cache_write_token")
TOTAL_FIELD = "total_cost"
MAX_RATE_USD = Decimal(1)  # per token: 1,000x the dearest list price there is
MAX_TOTAL_USD = Decimal(10_000)  # per request
MAX_DECIMAL_PLACES = 18  # 1e-18 USD is a billionth of a nano-dollar: finer means nothing
# The hold's output estimate for a model the catalog does not know, when the request sets no
# cap. Usage above it is still charged in full at settlement (the ledger's one overshoot).
UNLISTED_MAX_OUTPUT_TOKENS = 4096

_SHAPE = (
    '{"per_token_in": n, "per_token_out": n[, "per_cache_read_token": n, '
    '"per_cache_write_token": n]} or {"total_cost": n}, in USD'
)
_ZERO = Fraction(0)


@dataclass(frozen=True, slots=True)
class CustomCost:
    """One request's custom price, exact: per-token rates, or a total for the whole request."""

    prices: Prices  # nano-dollars per token; all zero for a total
    total_nanos: Nanos  # charged once per request on top of the token cost; 0 for rates
    # The operator's `billing.allow_custom_cost_unified`, read with the header so the meter
    # (which knows whether the request uses credits) can enforce it without the settings.
    unified_allowed: bool

    def price_for(self, provider: str, model: str, listed: ModelPrice | None) -> ModelPrice:
        """The price the meter uses: the listed model's identity and output limit (so spend
        rules match it as before), with this request's rates."""
        if listed is not None:
            return ModelPrice(
                listed.id,
                listed.provider,
                listed.model,
                listed.context_window,
                listed.max_output_tokens,
                self.prices,
                embedding=listed.embedding,
            )
        slug = PROVIDER_ALIASES.get(provider, provider)
        return ModelPrice(
            f"{slug}/{model}", slug, model, 0, UNLISTED_MAX_OUTPUT_TOKENS, self.prices
        )


def read_custom_cost(
    headers: list[tuple[bytes, bytes]], *, unified_allowed: bool
) -> CustomCost | None:
    """The request's custom price, or None when the header is absent."""
    raw = header(headers, CUSTOM_COST_HEADER)
    if raw is None:
        return None
    try:
        parsed = json.loads(
            raw, parse_float=Decimal, parse_int=Decimal, parse_constant=_no_constant
        )
    except ValueError:  # JSONDecodeError, and NaN / Infinity
        raise invalid_header(CUSTOM_COST_HEADER, _SHAPE, raw) from None
    if not isinstance(parsed, dict) or not parsed:
        raise invalid_header(CUSTOM_COST_HEADER, _SHAPE, raw)
    unknown = [key for key in parsed if key not in (*RATE_FIELDS, TOTAL_FIELD)]
    if unknown:
        raise invalid_header(CUSTOM_COST_HEADER, _SHAPE, f"unknown field {unknown[0]}")
    if TOTAL_FIELD in parsed:
        if len(parsed) > 1:
            raise invalid_header(
                CUSTOM_COST_HEADER, "either total_cost alone or per-token rates", raw
            )
        total = from_dollars(_usd(parsed, TOTAL_FIELD, MAX_TOTAL_USD))
        return CustomCost(Prices(_ZERO, _ZERO), total, unified_allowed)
    missing = [key for key in RATE_FIELDS[:2] if key not in parsed]
    if missing:
        raise invalid_header(CUSTOM_COST_HEADER, _SHAPE, f"no {missing[0]}")
    per_in, per_out = (exact_nanos(_usd(parsed, key, MAX_RATE_USD)) for key in RATE_FIELDS[:2])
    cache_read, cache_write = (
        exact_nanos(_usd(parsed, key, MAX_RATE_USD)) if key in parsed else per_in
        for key in RATE_FIELDS[2:]
    )
    # Cache writes of either duration pay the one write rate; reasoning pays the output rate
    # (`Prices.effective`); citations and search fees are left unset, so they cost nothing.
    prices = Prices(per_in, per_out, cached_input=cache_read, cache_write=cache_write)
    return CustomCost(prices, 0, unified_allowed)


def not_allowed_for_unified_billing() -> InvalidRequest:
    return InvalidRequest(
        "The cf-aig-custom-cost header is accepted only on requests paid with your own provider "
        "key (BYOK): this request uses Unified Billing credits, priced by the operator. Remove "
        "the header, send your own provider key, or ask the operator to allow custom costs "
        "(billing.allow_custom_cost_unified).",
        code="custom_cost_not_allowed",
        param=CUSTOM_COST_HEADER.decode(),
    )


def _usd(parsed: dict[str, Any], key: str, cap: Decimal) -> Decimal:
    """A field as an exact, non-negative, bounded number of USD."""
    value = parsed[key]
    if not isinstance(value, Decimal):
        shown = json.dumps(value, default=str)
        raise invalid_header(CUSTOM_COST_HEADER, f"{key} as a number of USD", f"{key}: {shown}")
    if value < 0 or value > cap:
        raise invalid_header(CUSTOM_COST_HEADER, f"{key} from 0 to {cap} USD", f"{key}: {value}")
    try:
        exact = value.quantize(Decimal(1).scaleb(-MAX_DECIMAL_PLACES)) == value
    except InvalidOperation:  # more digits than the context holds: certainly too many places
        exact = False
    if not exact:
        raise invalid_header(
            CUSTOM_COST_HEADER,
            f"{key} with at most {MAX_DECIMAL_PLACES} decimal places",
            f"{key}: {value}",
        )
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number of USD")
