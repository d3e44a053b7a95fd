"""A model's prices, held exactly, and the one cost formula. (Loading and validating the data file
is `tollgate.billing.catalog_parse`; looking models up is `tollgate.billing.catalog`.)

Unit. Token prices are exact ``Fraction`` nano-dollars PER TOKEN ($1 per million tokens is 1000
nanos per token): list prices like $0.0375/M are not whole nanos per token. Per-unit fees
(Perplexity's searches and per-request search fees, listed in USD per 1,000) are nano-dollars per
unit. A cost is the exact rational sum of every meter times its price, rounded ONCE with the
half-up rule of ``tollgate.money``. The markup multiplies prices exactly at load, so it adds no
second rounding either.

Cost follows the ``tollgate.canonical.Usage`` convention, into which every provider's
``usage_from_response`` has already mapped its own semantics (OpenAI cached tokens inside
``prompt_tokens``, Anthropic cache reads/writes beside ``input_tokens``, Gemini thoughts beside
candidates, xAI reasoning beside completion, Perplexity's meters beside the tokens)::

    uncached x input + cache reads x cached_input
      + (cache writes - 1h writes) x cache_write + 1h writes x cache_write_1h
      + (output - reasoning) x output + reasoning x (reasoning price, else output)
      + citation tokens x citation + searches x search query fee
      + the per-request search fee for the request's search context size (Sonar Pro's "Pro
        Search" table when the request used it)

Off-peak prices (DeepSeek: half price outside its peak hours) apply only to a request that was
admitted and settled outside the model's peak windows and did not span one (`ModelPrice.
is_off_peak`); anything touching a peak window pays the peak (list) price, which is also what a
hold reserves. Which instant the provider itself uses is not published, so this is the reading
that can never under-bill.

A cache read or write on a model with no such price bills at the plain ``input`` price, and a
1-hour write without its own price at ``cache_write`` (upper bounds: never under-billed).
Citations, searches and request fees bill only where the model lists a price for them (a provider
that reports them for other models does not charge them). A search context size the model's fee
table does not list pays its highest fee.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from tollgate.canonical import Usage
from tollgate.money import round_half_up

NANOS_PER_TOKEN_PER_USD_PER_MTOK = 1000  # $1 / 1e6 tokens = 1e9 nanos / 1e6 tokens
NANOS_PER_UNIT_PER_USD_PER_K = 1_000_000  # $1 / 1000 units = 1e9 nanos / 1e3 units
# Billed per token, in USD per million tokens. The first six are shown in every model's public
# pricing (null when not applicable); ``citation`` (Perplexity citation tokens) only when set.
PUBLIC_TOKEN_FIELDS = (
    "input",
    "output",
    "cached_input",
    "cache_write",
    "cache_write_1h",
    "reasoning",
)
TOKEN_FIELDS = (*PUBLIC_TOKEN_FIELDS, "citation")
SEARCH_QUERY_FIELD = "search_queries_per_1k"  # USD per 1,000 searches the model ran
REQUEST_FEE_FIELD = "request_fee_per_1k"  # {"low": USD per 1,000 requests, "medium", "high"}
PRO_SEARCH_FEE_FIELD = "pro_search_request_fee_per_1k"  # the same, for Sonar Pro's Pro Search
SEARCH_CONTEXTS = ("low", "medium", "high")
# Off-peak token prices (USD per million tokens) and the peak windows they depend on.
OFF_PEAK_FIELDS = ("off_peak_input", "off_peak_output", "off_peak_cached_input")
PEAK_HOURS_FIELD = "peak_hours_utc"  # {"days": "mon-fri" | "mon-sun", "windows": ["01:00-04:00"]}


class CatalogError(ValueError):
    """Malformed catalog data or override; the message names the model and the field."""


@dataclass(frozen=True, slots=True)
class Prices:
    """One price set (``None`` = not applicable): token prices in nanos per token, ``search_query``
    in nanos per search, ``request_fee`` nanos per request by search context size."""

    input: Fraction
    output: Fraction
    cached_input: Fraction | None = None
    cache_write: Fraction | None = None
    cache_write_1h: Fraction | None = None
    reasoning: Fraction | None = None
    citation: Fraction | None = None
    search_query: Fraction | None = None
    request_fee: tuple[tuple[str, Fraction], ...] = ()
    pro_search_fee: tuple[tuple[str, Fraction], ...] = ()
    # Every rate with the fallbacks of the cost formula applied, over one common denominator,
    # computed once: a cost is then integer arithmetic, about 20x cheaper than summing Fractions
    # on every request. (denominator, token and search numerators, request-fee numerators,
    # Pro Search request-fee numerators)
    scaled: tuple[int, tuple[int, ...], dict[str, int], dict[str, int]] = field(
        init=False, repr=False, compare=False
    )

    def effective(self) -> dict[str, Fraction]:
        """The per-token price each usage category actually pays (the fallbacks of the cost
        formula applied): what a cost multiplies, and what tiers are compared by."""
        write = _or(self.cache_write, self.input)
        return {
            "input": self.input,
            "cached_input": _or(self.cached_input, self.input),
            "cache_write": write,
            "cache_write_1h": _or(self.cache_write_1h, write),
            "output": self.output,
            "reasoning": _or(self.reasoning, self.output),
            "citation": _or(self.citation, Fraction(0)),
        }

    def __post_init__(self) -> None:
        # In `scaled_cost`'s order: the token rates, then the search query fee.
        rates = (*self.effective().values(), _or(self.search_query, Fraction(0)))
        fees, pro = dict(self.request_fee), dict(self.pro_search_fee)
        every = (*rates, *fees.values(), *pro.values())
        denominator = math.lcm(*(rate.denominator for rate in every))

        def scale(rate: Fraction) -> int:
            return rate.numerator * (denominator // rate.denominator)

        scaled = (
            denominator,
            tuple(map(scale, rates)),
            {context: scale(fee) for context, fee in fees.items()},
            {context: scale(fee) for context, fee in pro.items()},
        )
        object.__setattr__(self, "scaled", scaled)


@dataclass(frozen=True, slots=True)
class PriceTier:
    above_input_tokens: int
    prices: Prices


@dataclass(frozen=True, slots=True)
class PeakHours:
    """When a model's peak (list) prices apply: minute ranges [start, end) of each UTC day whose
    weekday (Monday = 0) is in `days`; every other minute is off-peak."""

    days: frozenset[int]
    windows: tuple[tuple[int, int], ...]  # minutes since midnight, start < end

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Whether [start, end] touches a peak window (both aware datetimes)."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        day = start.replace(hour=0, minute=0, second=0, microsecond=0)
        while day <= end:
            if day.weekday() in self.days:
                for first, last in self.windows:
                    if start < day + timedelta(minutes=last) and end >= day + timedelta(
                        minutes=first
                    ):
                        return True
            day += timedelta(days=1)
        return False

    def describe(self) -> dict[str, Any]:
        """The data file's form, for the public pricing."""
        days = "mon-fri" if self.days == frozenset(range(5)) else "mon-sun"
        return {"days": days, "windows": [f"{_hhmm(a)}-{_hhmm(b)}" for a, b in self.windows]}


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True, slots=True)
class ModelPrice:
    id: str  # "{provider}/{model}"
    provider: str
    model: str
    context_window: int
    max_output_tokens: int
    prices: Prices
    tiers: tuple[PriceTier, ...] = ()
    listed: Mapping[str, Fraction] = field(default_factory=dict)  # shown, never billed
    aliases: tuple[str, ...] = ()
    embedding: bool = False
    note: str | None = None
    off_peak: Prices | None = None  # with `peak_hours`: the price set outside them
    peak_hours: PeakHours | None = None

    def is_off_peak(self, start: datetime, end: datetime) -> bool:
        """Whether a request admitted at `start` and settled at `end` pays off-peak prices."""
        if self.off_peak is None or self.peak_hours is None:
            return False
        return not self.peak_hours.overlaps(start, end)

    def prices_for(self, input_tokens: int, *, off_peak: bool = False) -> Prices:
        """The price set a prompt of ``input_tokens`` (cache reads and writes included) pays."""
        if off_peak and self.off_peak is not None:
            return self.off_peak  # (off-peak models have no prompt-size tiers)
        chosen = self.prices
        for tier in self.tiers:  # ascending thresholds
            if input_tokens > tier.above_input_tokens:
                chosen = tier.prices
        return chosen

    @property
    def has_request_fee(self) -> bool:
        """Whether a request pays a search fee by context size (the meter then holds it)."""
        return bool(self.prices.request_fee)

    @property
    def has_pro_search(self) -> bool:
        """Whether the model has Sonar Pro's "Pro Search" request fees."""
        return bool(self.prices.pro_search_fee)

    def to_public(self) -> dict[str, Any]:
        """PRODUCT.md §2.2's shape: USD per million tokens as JSON numbers, null where N/A;
        per-unit fees in USD per 1,000 where the model has them."""
        pricing: dict[str, Any] = {"currency": "USD"}
        pricing.update(_public_prices(self.prices))
        pricing.update({key: _usd_per_mtok(value) for key, value in sorted(self.listed.items())})
        if self.off_peak is not None and self.peak_hours is not None:
            pricing.update(
                {
                    "off_peak_input": _usd_per_mtok(self.off_peak.input),
                    "off_peak_output": _usd_per_mtok(self.off_peak.output),
                    "off_peak_cached_input": _usd_per_mtok(self.off_peak.cached_input),
                    PEAK_HOURS_FIELD: self.peak_hours.describe(),
                }
            )
        if self.tiers:
            pricing["tiers"] = [
                {"above_input_tokens": t.above_input_tokens, **_public_prices(t.prices)}
                for t in self.tiers
            ]
        return {
            "id": self.id,
            "provider": self.provider,
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "pricing": pricing,
        }


def usage_cost(price: ModelPrice, usage: Usage, *, off_peak: bool = False) -> Fraction:
    """The unrounded exact cost in nano-dollars (the module docstring has the formula)."""
    return Fraction(*scaled_cost(price, usage, off_peak=off_peak))


def scaled_cost(price: ModelPrice, usage: Usage, *, off_peak: bool = False) -> tuple[int, int]:
    """The exact cost as (numerator, denominator) nano-dollars: `Prices.scaled` applied."""
    counts = (
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.cache_write_input_tokens,
        usage.cache_write_1h_input_tokens,
        usage.reasoning_tokens,
        usage.citation_tokens,
        usage.search_queries,
    )
    if min(counts) < 0:
        raise ValueError(f"negative count in {usage}")
    uncached = usage.uncached_input_tokens
    if (
        uncached < 0
        or usage.reasoning_tokens > usage.output_tokens
        or usage.cache_write_1h_input_tokens > usage.cache_write_input_tokens
    ):
        raise ValueError(f"inconsistent usage (breakdown exceeds its total): {usage}")
    denominator, rates, fees, pro_fees = price.prices_for(
        usage.input_tokens, off_peak=off_peak
    ).scaled
    if usage.pro_search and pro_fees:
        fees = pro_fees
    input_, cached, write, write_1h, output, reasoning, citation, search = rates
    numerator = (
        uncached * input_
        + usage.cached_input_tokens * cached
        + (usage.cache_write_input_tokens - usage.cache_write_1h_input_tokens) * write
        + usage.cache_write_1h_input_tokens * write_1h
        + (usage.output_tokens - usage.reasoning_tokens) * output
        + usage.reasoning_tokens * reasoning
        + usage.citation_tokens * citation
        + usage.search_queries * search
    )
    if fees and usage.search_context is not None:
        numerator += fees.get(usage.search_context, max(fees.values()))
    return numerator, denominator


# --- rendering and comparing -----------------------------------------------------------------


def _or(value: Fraction | None, default: Fraction) -> Fraction:
    return default if value is None else value


def _usd(nanos: Fraction, per: int) -> float:
    """Display only (JSON number): USD for `per` units of a price, 9 decimals at most."""
    usd = nanos * per / 10**9
    return float(Decimal(round_half_up(usd * 10**9)).scaleb(-9))


def _usd_per_mtok(nanos_per_token: Fraction | None) -> float | None:
    return None if nanos_per_token is None else _usd(nanos_per_token, 10**6)


def _public_prices(prices: Prices) -> dict[str, Any]:
    shown: dict[str, Any] = {
        name: _usd_per_mtok(getattr(prices, name)) for name in PUBLIC_TOKEN_FIELDS
    }
    if prices.citation is not None:
        shown["citation"] = _usd_per_mtok(prices.citation)
    if prices.search_query is not None:
        shown[SEARCH_QUERY_FIELD] = _usd(prices.search_query, 1000)
    if prices.request_fee:
        shown[REQUEST_FEE_FIELD] = {ctx: _usd(fee, 1000) for ctx, fee in prices.request_fee}
    if prices.pro_search_fee:
        shown[PRO_SEARCH_FEE_FIELD] = {ctx: _usd(fee, 1000) for ctx, fee in prices.pro_search_fee}
    return shown
