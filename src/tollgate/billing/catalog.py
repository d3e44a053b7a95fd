"""The price catalog: versioned data (``billing/data/catalog.json``), a pure loader, exact cost.

Data. ``catalog.json`` has a top-level ``version`` (the date its prices were read) and a list of
models. Each model is ``{"id": "{provider}/{model}", "provider", "context_window",
"max_output_tokens", "input", "output", ...}`` with every price a decimal STRING in USD per
million tokens (never a float). Billing price fields:

- ``input``, ``output`` (required); ``output`` covers reasoning unless ``reasoning`` is set;
- ``cached_input`` (cache reads), ``cache_write`` (Anthropic 5-minute / OpenAI 30-minute write),
  ``cache_write_1h``, ``reasoning`` (optional; ``null`` = not applicable);
- ``tiers``: ``[{"above_input_tokens": N, "input": ..., "output": ..., ...}]``: when the prompt
  (canonical ``Usage.input_tokens``, cache reads and writes included) exceeds ``N``, the WHOLE
  request bills at that tier; fields a tier omits keep the price of the tier below (or the
  base). Highest matching ``N`` wins. No tier may be cheaper than the one below it.

Any other ``[a-z0-9_]+`` key with a decimal value (``input_audio``, ``cache_write_12h``,
``off_peak_input``...) is a listed price that canonical ``Usage`` cannot carry: shown in
``to_public``, never billed. ``aliases``, ``embedding`` and ``note`` are optional.

Unit. Prices are held as exact ``Fraction`` nano-dollars PER TOKEN ($1 per million tokens is
1000 nanos per token). Fractions because list prices like $0.0375/M or $0.0028/M are not whole
nanos per token; a cost is the exact rational sum of ``tokens x price``, rounded ONCE with
``tollgate.money.round_half_up``. The markup multiplies prices exactly at load, so it adds no
second rounding either.

Cost (``Catalog.cost``) follows the ``tollgate.canonical.Usage`` convention, into which every
provider's ``usage_from_response`` has already mapped its own semantics (OpenAI cached tokens
inside ``prompt_tokens``, Anthropic cache reads/writes beside ``input_tokens``, Gemini thoughts
beside candidates, xAI reasoning beside completion...)::

    uncached x input + cached x cached_input + cache_writes x cache_write
      + (output - reasoning) x output + reasoning x (reasoning price, else output)

A cache read or write on a model with no such price bills at the plain ``input`` price (an upper
bound: never under-billed). ``Usage`` has one cache-write count, so writes bill at ``cache_write``
(the shortest retention); 1-hour/12-hour writes are listed but cannot be told apart yet.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from importlib import resources
from types import MappingProxyType
from typing import Any

from tollgate.canonical import Usage
from tollgate.money import Nanos, round_half_up, round_half_up_ratio
from tollgate.providers.registry import PROVIDER_ALIASES

NANOS_PER_TOKEN_PER_USD_PER_MTOK = 1000  # $1 / 1e6 tokens = 1e9 nanos / 1e6 tokens
BILLED_FIELDS = ("input", "output", "cached_input", "cache_write", "cache_write_1h", "reasoning")
REQUIRED_FIELDS = ("input", "output")
_OPTIONAL_BILLED = ("cached_input", "cache_write", "cache_write_1h", "reasoning")
_META_FIELDS = frozenset(
    {"id", "provider", "context_window", "max_output_tokens", "tiers", "aliases"}
    | {"embedding", "note"}
)
_EXTRA_KEY = re.compile(r"^[a-z0-9_]+$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# Dated snapshot suffixes: -2024-08-06, -20250929, -26-04, -0613 / -2505.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{2}-\d{2}|\d{4})$")

Fail = Callable[[str, str], "CatalogError"]  # (field, problem) -> error naming the model


class CatalogError(ValueError):
    """Malformed catalog data or override; the message names the model and the field."""


@dataclass(frozen=True, slots=True)
class Prices:
    """One price set in exact nano-dollars per token (``None`` = not applicable)."""

    input: Fraction
    output: Fraction
    cached_input: Fraction | None = None
    cache_write: Fraction | None = None
    cache_write_1h: Fraction | None = None
    reasoning: Fraction | None = None
    # The five billed rates (input, cache read, cache write, output, reasoning, with the
    # fallbacks of `usage_cost` applied) over one common denominator, computed once: a cost is
    # then integer arithmetic, about 20x cheaper than summing Fractions on every request.
    scaled: tuple[int, tuple[int, int, int, int, int]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        rates = (
            self.input,
            _or(self.cached_input, self.input),
            _or(self.cache_write, self.input),
            self.output,
            _or(self.reasoning, self.output),
        )
        denominator = math.lcm(*(rate.denominator for rate in rates))
        numerators = tuple(rate.numerator * (denominator // rate.denominator) for rate in rates)
        object.__setattr__(self, "scaled", (denominator, numerators))


@dataclass(frozen=True, slots=True)
class PriceTier:
    above_input_tokens: int
    prices: Prices


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

    def prices_for(self, input_tokens: int) -> Prices:
        """The price set a prompt of ``input_tokens`` (cache reads and writes included) pays."""
        chosen = self.prices
        for tier in self.tiers:  # ascending thresholds
            if input_tokens > tier.above_input_tokens:
                chosen = tier.prices
        return chosen

    def to_public(self) -> dict[str, Any]:
        """PRODUCT.md §2.2's shape: USD per million tokens as JSON numbers, null where N/A."""
        pricing: dict[str, Any] = {"currency": "USD"}
        pricing.update(_public_prices(self.prices))
        pricing.update({key: _usd_per_mtok(value) for key, value in sorted(self.listed.items())})
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


@dataclass(frozen=True, slots=True)
class Catalog:
    version: str
    markup_percent: Fraction
    _models: Mapping[str, ModelPrice]
    _index: Mapping[str, str]  # "provider/name-or-alias" -> canonical id

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        """The price of ``model`` on ``provider``, or None when unpriced (refuse, never bill $0).

        Resolves the provider's aliases (``google`` -> ``google-ai-studio``...), listed model
        aliases, a ``models/`` prefix, and a dated snapshot name (``gpt-4o-2024-05-13`` ->
        ``gpt-4o``) when that snapshot is not listed itself.
        """
        slug = PROVIDER_ALIASES.get(provider, provider)
        name = model.removeprefix("models/")
        for candidate in (name, _SNAPSHOT.sub("", name)):
            found = self._index.get(f"{slug}/{candidate}")
            if found is not None:
                return self._models[found]
        return None

    def models(self, search: str | None = None, provider: str | None = None) -> list[ModelPrice]:
        """Every model, sorted by id; ``search`` matches id or alias, case-insensitively."""
        slug = PROVIDER_ALIASES.get(provider, provider) if provider else None
        needle = search.lower() if search else None
        return [
            price
            for model_id, price in sorted(self._models.items())
            if (slug is None or price.provider == slug)
            and (
                needle is None
                or needle in model_id.lower()
                or any(needle in alias.lower() for alias in price.aliases)
            )
        ]

    def cost(self, provider: str, price: ModelPrice, usage: Usage) -> Nanos:
        """Exact nano-dollar cost of ``usage`` at ``price`` (the one rounding: half up)."""
        slug = PROVIDER_ALIASES.get(provider, provider)
        if slug != price.provider:
            raise ValueError(f"price of {price.id!r} used for provider {provider!r}")
        return round_half_up_ratio(*_scaled_cost(price, usage))


def usage_cost(price: ModelPrice, usage: Usage) -> Fraction:
    """The unrounded exact cost in nano-dollars (module docstring has the formula)."""
    return Fraction(*_scaled_cost(price, usage))


def _scaled_cost(price: ModelPrice, usage: Usage) -> tuple[int, int]:
    """The exact cost as (numerator, denominator) nano-dollars: `Prices.scaled` applied."""
    counts = (
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.cache_write_input_tokens,
        usage.reasoning_tokens,
    )
    if min(counts) < 0:
        raise ValueError(f"negative token count in {usage}")
    uncached = usage.uncached_input_tokens
    if uncached < 0 or usage.reasoning_tokens > usage.output_tokens:
        raise ValueError(f"inconsistent usage (breakdown exceeds its total): {usage}")
    denominator, (input_, cached, write, output, reasoning) = price.prices_for(
        usage.input_tokens
    ).scaled
    numerator = (
        uncached * input_
        + usage.cached_input_tokens * cached
        + usage.cache_write_input_tokens * write
        + (usage.output_tokens - usage.reasoning_tokens) * output
        + usage.reasoning_tokens * reasoning
    )
    return numerator, denominator


def load_catalog(
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    markup_percent: str | int | Decimal = 0,
) -> Catalog:
    """The packaged catalog with operator ``overrides`` and an exact ``markup_percent``.

    ``overrides`` maps ``"provider/model"`` (or an alias) to fields in the data file's form:
    prices replace per field (``null`` removes an optional one); an unknown id adds a model,
    which then needs every required field.
    """
    text = resources.files("tollgate.billing").joinpath("data/catalog.json").read_text("utf-8")
    return parse_catalog(json.loads(text), overrides=overrides, markup_percent=markup_percent)


def parse_catalog(
    data: Any,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    markup_percent: str | int | Decimal = 0,
) -> Catalog:
    """Validate and build a Catalog from decoded catalog data (pure; used by load_catalog)."""
    if not isinstance(data, Mapping):
        raise CatalogError("catalog: top level must be an object")
    version = data.get("version")
    if not isinstance(version, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", version):
        raise CatalogError("catalog: 'version' must be a YYYY-MM-DD date string")
    rows = data.get("models")
    if not isinstance(rows, list):
        raise CatalogError("catalog: 'models' must be a list")
    raw: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not isinstance(row, Mapping) or not isinstance(row.get("id"), str):
            raise CatalogError(f"catalog: every model needs a string 'id' (got {row!r})")
        if row["id"] in raw:
            raise CatalogError(f"catalog model {row['id']!r}: listed twice")
        raw[row["id"]] = dict(row)
    _apply_overrides(raw, overrides or {})
    factor = _markup_factor(markup_percent)
    models = {model_id: _parse_model(model_id, fields, factor) for model_id, fields in raw.items()}
    index = _build_index(models)
    return Catalog(version, (factor - 1) * 100, MappingProxyType(models), MappingProxyType(index))


# --- parsing -------------------------------------------------------------------------------


def _apply_overrides(
    raw: dict[str, dict[str, Any]], overrides: Mapping[str, Mapping[str, Any]]
) -> None:
    aliases = {
        f"{model_id.split('/', 1)[0]}/{alias}": model_id
        for model_id, fields in raw.items()
        for alias in (fields.get("aliases") or [])
        if isinstance(alias, str)
    }
    for key, change in overrides.items():
        if not isinstance(key, str) or "/" not in key:
            raise CatalogError(f"override {key!r}: key must be 'provider/model'")
        if not isinstance(change, Mapping):
            raise CatalogError(f"override {key!r}: value must be an object of fields")
        model_id = aliases.get(key, key)
        base = raw.get(model_id, {"id": model_id, "provider": model_id.split("/", 1)[0]})
        merged = {**base, **change, "id": model_id}
        for name in _OPTIONAL_BILLED:
            if name in change and change[name] is None:
                merged.pop(name, None)
        raw[model_id] = merged


def _parse_model(model_id: str, fields: Mapping[str, Any], factor: Fraction) -> ModelPrice:
    def fail(name: str, problem: str) -> CatalogError:
        return CatalogError(f"catalog model {model_id!r} field {name!r}: {problem}")

    provider, sep, name = model_id.partition("/")
    if not sep or not name or not _SLUG.match(provider):
        raise fail("id", "must be '{provider}/{model}' with a lowercase provider slug")
    if fields.get("provider", provider) != provider:
        raise fail("provider", f"must match the id's prefix {provider!r}")
    for name_ in fields:
        if name_ not in _META_FIELDS and not _EXTRA_KEY.match(name_):
            raise fail(name_, "unknown field name")
    embedding = fields.get("embedding", False)
    if not isinstance(embedding, bool):
        raise fail("embedding", "must be true or false")
    prices = _parse_prices(fields, factor, fail)
    tiers = _parse_tiers(fields.get("tiers", []), prices, factor, fail)
    listed = {
        key: _price(value, factor, key, fail)
        for key, value in fields.items()
        if key not in _META_FIELDS and key not in BILLED_FIELDS
    }
    note = fields.get("note")
    if note is not None and not isinstance(note, str):
        raise fail("note", "must be a string")
    return ModelPrice(
        id=model_id,
        provider=provider,
        model=name,
        context_window=_count(fields, "context_window", fail, minimum=1),
        max_output_tokens=_count(fields, "max_output_tokens", fail, minimum=0 if embedding else 1),
        prices=prices,
        tiers=tiers,
        listed=MappingProxyType(listed),
        aliases=_aliases(fields.get("aliases", []), fail),
        embedding=embedding,
        note=note,
    )


def _parse_prices(fields: Mapping[str, Any], factor: Fraction, fail: Fail) -> Prices:
    for name in REQUIRED_FIELDS:
        if fields.get(name) is None:
            raise fail(name, "missing (required)")
    values = {
        name: _price(fields[name], factor, name, fail)
        for name in BILLED_FIELDS
        if fields.get(name) is not None
    }
    return Prices(**values)


def _parse_tiers(tiers: Any, base: Prices, factor: Fraction, fail: Fail) -> tuple[PriceTier, ...]:
    if not isinstance(tiers, list):
        raise fail("tiers", "must be a list")
    parsed: list[PriceTier] = []
    for index, tier in enumerate(tiers):
        where = f"tiers[{index}]"
        if not isinstance(tier, Mapping):
            raise fail(where, "must be an object")
        threshold = tier.get("above_input_tokens")
        if type(threshold) is not int or threshold < 0:
            raise fail(f"{where}.above_input_tokens", "must be a non-negative integer")
        if parsed and threshold <= parsed[-1].above_input_tokens:
            raise fail(f"{where}.above_input_tokens", "thresholds must strictly increase")
        unknown = set(tier) - {"above_input_tokens", *BILLED_FIELDS}
        if unknown:
            raise fail(f"{where}.{sorted(unknown)[0]}", "unknown tier field")
        previous = parsed[-1].prices if parsed else base
        changes: dict[str, Any] = {
            name: _price(tier[name], factor, f"{where}.{name}", fail)
            for name in BILLED_FIELDS
            if tier.get(name) is not None
        }
        prices = replace(previous, **changes)
        lower, higher = _effective(previous), _effective(prices)
        for name in BILLED_FIELDS:  # a bigger prompt must never be cheaper per token
            if higher[name] < lower[name]:
                raise fail(f"{where}.{name}", "cheaper than the tier below it")
        parsed.append(PriceTier(threshold, prices))
    return tuple(parsed)


def _price(value: Any, factor: Fraction, name: str, fail: Fail) -> Fraction:
    """A decimal string in USD per million tokens -> exact nanos per token (marked up)."""
    if not isinstance(value, str):
        raise fail(name, f"must be a decimal string in USD per million tokens, got {value!r}")
    try:
        decimal = Decimal(value)
    except InvalidOperation:
        raise fail(name, f"not a decimal number: {value!r}") from None
    if not decimal.is_finite():
        raise fail(name, f"not a finite number: {value!r}")
    if decimal < 0:
        raise fail(name, f"negative price: {value!r}")
    return Fraction(decimal) * NANOS_PER_TOKEN_PER_USD_PER_MTOK * factor


def _count(fields: Mapping[str, Any], name: str, fail: Fail, *, minimum: int) -> int:
    value = fields.get(name)
    if type(value) is not int or value < minimum:
        raise fail(name, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _aliases(value: Any, fail: Fail) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
        raise fail("aliases", "must be a list of model names")
    return tuple(value)


def _markup_factor(markup_percent: str | int | Decimal) -> Fraction:
    if isinstance(markup_percent, bool) or not isinstance(markup_percent, str | int | Decimal):
        raise CatalogError(f"markup_percent must be an exact decimal, got {markup_percent!r}")
    try:
        percent = Decimal(markup_percent)
    except InvalidOperation:
        raise CatalogError(f"markup_percent is not a decimal: {markup_percent!r}") from None
    if not percent.is_finite() or percent < 0:
        raise CatalogError(f"markup_percent must be a finite number >= 0, got {markup_percent!r}")
    return 1 + Fraction(percent) / 100


def _build_index(models: Mapping[str, ModelPrice]) -> dict[str, str]:
    index: dict[str, str] = {}
    for model_id, price in models.items():
        for key in (model_id, *(f"{price.provider}/{alias}" for alias in price.aliases)):
            if index.setdefault(key, model_id) != model_id:
                raise CatalogError(f"catalog model {model_id!r} field 'aliases': {key!r} is taken")
    return index


# --- rendering -----------------------------------------------------------------------------


def _or(value: Fraction | None, default: Fraction) -> Fraction:
    return default if value is None else value


def _effective(p: Prices) -> dict[str, Fraction]:
    """The per-token price each usage category actually pays (fallbacks applied)."""
    return {
        "input": p.input,
        "output": p.output,
        "cached_input": _or(p.cached_input, p.input),
        "cache_write": _or(p.cache_write, p.input),
        "cache_write_1h": _or(p.cache_write_1h, _or(p.cache_write, p.input)),
        "reasoning": _or(p.reasoning, p.output),
    }


def _usd_per_mtok(nanos_per_token: Fraction | None) -> float | None:
    """Display only (JSON number): USD per million tokens, 9 decimals at most. Never billed."""
    if nanos_per_token is None:
        return None
    usd = nanos_per_token / NANOS_PER_TOKEN_PER_USD_PER_MTOK
    return float(Decimal(round_half_up(usd * 10**9)).scaleb(-9))


def _public_prices(prices: Prices) -> dict[str, float | None]:
    return {name: _usd_per_mtok(getattr(prices, name)) for name in BILLED_FIELDS}
