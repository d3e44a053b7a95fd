"""The Credits page's pure parts: typed amounts, the auto top-up form, card details and the
provider's refusals as inline messages, the pay form's key, and payment outcomes in plain words."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tollgate.billing.payments import PaymentMethodRejected
from tollgate.billing.payments.sandbox import TEST_CARDS
from tollgate.dashboard.credits_forms import (
    BEHAVIOUR_WORDS,
    SHOWN_TEST_CARDS,
    AutoTopUpSettings,
    FormErrors,
    auto_error_words,
    card_details,
    card_error,
    decline_words,
    grouped,
    new_topup_key,
    page_number,
    parse_auto_topup,
    pay_fields,
    percent_words,
    shown_test_cards,
    topup_amount_cents,
    when,
)
from tollgate.dashboard.format import AmountError


@pytest.mark.parametrize(
    ("typed", "cents"), [("25", 2500), ("10", 1000), ("$10,000.00", 1_000_000)]
)
def test_a_typed_top_up_amount_becomes_cents(typed: str, cents: int) -> None:
    assert topup_amount_cents(typed) == cents


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("", "Enter the top-up amount"),
        ("abc", "must be a number of dollars"),
        ("-5", "more than $0"),
        ("0", "more than $0"),
        ("10.001", "two decimal places"),
        ("9.99", "from $10.00 to $10,000.00"),
        ("10000.01", "from $10.00 to $10,000.00"),
    ],
)
def test_a_bad_top_up_amount_says_what_to_type(typed: str, message: str) -> None:
    with pytest.raises(AmountError) as raised:
        topup_amount_cents(typed)
    assert message in str(raised.value)


def test_the_auto_top_up_form_becomes_cents_with_an_optional_cap() -> None:
    form = {"threshold": "5", "auto_amount": "10.50", "monthly_cap": ""}
    assert parse_auto_topup(form) == AutoTopUpSettings(500, 1050, None)
    form["monthly_cap"] = "$1,000"
    assert parse_auto_topup(form) == AutoTopUpSettings(500, 1050, 100_000)
    form["monthly_cap"] = "10.50"  # equal to the amount is allowed
    assert parse_auto_topup(form).monthly_cap_cents == 1050


@pytest.mark.parametrize(
    ("form", "errors"),
    [
        ({}, {"auto-threshold": "Enter the threshold", "auto-amount": "Enter the auto top-up"}),
        (
            {"threshold": "4.99", "auto_amount": "9.99"},
            {"auto-threshold": "from $5.00", "auto-amount": "from $10.00"},
        ),
        (
            {"threshold": "-1", "auto_amount": "0", "monthly_cap": "x"},
            {
                "auto-threshold": "more than $0",
                "auto-amount": "more than $0",
                "auto-cap": "must be a number",
            },
        ),
        (
            {"threshold": "5", "auto_amount": "20", "monthly_cap": "19.99"},
            {"auto-cap": "at least the auto top-up amount ($20.00)"},
        ),
        ({"threshold": "5.005", "auto_amount": "20"}, {"auto-threshold": "two decimal places"}),
    ],
)
def test_the_auto_top_up_form_names_every_bad_field(
    form: dict[str, str], errors: dict[str, str]
) -> None:
    with pytest.raises(FormErrors) as raised:
        parse_auto_topup(form)
    assert set(raised.value.errors) == set(errors)
    for field, message in errors.items():
        assert message in raised.value.errors[field]


def test_card_details_are_passed_as_the_provider_takes_them() -> None:
    form = {"card_number": " 4242 4242 4242 4242 ", "exp_month": "12", "exp_year": "2030"}
    with pytest.raises(FormErrors) as raised:
        card_details(form, sandbox=True)
    assert list(raised.value.errors) == ["cvc"]
    form["cvc"] = "123"
    assert card_details(form, sandbox=True) == {
        "card_number": "4242 4242 4242 4242",
        "exp_month": "12",
        "exp_year": "2030",
        "cvc": "123",
    }
    # Stripe: only a PaymentMethod id; a card number typed into the page is never passed on.
    assert card_details({**form, "payment_method_id": "pm_card_visa"}, sandbox=False) == {
        "payment_method_id": "pm_card_visa"
    }
    with pytest.raises(FormErrors) as raised:
        card_details(form, sandbox=False)
    assert raised.value.errors == {"payment-method-id": "Paste a Stripe PaymentMethod id (pm_...)."}


@pytest.mark.parametrize(
    ("param", "code", "field", "message"),
    [
        ("card_number", "invalid_card_number", "card-number", "not a valid card number"),
        ("card_number", "not_a_test_card", "card-number", "only Stripe's test card numbers"),
        ("card_number", "invalid_payment_method", "card-number", "not a valid card number"),
        ("exp_month", "invalid_payment_method", "exp-month", "from 1 to 12"),
        ("exp_year", "invalid_payment_method", "exp-year", "future year"),
        ("exp_year", "expired_card", "exp-year", "The card expired in 01/2020"),
        ("cvc", "invalid_payment_method", "cvc", "3 or 4 digits"),
        ("payment_method_id", "invalid_payment_method", "card-number", "The refusal"),
    ],
)
def test_a_sandbox_refusal_lands_on_its_field_in_plain_words(
    param: str, code: str, field: str, message: str
) -> None:
    refusal = PaymentMethodRejected(
        "The refusal" if param == "payment_method_id" else "The card expired in 01/2020.",
        code=code,
        param=param,
    )
    errors = card_error(refusal, sandbox=True).errors
    assert list(errors) == [field] and message in errors[field]


def test_a_stripe_refusal_lands_on_the_payment_method_field() -> None:
    format_error = PaymentMethodRejected("payment_method_id must be ...", param="payment_method_id")
    assert "starts with pm_" in card_error(format_error, sandbox=False).errors["payment-method-id"]
    refused = PaymentMethodRejected(
        "Stripe refused the payment method: No such PaymentMethod", param="payment_method_id"
    )
    assert card_error(refused, sandbox=False).errors == {
        "payment-method-id": "Stripe refused the payment method: No such PaymentMethod"
    }


def test_the_pay_form_carries_a_fresh_key_and_a_checked_amount() -> None:
    key = new_topup_key()
    assert key != new_topup_key() and key.startswith("dashboard-") and len(key) == 42
    assert pay_fields({"amount_cents": "2500", "idempotency_key": key}) == (2500, key)
    altered = [
        {"amount_cents": "25.00", "idempotency_key": key},
        {"amount_cents": "-2500", "idempotency_key": key},
        {"amount_cents": "2500", "idempotency_key": "mine"},
        {"amount_cents": "2500", "idempotency_key": key + "x"},
        {"amount_cents": "999", "idempotency_key": key},
        {"amount_cents": "1000001", "idempotency_key": key},
        {"amount_cents": "\uff12\uff15\uff10\uff10", "idempotency_key": key},  # full-width digits
        {},
    ]
    for form in altered:
        with pytest.raises(AmountError):
            pay_fields(form)


def test_declines_read_as_plain_words() -> None:
    assert "without giving a reason" in decline_words("generic_decline", "Your card was declined.")
    assert "enough funds" in decline_words("insufficient_funds", None)
    assert decline_words("lost_card", None) == decline_words("stolen_card", None)
    assert "security code" in decline_words("incorrect_cvc", None)
    new_code = decline_words(
        "do_not_honor", "Your card was declined. (sandbox: simulated, no money moved)"
    )
    assert new_code == "Your card was declined."
    assert "declined" in decline_words(None, None)
    assert auto_error_words(
        "insufficient_funds: Your card has insufficient funds."
    ) == decline_words("insufficient_funds", None)
    capped = "The monthly auto top-up cap ($50.00) is reached; auto top-up resumes on 2030-02-01."
    assert auto_error_words(capped) == capped


def test_the_test_cards_listed_are_the_sandboxs_own() -> None:
    assert set(BEHAVIOUR_WORDS) >= {behaviour for _, behaviour in TEST_CARDS.values()}
    rows = shown_test_cards()
    assert [row[0].replace(" ", "") for row in rows] == list(SHOWN_TEST_CARDS)
    assert rows[0] == ("4242 4242 4242 4242", "Visa", "Succeeds")
    assert ("4000 0000 0000 0002", "Visa", "Declined") in rows
    assert grouped("4000002500003155") == "4000 0025 0000 3155"


def test_small_formats() -> None:
    assert percent_words(Decimal("2.90")) == "2.9%"
    assert percent_words(Decimal("3")) == "3%"
    assert percent_words(Decimal(0)) == "0%"
    assert when(datetime(2030, 1, 2, 3, 4, 59, tzinfo=UTC)) == "2030-01-02 03:04 UTC"
    assert when(None) == ""
    assert [page_number(raw) for raw in (None, "", "3", "0", "-2", "x", "\u00b2", "9" * 9)] == [
        1,
        1,
        3,
        1,
        1,
        1,
        1,
        1,
    ]
