"""The price catalog: versioned data (``billing/data/catalog.json``), loaded and looked up.

    catalog = load_catalog(overrides=..., markup_percent="5")
    price = catalog.lookup("openai", "gpt-4o-2024-08-06")   # None: unpriced, never billed $0
    nanos = catalog.cost("openai", price, usage)

The data format and its validation are in ``tollgate.billing.catalog_parse``; the price model
and the one cost formula (every meter, its fallbacks, the single half-up rounding) are in
``tollgate.billing.prices``. The markup multiplies every price exactly at load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from importlib import resources
from typing import Any

from tollgate.billing import catalog_parse
from tollgate.billing.prices import (
    CatalogError,
    ModelPrice,
    Prices,
    PriceTier,
    scaled_cost,
    usage_cost,
)
from tollgate.canonical import Usage
from tollgate.money import Nanos, round_half_up_ratio
from tollgate.providers.registry import PROVIDER_ALIASES

__all__ = [
    "Catalog",
    "CatalogError",
    "ModelPrice",
    "PriceTier",
    "Prices",
    "load_catalog",
    "parse_catalog",
    "usage_cost",
]

# Dated snapshot suffixes: -2024-08-06, -20250929, -26-04, -0613 / -2505.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{2}-\d{2}|\d{4})$")


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

    def cost(
        self, provider: str, price: ModelPrice, usage: Usage, *, off_peak: bool = False
    ) -> Nanos:
        """Exact nano-dollar cost of ``usage`` at ``price`` (the one rounding: half up), at its
        off-peak prices when ``off_peak`` (see ``ModelPrice.is_off_peak``) and it has them."""
        slug = PROVIDER_ALIASES.get(provider, provider)
        if slug != price.provider:
            raise ValueError(f"price of {price.id!r} used for provider {provider!r}")
        return round_half_up_ratio(*scaled_cost(price, usage, off_peak=off_peak))


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
    return Catalog(*catalog_parse.parse(data, overrides, markup_percent))
