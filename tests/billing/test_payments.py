"""The sandbox payment provider (Stripe's test cards, simulated) and the purchase fee math."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollgate.billing.payments import (
    PaymentMethodRejected,
    PaymentProviderError,
    WebhookRejected,
    build_payment_provider,
)
from tollgate.billing.payments.sandbox import SIMULATED, SandboxPayments
from tollgate.billing.topup import fee_cents
from tollgate.settings import Settings

ACCOUNT = "a" * 32


def card(number: str, **extra: Any) -> dict[str, Any]:
    return {"card_number": number, "exp_month": 12, "exp_year": 2099, "cvc": "123", **extra}


async def charge(
    provider: SandboxPayments,
    pm: str,
    *,
    off_session: bool = False,
    key: str = "k1",
    amount: int = 1000,
) -> Any:
    return await provider.charge(
        account_id=ACCOUNT,
        customer_id="cus_sandbox",
        payment_method_id=pm,
        amount_cents=amount,
        idempotency_key=key,
        off_session=off_session,
        description="test",
        metadata={"tollgate_topup_id": "t1"},
    )


async def saved(provider: SandboxPayments, number: str) -> str:
    method = await provider.save_payment_method(ACCOUNT, "cus_sandbox", card(number))
    return method.payment_method_id


# --- test cards -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "off_session", "status", "code"),
    [
        ("4242424242424242", False, "succeeded", None),
        ("4242424242424242", True, "succeeded", None),
        ("5555555555554444", False, "succeeded", None),
        ("4000000000000002", False, "failed", "generic_decline"),
        ("4000000000009995", False, "failed", "insufficient_funds"),
        ("4000000000009995", True, "failed", "insufficient_funds"),
        ("4000000000000069", False, "failed", "expired_card"),
        ("4000000000000127", False, "failed", "incorrect_cvc"),
        ("4000000000000341", False, "failed", "generic_decline"),
        ("4000000000000341", True, "failed", "generic_decline"),
        ("4000002500003155", False, "requires_action", None),
        ("4000002500003155", True, "succeeded", None),
        ("4000003800000446", False, "requires_action", None),
        ("4000003800000446", True, "succeeded", None),
        ("4000002760003184", False, "requires_action", None),
        ("4000002760003184", True, "failed", "authentication_required"),
        ("4000008260003178", True, "failed", "insufficient_funds"),
    ],
)
async def test_test_card_behaviours(
    number: str, off_session: bool, status: str, code: str | None
) -> None:
    provider = SandboxPayments()
    result = await charge(provider, await saved(provider, number), off_session=off_session)
    assert (result.status, result.error_code) == (status, code)
    assert result.amount_cents == 1000
    assert result.id is not None and result.id.startswith("pi_sandbox_")
    if status == "failed":
        assert SIMULATED in (result.error_message or "")
    assert (result.client_secret is not None) == (status == "requires_action")


async def test_saved_card_keeps_only_brand_last4_and_expiry() -> None:
    method = await SandboxPayments().save_payment_method(
        ACCOUNT, "cus_x", card("4000 0000 0000 9995", exp_month="07", exp_year="2031")
    )
    assert (method.brand, method.last4, method.exp_month, method.exp_year) == (
        "visa",
        "9995",
        7,
        2031,
    )
    assert "4000000000009995" in method.payment_method_id  # a public test number, not a secret


async def test_stripe_test_payment_method_ids_are_accepted() -> None:
    provider = SandboxPayments()
    method = await provider.save_payment_method(ACCOUNT, "c", {"payment_method_id": "pm_card_visa"})
    assert (method.brand, method.last4) == ("visa", "4242")
    declined = await provider.save_payment_method(
        ACCOUNT, "c", {"payment_method_id": "pm_card_chargeDeclinedInsufficientFunds"}
    )
    assert (await charge(provider, declined.payment_method_id)).error_code == "insufficient_funds"


@pytest.mark.parametrize(
    ("details", "param", "code"),
    [
        (card("4111111111111111"), "card_number", "not_a_test_card"),  # valid, but not a test card
        (card("4242424242424241"), "card_number", "invalid_card_number"),  # bad check digit
        (card("4242"), "card_number", "invalid_card_number"),
        (card("4242abcd42424242"), "card_number", "invalid_payment_method"),
        ({"exp_month": 1, "exp_year": 2030, "cvc": "123"}, "card_number", "invalid_payment_method"),
        (card("4242424242424242", exp_month=13), "exp_month", "invalid_payment_method"),
        (card("4242424242424242", exp_year=2001), "exp_year", "expired_card"),
        (card("4242424242424242", cvc="12"), "cvc", "invalid_payment_method"),
        (card("4242424242424242", cvc=True), "cvc", "invalid_payment_method"),
        ({"payment_method_id": "pm_real_thing"}, "payment_method_id", "invalid_payment_method"),
    ],
)
async def test_bad_cards_are_refused_naming_the_field(
    details: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(PaymentMethodRejected) as caught:
        await SandboxPayments().save_payment_method(ACCOUNT, "cus_x", details)
    assert (caught.value.param, caught.value.code) == (param, code)


async def test_same_idempotency_key_replays_and_other_params_are_an_error() -> None:
    provider = SandboxPayments()
    pm = await saved(provider, "4242424242424242")
    first = await charge(provider, pm, key="same")
    assert await charge(provider, pm, key="same") == first
    assert (await charge(provider, pm, key="other")).id != first.id
    with pytest.raises(PaymentProviderError) as caught:
        await charge(provider, pm, key="same", amount=2000)
    assert caught.value.code == "idempotency_error"


async def test_charge_needs_a_sandbox_payment_method() -> None:
    provider = SandboxPayments()
    with pytest.raises(PaymentMethodRejected):
        await charge(provider, "pm_1Abc")
    with pytest.raises(PaymentMethodRejected):
        await provider.charge(
            account_id=ACCOUNT,
            customer_id=None,
            payment_method_id=None,
            amount_cents=1000,
            idempotency_key="k",
            off_session=False,
            description="",
            metadata={},
        )


def test_sandbox_takes_no_webhooks_and_is_the_default(make_settings: Any) -> None:
    settings: Settings = make_settings()
    provider = build_payment_provider(settings)
    assert isinstance(provider, SandboxPayments) and provider.sandbox
    with pytest.raises(WebhookRejected):
        provider.parse_webhook(b"{}", "t=1,v1=00")


# --- the purchase fee -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "percent", "fee"),
    [
        (1000, "0", 0),
        (1000, "5", 50),  # Cloudflare's 5%: $10.00 -> $10.50
        (10000, "5", 500),  # $100 credits -> $105 charge
        (1234, "2.9", 36),  # 35.786 -> 36
        (1010, "5", 51),  # 50.5 -> 51 (half up)
        (1030, "5", 52),  # 51.5 -> 52 (half up)
        (1000, "0.01", 0),  # 0.1 cent -> 0
        (1000, "0.05", 1),  # 0.5 cent -> 1 (half up)
        (999_999, "100", 999_999),
    ],
)
def test_fee_is_exact_with_one_rounding_rule(amount: int, percent: str, fee: int) -> None:
    assert fee_cents(amount, Decimal(percent)) == fee


@given(
    st.integers(min_value=1, max_value=10**9),
    st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False),
)
def test_fee_matches_exact_decimal_arithmetic(amount: int, percent: Decimal) -> None:
    exact = Decimal(amount) * percent / 100
    expected = int(exact.to_integral_value(rounding="ROUND_HALF_UP"))
    assert fee_cents(amount, percent) == expected
