"""Money: integer nano-dollars, and the one rounding rule.

Every amount tollgate stores or moves is an ``int`` of nano-dollars (1e-9 USD). Floats never hold
money. Conversions at the edges (cents in request bodies, dollars in responses) live here and only
here, so there is exactly one place that decides how a fraction is rounded.

The rounding rule: a quantity that is not a whole number of nano-dollars is rounded **half up**
(towards +infinity on .5), on the exact rational value, never on a float.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

NANOS_PER_DOLLAR = 1_000_000_000
NANOS_PER_CENT = 10_000_000

Nanos = int


def round_half_up(value: Fraction) -> Nanos:
    """The single rounding rule: the nearest integer, halves rounded up."""
    return int((value + Fraction(1, 2)).__floor__())


def round_half_up_ratio(numerator: int, denominator: int) -> Nanos:
    """`round_half_up(Fraction(numerator, denominator))` in integers (the hot path's form)."""
    if denominator <= 0:
        raise ValueError("the denominator must be positive")
    return (2 * numerator + denominator) // (2 * denominator)


def from_cents(cents: int) -> Nanos:
    return cents * NANOS_PER_CENT


def from_dollars(dollars: str | Decimal | int) -> Nanos:
    """Parse an exact dollar amount (never a float) into nano-dollars."""
    value = Fraction(Decimal(dollars)) if not isinstance(dollars, int) else Fraction(dollars)
    return round_half_up(value * NANOS_PER_DOLLAR)


def exact_nanos(dollars: Decimal) -> Fraction:
    """An exact dollar rate (a price per token) as unrounded nano-dollars: a cost multiplies it
    by a count first and is then rounded once, by `round_half_up`."""
    return Fraction(dollars) * NANOS_PER_DOLLAR


def to_dollars(nanos: Nanos) -> Decimal:
    """Exact dollars as a Decimal (nine decimal places at most)."""
    return Decimal(nanos) / NANOS_PER_DOLLAR


def to_dollars_float(nanos: Nanos) -> float:
    """Dollars as a JSON number, for response bodies that carry a number (Cloudflare's balance)."""
    return float(to_dollars(nanos))


def format_dollars(nanos: Nanos, places: int = 2) -> str:
    """Human display: ``$12.34``, rounded half up to `places` (two by default, so an amount under
    half a cent shows as ``$0.00``; the dashboard's `usd` keeps more places for those)."""
    quant = Decimal(1).scaleb(-places)
    amount = to_dollars(nanos).quantize(quant, rounding=ROUND_HALF_UP)
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount):,.{places}f}"


def header_dollars(nanos: Nanos) -> str:
    """Exact dollars for a response header, without trailing zeros: ``0.000123``.

    Integer arithmetic, not `to_dollars`: two of these go on every billed response, and the
    Decimal route (divide, normalize, format) cost several times as much. The unit tests check
    both agree for any amount."""
    whole, fraction = divmod(abs(nanos), NANOS_PER_DOLLAR)
    sign = "-" if nanos < 0 else ""
    if not fraction:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:09d}".rstrip("0")
