"""`cf-aig-custom-cost` as the data plane reads it (features/custom_cost.py): exact prices in,
a clear 400 for everything else."""

from __future__ import annotations

import time
from decimal import Decimal
from fractions import Fraction

import pytest

from tollgate import money
from tollgate.billing.catalog import load_catalog
from tollgate.canonical import Usage
from tollgate.errors import InvalidRequest
from tollgate.features.custom_cost import (
    MAX_DECIMAL_PLACES,
    UNLISTED_MAX_OUTPUT_TOKENS,
    CustomCost,
    read_custom_cost,
)

CATALOG = load_catalog()


def parse(value: str, *, unified_allowed: bool = False) -> CustomCost:
    parsed = read_custom_cost(
        [(b"cf-aig-custom-cost", value.encode())], unified_allowed=unified_allowed
    )
    assert parsed is not None
    return parsed


def refused(value: str | bytes) -> InvalidRequest:
    raw = value if isinstance(value, bytes) else value.encode()
    with pytest.raises(InvalidRequest) as caught:
        read_custom_cost([(b"cf-aig-custom-cost", raw)], unified_allowed=False)
    error = caught.value
    assert error.status == 400 and error.code == "invalid_header"
    assert error.param == "cf-aig-custom-cost" and "cf-aig-custom-cost" in str(error)
    return error


def test_absent_header_is_no_custom_cost() -> None:
    assert read_custom_cost([(b"cf-aig-metadata", b"{}")], unified_allowed=True) is None


def test_per_token_rates_are_exact_nanos_and_cache_rates_default_to_the_input_rate() -> None:
    custom = parse('{"per_token_in": 0.000001, "per_token_out": 0.000002}')
    assert custom.prices.input == 1000 and custom.prices.output == 2000
    assert custom.prices.cached_input == 1000 and custom.prices.cache_write == 1000
    assert custom.total_nanos == 0 and custom.unified_allowed is False


def test_rates_finer_than_a_nano_are_kept_exactly_not_rounded_per_token() -> None:
    # $0.0375 per million tokens: 37.5 nanos per thousand tokens, not a whole nano per token.
    custom = parse('{"per_token_in": 3.75e-8, "per_token_out": 0.0000000001}')
    assert custom.prices.input == Fraction(75, 2) and custom.prices.output == Fraction(1, 10)
    price = custom.price_for("openai", "my-model", None)
    # 3 tokens at 37.5 = 112.5 -> 113 (half up, once); 7 out at 0.1 = 0.7: 113.2 -> 113.
    assert CATALOG.cost("openai", price, Usage(3, 7)) == 113


def test_cache_rates_when_given_and_the_whole_cost_formula() -> None:
    custom = parse(
        '{"per_token_in": 0.000003, "per_token_out": 0.000015,'
        ' "per_cache_read_token": 0.0000003, "per_cache_write_token": 0.00000375}'
    )
    price = custom.price_for(
        "anthropic", "claude-sonnet-4-6", CATALOG.lookup("anthropic", "claude-sonnet-4-6")
    )
    usage = Usage(
        input_tokens=1000,
        output_tokens=200,
        cached_input_tokens=300,
        cache_write_input_tokens=100,
        cache_write_1h_input_tokens=40,
        reasoning_tokens=50,
        citation_tokens=9,
    )
    # uncached 600 x 3000 + 300 x 300 + 100 x 3750 (both write durations) + 200 x 15000
    # (reasoning at the output rate); citations cost nothing under a custom price.
    expected = 600 * 3000 + 300 * 300 + 100 * 3750 + 200 * 15000
    assert CATALOG.cost("anthropic", price, usage) == expected


def test_total_cost_is_half_up_nanos_and_token_rates_are_zero() -> None:
    custom = parse('{"total_cost": 0.0123}')
    assert custom.total_nanos == 12_300_000
    assert CATALOG.cost("openai", custom.price_for("openai", "x", None), Usage(500, 500)) == 0
    assert parse('{"total_cost": 0.0000000015}').total_nanos == 2  # 1.5 nanos -> 2
    assert parse('{"total_cost": 0}').total_nanos == 0
    assert parse('{"total_cost": 5}').total_nanos == 5 * money.NANOS_PER_DOLLAR


def test_the_operators_permission_travels_with_the_price() -> None:
    assert parse('{"total_cost": 1}', unified_allowed=True).unified_allowed is True


def test_a_listed_model_keeps_its_identity_and_output_limit() -> None:
    listed = CATALOG.lookup("openai", "gpt-4o-mini")
    assert listed is not None
    price = parse('{"per_token_in": 0.1, "per_token_out": 0.2}').price_for(
        "openai", "gpt-4o-mini-2024-07-18", listed
    )
    assert (price.id, price.model, price.provider) == (listed.id, listed.model, listed.provider)
    assert price.max_output_tokens == listed.max_output_tokens
    assert price.prices.input == 100_000_000 and not price.tiers and price.off_peak is None


def test_an_unlisted_model_is_named_under_the_canonical_provider_slug() -> None:
    price = parse('{"per_token_in": 0, "per_token_out": 0}').price_for("google", "my-tune", None)
    assert (price.id, price.provider) == ("google-ai-studio/my-tune", "google-ai-studio")
    assert price.max_output_tokens == UNLISTED_MAX_OUTPUT_TOKENS


def test_exact_nanos_is_exact() -> None:
    assert money.exact_nanos(Decimal("0.0000000375")) == Fraction(75, 2)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{nope", "expected {"),
        ("[0.1, 0.2]", "expected {"),
        ('"0.1"', "expected {"),
        ("{}", "expected {"),
        ('{"per_token_in": 1, "per_token_out": 1, "per_token_cached": 1}', "unknown field"),
        ('{"total_cost": 1, "per_token_in": 1}', "either total_cost alone"),
        ('{"per_token_in": 0.1}', "no per_token_out"),
        ('{"per_cache_read_token": 0.1, "per_token_out": 0.1}', "no per_token_in"),
        ('{"total_cost": "0.1"}', "total_cost as a number"),
        ('{"total_cost": true}', "total_cost as a number"),
        ('{"total_cost": null}', "total_cost as a number"),
        ('{"per_token_in": {"usd": 1}, "per_token_out": 1}', "per_token_in as a number"),
        ('{"total_cost": -0.01}', "total_cost from 0 to"),
        ('{"per_token_in": 0.1, "per_token_out": -1e-9}', "per_token_out from 0 to"),
        ('{"total_cost": NaN}', "expected {"),
        ('{"total_cost": Infinity}', "expected {"),
        ('{"total_cost": 10001}', "total_cost from 0 to 10000"),
        ('{"per_token_in": 2, "per_token_out": 1}', "per_token_in from 0 to 1"),
        ('{"total_cost": 1e-19}', f"at most {MAX_DECIMAL_PLACES} decimal places"),
    ],
)
def test_bad_custom_costs_are_a_400_naming_the_header(value: str, says: str) -> None:
    assert says in str(refused(value))


def test_huge_exponents_are_refused_at_once() -> None:
    # An 8 KB header must not become a number with millions of digits.
    started = time.monotonic()
    refused('{"total_cost": 1e999999999}')
    refused('{"total_cost": 1e-999999999}')
    refused('{"total_cost": ' + "9" * 5000 + "}")
    refused('{"total_cost": 0.' + "1" * 5000 + "}")
    assert time.monotonic() - started < 1.0
