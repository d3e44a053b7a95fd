"""`tollgate models`: the price catalog, as `GET .../ai/models/search` shows it.

The catalog is the one the server loads (`tollgate.billing.catalog.load_catalog` with the
operator's `[billing] price_overrides` and `markup_percent`), so the prices are what requests are
charged. `--json` prints each model in the API's shape (`ModelPrice.to_public`): USD per million
tokens, null where a price does not apply, plus tiers, off-peak prices and per-request fees.
The table shows the four main token prices and folds long model ids to fit the terminal.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

from tollgate.billing.catalog import Catalog, CatalogError, load_catalog
from tollgate.cli_common import (
    ConfigOption,
    JsonOption,
    console,
    fail,
    list_table,
    load_settings_or_exit,
    print_json,
)
from tollgate.providers.registry import PROVIDER_ALIASES, PROVIDERS


def _catalog(config: Path | None) -> Catalog:
    settings = load_settings_or_exit(config)
    try:
        return load_catalog(
            overrides=settings.billing.price_overrides,
            markup_percent=settings.billing.markup_percent,
        )
    except CatalogError as exc:
        fail(f"billing.price_overrides: {exc}. Fix [billing.price_overrides] in tollgate.toml.")


def _usd(value: float | None) -> str:
    """`$0.075`, `$10.00`: the price as listed, at least two decimals."""
    if value is None:
        return "-"
    text = format(Decimal(repr(value)).normalize(), "f")
    whole, _, fraction = text.partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


def _tokens(value: int | None) -> str:
    if value is None:
        return "-"
    if value >= 1_000_000 and value % 1_000_000 == 0:
        return f"{value // 1_000_000}M"
    if value >= 1000 and value % 1000 == 0:
        return f"{value // 1000}k"
    return str(value)


def _varies(pricing: dict[str, Any]) -> bool:
    """Whether the same tokens can cost more or less than the table says (tiers by prompt
    size, off-peak hours)."""
    return bool(pricing.get("tiers")) or pricing.get("peak_hours_utc") is not None


# Price columns in the order they are given up on a narrow terminal (the last goes first);
# MODEL, INPUT and OUTPUT always show.
_COLUMNS = ("MODEL", "INPUT", "OUTPUT", "CACHED IN", "CACHE WRITE", "CONTEXT")
_MIN_MODEL = 24  # narrower than this, a price column makes room for the model id


def _cells(model: dict[str, Any]) -> tuple[str, ...]:
    pricing = model["pricing"]
    return (
        model["id"] + (" *" if _varies(pricing) else ""),
        _usd(pricing["input"]),
        _usd(pricing["output"]),
        _usd(pricing["cached_input"]),
        _usd(pricing["cache_write"]),
        _tokens(model["context_window"]),
    )


def _visible(rows: list[tuple[str, ...]], width: int) -> int:
    """How many of `_COLUMNS` fit `width`: CONTEXT only when the model ids fit whole, each
    price column only while the MODEL column keeps `_MIN_MODEL` characters."""
    sizes = [max(len(_COLUMNS[i]), *(len(r[i]) for r in rows)) for i in range(len(_COLUMNS))]
    for count in range(len(_COLUMNS), 3, -1):
        # Rich's SIMPLE_HEAD table: one space at each edge, two between columns.
        left = width - sum(sizes[1:count]) - 2 * (count - 1) - 2
        wanted = sizes[0] if count == len(_COLUMNS) else _MIN_MODEL
        if left >= min(sizes[0], wanted):
            return count
    return 3


def models(
    search: Annotated[
        str | None,
        typer.Option("--search", help="Only models whose id or alias contains this text."),
    ] = None,
    provider: Annotated[
        str | None,
        typer.Option("--provider", help="Only this provider's models (e.g. openai, anthropic)."),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the models tollgate can price, with USD prices per million tokens."""
    if provider is not None and provider not in PROVIDERS and provider not in PROVIDER_ALIASES:
        fail(f"--provider: unknown provider '{provider[:80]}'; known: {', '.join(PROVIDERS)}")
    catalog = _catalog(config)
    found = [m.to_public() for m in catalog.models(search=search or None, provider=provider)]
    if as_json:
        print_json({"models": found, "total": len(found), "catalog_version": catalog.version})
        return
    out = console()
    if not found:
        out.print("No models match.")
        return
    rows = [_cells(model) for model in found]
    count = _visible(rows, out.width)
    table = list_table(*_COLUMNS[:count], keep_whole=())
    for column in table.columns[1:]:
        column.justify = "right"
        column.no_wrap = True
    for row in rows:
        table.add_row(*row[:count])
    out.print(table)
    hidden = f" ({', '.join(_COLUMNS[count:])} hidden: too narrow)" if count < 6 else ""
    out.print(
        f"{len(found)} model(s), catalog {catalog.version}; USD per million tokens{hidden}. "
        "* = the price depends on prompt size or time of day. --json has every price.",
        soft_wrap=False,
    )
