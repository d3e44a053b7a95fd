"""Reading the price catalog's data (``billing/data/catalog.json``) and operator overrides into
exact prices: every field validated, every error naming the model and the field.

Each model is ``{"id": "{provider}/{model}", "provider", "context_window", "max_output_tokens",
"input", "output", ...}`` with every price a decimal STRING (never a float):

- ``input``, ``output`` (required), ``cached_input`` (cache reads), ``cache_write`` (Anthropic
  5-minute / OpenAI 30-minute writes), ``cache_write_1h``, ``reasoning`` (``output`` covers
  reasoning unless it is set) and ``citation`` (Perplexity citation tokens): USD per million
  tokens, optional ones ``null`` when not applicable;
- ``search_queries_per_1k``: USD per 1,000 searches the model ran (Perplexity Deep Research);
- ``request_fee_per_1k``: ``{"low": ..., "medium": ..., "high": ...}``, USD per 1,000 requests
  by search context size (Perplexity's Sonar models); ``pro_search_request_fee_per_1k`` the
  same for Sonar Pro's "Pro Search" (streamed requests with ``search_type`` pro or auto);
- ``off_peak_input``, ``off_peak_output`` (both required together), ``off_peak_cached_input``
  with ``peak_hours_utc``: ``{"days": "mon-fri" | "mon-sun", "windows": ["01:00-04:00", ...]}``:
  the prices outside the peak windows (DeepSeek); see ``prices.ModelPrice.is_off_peak``;
- ``tiers``: ``[{"above_input_tokens": N, "input": ..., "output": ..., ...}]``: when the prompt
  (canonical ``Usage.input_tokens``, cache reads and writes included) exceeds ``N``, the WHOLE
  request bills at that tier; token prices a tier omits keep the price of the tier below (or the
  base); fees are the base's. Highest matching ``N`` wins. No tier may be cheaper than the one
  below it.

Any other ``[a-z0-9_]+`` key with a decimal value (``input_audio``, ``cache_write_12h``...) is
a listed price that canonical ``Usage`` cannot carry: shown in ``to_public``, never billed.
``aliases``, ``embedding`` and ``note`` are optional.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from tollgate.billing.prices import (
    NANOS_PER_TOKEN_PER_USD_PER_MTOK,
    NANOS_PER_UNIT_PER_USD_PER_K,
    OFF_PEAK_FIELDS,
    PEAK_HOURS_FIELD,
    PRO_SEARCH_FEE_FIELD,
    REQUEST_FEE_FIELD,
    SEARCH_CONTEXTS,
    SEARCH_QUERY_FIELD,
    TOKEN_FIELDS,
    CatalogError,
    ModelPrice,
    PeakHours,
    Prices,
    PriceTier,
)

REQUIRED_FIELDS = ("input", "output")
FEE_FIELDS = (SEARCH_QUERY_FIELD, REQUEST_FEE_FIELD, PRO_SEARCH_FEE_FIELD)
# What an override may remove with null: everything billed but the two required prices.
_OPTIONAL_BILLED = (*TOKEN_FIELDS[2:], *FEE_FIELDS, *OFF_PEAK_FIELDS, PEAK_HOURS_FIELD)
_BILLED_KEYS = frozenset({*TOKEN_FIELDS, *FEE_FIELDS, *OFF_PEAK_FIELDS, PEAK_HOURS_FIELD})
_META_FIELDS = frozenset(
    {"id", "provider", "context_window", "max_output_tokens", "tiers", "aliases"}
    | {"embedding", "note"}
)
_EXTRA_KEY = re.compile(r"^[a-z0-9_]+$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

Fail = Callable[[str, str], CatalogError]  # (field, problem) -> error naming the model
Parsed = tuple[str, Fraction, Mapping[str, ModelPrice], Mapping[str, str]]


def parse(
    data: Any,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    markup_percent: str | int | Decimal = 0,
) -> Parsed:
    """Validate decoded catalog data: (version, markup percent, models by id, lookup index)."""
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
    return version, (factor - 1) * 100, MappingProxyType(models), MappingProxyType(index)


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
    off_peak, peak_hours = _parse_off_peak(fields, prices, factor, fail)
    if off_peak is not None and tiers:
        raise fail(PEAK_HOURS_FIELD, "off-peak prices and prompt-size tiers cannot be combined")
    listed = {
        key: _price(value, factor, key, fail)
        for key, value in fields.items()
        if key not in _META_FIELDS and key not in _BILLED_KEYS
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
        off_peak=off_peak,
        peak_hours=peak_hours,
    )


def _parse_off_peak(
    fields: Mapping[str, Any], prices: Prices, factor: Fraction, fail: Fail
) -> tuple[Prices | None, PeakHours | None]:
    """The off-peak price set (unset fields keep the peak price) and the peak windows."""
    given = [name for name in OFF_PEAK_FIELDS if fields.get(name) is not None]
    hours = fields.get(PEAK_HOURS_FIELD)
    if not given and hours is None:
        return None, None
    if hours is None:
        raise fail(given[0], f"off-peak prices need {PEAK_HOURS_FIELD} (when peak applies)")
    for name in ("off_peak_input", "off_peak_output"):
        if fields.get(name) is None:
            raise fail(name, f"missing (required with {PEAK_HOURS_FIELD})")
    changes: dict[str, Any] = {
        name.removeprefix("off_peak_"): _price(fields[name], factor, name, fail) for name in given
    }
    return replace(prices, **changes), _peak_hours(hours, fail)


_DAYS = {"mon-fri": frozenset(range(5)), "mon-sun": frozenset(range(7))}
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


def _peak_hours(value: Any, fail: Fail) -> PeakHours:
    name = PEAK_HOURS_FIELD
    if not isinstance(value, Mapping) or set(value) != {"days", "windows"}:
        raise fail(name, 'must be {"days": "mon-fri" | "mon-sun", "windows": ["HH:MM-HH:MM"]}')
    days = _DAYS.get(value["days"]) if isinstance(value["days"], str) else None
    if days is None:
        raise fail(f"{name}.days", f"must be one of {sorted(_DAYS)}")
    windows = value["windows"]
    if not isinstance(windows, list) or not windows:
        raise fail(f"{name}.windows", "must be a non-empty list of 'HH:MM-HH:MM' (UTC)")
    parsed: list[tuple[int, int]] = []
    for window in windows:
        match = _WINDOW.match(window) if isinstance(window, str) else None
        if match is None:
            raise fail(f"{name}.windows", f"{window!r} is not 'HH:MM-HH:MM' (UTC)")
        h1, m1, h2, m2 = map(int, match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if not start < end <= 24 * 60:
            raise fail(f"{name}.windows", f"{window!r} must end after it starts, within a day")
        parsed.append((start, end))
    return PeakHours(days, tuple(sorted(parsed)))


def _parse_prices(fields: Mapping[str, Any], factor: Fraction, fail: Fail) -> Prices:
    for name in REQUIRED_FIELDS:
        if fields.get(name) is None:
            raise fail(name, "missing (required)")
    values: dict[str, Any] = {
        name: _price(fields[name], factor, name, fail)
        for name in TOKEN_FIELDS
        if fields.get(name) is not None
    }
    if fields.get(SEARCH_QUERY_FIELD) is not None:
        values["search_query"] = _fee(fields[SEARCH_QUERY_FIELD], factor, SEARCH_QUERY_FIELD, fail)
    if fields.get(REQUEST_FEE_FIELD) is not None:
        values["request_fee"] = _request_fees(REQUEST_FEE_FIELD, fields, factor, fail)
    if fields.get(PRO_SEARCH_FEE_FIELD) is not None:
        if "request_fee" not in values:
            raise fail(PRO_SEARCH_FEE_FIELD, f"needs {REQUEST_FEE_FIELD} (the standard fees)")
        values["pro_search_fee"] = _request_fees(PRO_SEARCH_FEE_FIELD, fields, factor, fail)
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
        unknown = set(tier) - {"above_input_tokens", *TOKEN_FIELDS}
        if unknown:
            raise fail(f"{where}.{sorted(unknown)[0]}", "unknown tier field")
        previous = parsed[-1].prices if parsed else base
        changes: dict[str, Any] = {
            name: _price(tier[name], factor, f"{where}.{name}", fail)
            for name in TOKEN_FIELDS
            if tier.get(name) is not None
        }
        prices = replace(previous, **changes)
        lower, higher = previous.effective(), prices.effective()
        for name in lower:  # a bigger prompt must never be cheaper per token
            if higher[name] < lower[name]:
                raise fail(f"{where}.{name}", "cheaper than the tier below it")
        parsed.append(PriceTier(threshold, prices))
    return tuple(parsed)


def _price(value: Any, factor: Fraction, name: str, fail: Fail) -> Fraction:
    """A decimal string in USD per million tokens -> exact nanos per token (marked up)."""
    decimal = _decimal(value, name, "USD per million tokens", fail)
    return Fraction(decimal) * NANOS_PER_TOKEN_PER_USD_PER_MTOK * factor


def _decimal(value: Any, name: str, unit: str, fail: Fail) -> Decimal:
    if not isinstance(value, str):
        raise fail(name, f"must be a decimal string in {unit}, got {value!r}")
    try:
        decimal = Decimal(value)
    except InvalidOperation:
        raise fail(name, f"not a decimal number: {value!r}") from None
    if not decimal.is_finite():
        raise fail(name, f"not a finite number: {value!r}")
    if decimal < 0:
        raise fail(name, f"negative price: {value!r}")
    return decimal


def _fee(value: Any, factor: Fraction, name: str, fail: Fail) -> Fraction:
    """A decimal string in USD per 1,000 units -> exact nanos per unit (marked up)."""
    decimal = _decimal(value, name, "USD per 1,000", fail)
    return Fraction(decimal) * NANOS_PER_UNIT_PER_USD_PER_K * factor


def _request_fees(
    name: str, fields: Mapping[str, Any], factor: Fraction, fail: Fail
) -> tuple[tuple[str, Fraction], ...]:
    value = fields[name]
    if not isinstance(value, Mapping) or not value:
        raise fail(name, f"must be an object of USD per 1,000 requests by {SEARCH_CONTEXTS}")
    unknown = sorted(set(value) - set(SEARCH_CONTEXTS))
    if unknown:
        raise fail(f"{name}.{unknown[0]}", f"unknown search context size (use {SEARCH_CONTEXTS})")
    return tuple(
        (ctx, _fee(value[ctx], factor, f"{name}.{ctx}", fail))
        for ctx in SEARCH_CONTEXTS
        if ctx in value
    )


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
