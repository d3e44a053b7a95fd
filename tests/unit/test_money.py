"""Money: integer nano-dollars and the one rounding rule."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollgate import money


def test_units() -> None:
    assert money.from_cents(1000) == 10 * money.NANOS_PER_DOLLAR
    assert money.from_dollars("0.000000001") == 1
    assert money.to_dollars(1_500_000_000) == Decimal("1.5")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(1, 2), 1),
        (Fraction(3, 2), 2),
        (Fraction(-1, 2), 0),
        (Fraction(49, 100), 0),
        (Fraction(-3, 2), -1),
        (Fraction(7, 3), 2),
    ],
)
def test_round_half_up(value: Fraction, expected: int) -> None:
    assert money.round_half_up(value) == expected


def test_dollars_are_parsed_exactly_never_through_floats() -> None:
    assert money.from_dollars("0.1") * 3 == money.from_dollars("0.3")
    assert money.from_dollars("0.0000000005") == 1  # half a nano rounds up
    assert money.from_dollars("0.00000000049") == 0


@pytest.mark.parametrize(
    ("nanos", "shown"),
    [(10_000_000_000, "$10.00"), (1_234_567_890, "$1.23"), (-5_000_000, "-$0.01"), (0, "$0.00")],
)
def test_format_dollars(nanos: int, shown: str) -> None:
    assert money.format_dollars(nanos) == shown


def test_header_dollars_is_exact() -> None:
    assert money.header_dollars(123) == "0.000000123"
    assert money.header_dollars(10_000_000_000) == "10"
    assert money.header_dollars(1_500_000_000) == "1.5"
    assert money.header_dollars(0) == "0"
    assert money.header_dollars(-2_000_000) == "-0.002"


@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_header_dollars_is_the_exact_decimal_without_trailing_zeros(nanos: int) -> None:
    assert money.header_dollars(nanos) == format(money.to_dollars(nanos).normalize(), "f")


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_cents_round_trip(cents: int) -> None:
    nanos = money.from_cents(cents)
    assert money.to_dollars(nanos) * 100 == cents


@given(st.integers(-(10**30), 10**30), st.integers(1, 10**18))
def test_integer_rounding_is_the_same_rule_as_the_fraction_one(num: int, den: int) -> None:
    # The catalog's hot path rounds (numerator, denominator) pairs; it must never disagree
    # with the one rounding rule, halves and negatives included.
    assert money.round_half_up_ratio(num, den) == money.round_half_up(Fraction(num, den))


@pytest.mark.parametrize(
    ("num", "den", "expected"), [(1, 2, 1), (-1, 2, 0), (3, 2, 2), (-3, 2, -1)]
)
def test_integer_rounding_of_exact_halves(num: int, den: int, expected: int) -> None:
    assert money.round_half_up_ratio(num, den) == expected


def test_integer_rounding_refuses_a_non_positive_denominator() -> None:
    with pytest.raises(ValueError):
        money.round_half_up_ratio(1, 0)
