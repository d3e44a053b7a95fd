"""Money as people read it on the dashboard, and dollar amounts typed into its forms.

One display rule for every amount on every page (PRODUCT.md §4: credits are US dollars, held as
integer nano-dollars; `tollgate.money` owns the arithmetic and the rounding):

- whole cents and larger amounts: `$1,234.56` (two places, thousands separated, half up);
- a non-zero amount under one cent keeps enough places (up to six) not to read as `$0.00`:
  `$0.000123`; anything smaller still reads `< $0.000001`;
- negative amounts carry a leading minus: `-$3.00`.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from tollgate import money

_SMALLEST_SHOWN = 1_000  # nanos: $0.000001


def usd(nanos: int) -> str:
    """The dashboard's one money format (see the module docstring)."""
    magnitude = abs(nanos)
    if magnitude == 0 or magnitude >= money.NANOS_PER_CENT:
        return money.format_dollars(nanos)
    if magnitude < _SMALLEST_SHOWN:
        return "< $0.000001"
    text = money.format_dollars(nanos, 6).rstrip("0")
    return text if len(text.partition(".")[2]) >= 2 else text + "0"


class AmountError(ValueError):
    """A typed amount that is not a usable dollar amount; the message is shown as is."""


def parse_dollars_to_cents(raw: str, *, field: str, minimum_cents: int, maximum_cents: int) -> int:
    """A dollar amount typed into a form (`25`, `25.5`, `$1,000.00`) as integer cents.

    Refuses empty, non-numeric, negative, more than two decimals, and out-of-range amounts, each
    with a message that says what to type instead.
    """
    text = raw.strip().replace(",", "").removeprefix("$").strip()
    if not text:
        raise AmountError(f"Enter {field} in dollars, for example 25.00.")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise AmountError(
            f"{field.capitalize()} must be a number of dollars, like 25.00."
        ) from None
    if not amount.is_finite():
        raise AmountError(f"{field.capitalize()} must be a number of dollars, like 25.00.")
    if amount <= 0:
        raise AmountError(f"{field.capitalize()} must be more than $0.")
    cents_value = amount * 100
    if cents_value != cents_value.to_integral_value():
        raise AmountError(f"{field.capitalize()} can have at most two decimal places (cents).")
    cents = int(cents_value)
    if not minimum_cents <= cents <= maximum_cents:
        low = usd(money.from_cents(minimum_cents))
        high = usd(money.from_cents(maximum_cents))
        raise AmountError(f"{field.capitalize()} must be from {low} to {high}.")
    return cents
