"""The sandbox payment provider: Stripe's documented test cards, simulated. No money moves.

Only Stripe's test card numbers (and Stripe's test PaymentMethod ids such as `pm_card_visa`) are
accepted: a real card number is refused, so nobody types one into a sandbox by mistake. Only the
brand, last four and expiry are kept.

Behaviours (Stripe's, docs.stripe.com/testing):

    4242424242424242 and the other brand cards   succeed
    4000000000000002  declined (card_declined / generic_decline)
    4000000000009995  declined (insufficient_funds)
    4000000000009987 / 9979 / 0069 / 0127 / 0119  lost / stolen / expired / incorrect cvc /
                      processing error
    4000000000000341  attaching succeeds, every charge is declined
    4000002500003155  on-session: authentication required; off-session (saved card): succeeds
    4000003800000446  on-session: authentication required; off-session: succeeds
    4000002760003184  always requires authentication: on-session `requires_action`, off-session
                      declined with authentication_required
    4000008260003178  on-session: authentication required; off-session: insufficient_funds

One deliberate difference: Stripe refuses some decline cards already when they are attached to a
customer; the sandbox accepts every test card and declines at charge time, so that each behaviour
can be tried on a top-up. An on-session charge that needs authentication stays `requires_action`
(there is no customer to complete 3-D Secure in a sandbox), so it is never credited.

Charges are deterministic: the payment intent id is derived from the idempotency key and the
outcome from the card and the session, so a replay in any process gives the same answer. Every
message says it was simulated.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tollgate.billing.payments import (
    Charge,
    ChargeStatus,
    PaymentMethodRejected,
    PaymentProviderError,
    SavedCard,
    WebhookEvent,
    WebhookRejected,
)

SIMULATED = "sandbox: simulated, no money moved"

# number -> (brand, behaviour)
TEST_CARDS: dict[str, tuple[str, str]] = {
    "4242424242424242": ("visa", "succeed"),
    "4000056655665556": ("visa", "succeed"),
    "5555555555554444": ("mastercard", "succeed"),
    "2223003122003222": ("mastercard", "succeed"),
    "5200828282828210": ("mastercard", "succeed"),
    "378282246310005": ("amex", "succeed"),
    "371449635398431": ("amex", "succeed"),
    "6011111111111117": ("discover", "succeed"),
    "3056930009020004": ("diners", "succeed"),
    "3566002020360505": ("jcb", "succeed"),
    "6200000000000005": ("unionpay", "succeed"),
    "4000000000000002": ("visa", "generic_decline"),
    "4000000000009995": ("visa", "insufficient_funds"),
    "4000000000009987": ("visa", "lost_card"),
    "4000000000009979": ("visa", "stolen_card"),
    "4000000000000069": ("visa", "expired_card"),
    "4000000000000127": ("visa", "incorrect_cvc"),
    "4000000000000119": ("visa", "processing_error"),
    "4000000000000341": ("visa", "charge_fails"),
    "4000002500003155": ("visa", "auth_unless_saved"),
    "4000003800000446": ("visa", "auth_unless_saved"),
    "4000002760003184": ("visa", "auth_always"),
    "4000008260003178": ("visa", "auth_then_insufficient"),
}

# Stripe's test PaymentMethod ids.
TEST_PAYMENT_METHODS: dict[str, str] = {
    "pm_card_visa": "4242424242424242",
    "pm_card_visa_debit": "4000056655665556",
    "pm_card_mastercard": "5555555555554444",
    "pm_card_amex": "378282246310005",
    "pm_card_discover": "6011111111111117",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_chargeDeclinedLostCard": "4000000000009987",
    "pm_card_chargeDeclinedStolenCard": "4000000000009979",
    "pm_card_chargeDeclinedExpiredCard": "4000000000000069",
    "pm_card_chargeDeclinedIncorrectCvc": "4000000000000127",
    "pm_card_chargeDeclinedProcessingError": "4000000000000119",
    "pm_card_chargeCustomerFail": "4000000000000341",
    "pm_card_authenticationRequiredOnSetup": "4000002500003155",
    "pm_card_authenticationRequired": "4000002760003184",
}

# decline code -> (Stripe error code, Stripe's message)
_DECLINES: dict[str, tuple[str, str]] = {
    "generic_decline": ("card_declined", "Your card was declined."),
    "insufficient_funds": ("card_declined", "Your card has insufficient funds."),
    "lost_card": ("card_declined", "Your card was declined."),
    "stolen_card": ("card_declined", "Your card was declined."),
    "expired_card": ("expired_card", "Your card has expired."),
    "incorrect_cvc": ("incorrect_cvc", "Your card's security code is incorrect."),
    "processing_error": (
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
    "authentication_required": (
        "authentication_required",
        "Your card was declined. This transaction requires authentication.",
    ),
}
_PM_PREFIX = "pm_sandbox_"


def _digits(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PaymentMethodRejected(f"{name} must be a string of digits", param=name)
    text = str(value).replace(" ", "").replace("-", "")
    if not text.isascii() or not text.isdigit():
        raise PaymentMethodRejected(f"{name} must contain only digits", param=name)
    return text


def _luhn_ok(number: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _expiry(details: Mapping[str, Any], today: datetime) -> tuple[int, int]:
    month_text = _digits(details.get("exp_month"), "exp_month")
    year_text = _digits(details.get("exp_year"), "exp_year")
    month, year = int(month_text), int(year_text)
    if not 1 <= month <= 12:
        raise PaymentMethodRejected("exp_month must be from 1 to 12", param="exp_month")
    if len(year_text) == 2:
        year += 2000
    if not 2000 <= year <= 2100:
        raise PaymentMethodRejected("exp_year must be a year such as 2030", param="exp_year")
    if (year, month) < (today.year, today.month):
        raise PaymentMethodRejected(
            f"The card expired in {month:02d}/{year}; use a future expiry date.",
            code="expired_card",
            param="exp_year",
        )
    return month, year


def _card_from_number(details: Mapping[str, Any], today: datetime) -> tuple[str, int, int]:
    number = _digits(details.get("card_number"), "card_number")
    if not 13 <= len(number) <= 19 or not _luhn_ok(number):
        raise PaymentMethodRejected(
            "card_number is not a valid card number (length or check digit).",
            code="invalid_card_number",
            param="card_number",
        )
    if number not in TEST_CARDS:
        raise PaymentMethodRejected(
            "The sandbox accepts only Stripe's test card numbers, such as 4242 4242 4242 4242 "
            "(see docs.stripe.com/testing). Never enter a real card here: nothing is charged.",
            code="not_a_test_card",
            param="card_number",
        )
    cvc = _digits(details.get("cvc"), "cvc")
    if len(cvc) not in (3, 4):
        raise PaymentMethodRejected("cvc must be 3 or 4 digits", param="cvc")
    month, year = _expiry(details, today)
    return number, month, year


class SandboxPayments:
    """`PaymentProvider` for the sandbox (see the module doc)."""

    name = "sandbox"
    sandbox = True

    def __init__(self) -> None:
        self._charges: dict[str, tuple[Charge, tuple[object, ...]]] = {}

    async def ensure_customer(self, account_id: str, customer_id: str | None) -> str:
        return customer_id or f"cus_sandbox_{account_id}"

    async def save_payment_method(
        self, account_id: str, customer_id: str, details: Mapping[str, Any]
    ) -> SavedCard:
        today = datetime.now(UTC)
        token = details.get("payment_method_id")
        if token is not None:
            if not isinstance(token, str) or token not in TEST_PAYMENT_METHODS:
                known = ", ".join(sorted(TEST_PAYMENT_METHODS))
                raise PaymentMethodRejected(
                    f"The sandbox knows only Stripe's test PaymentMethods ({known}), or a test "
                    "card given as card_number, exp_month, exp_year and cvc.",
                    param="payment_method_id",
                )
            number, month, year = TEST_PAYMENT_METHODS[token], 12, today.year + 5
        else:
            number, month, year = _card_from_number(details, today)
        brand = TEST_CARDS[number][0]
        pm_id = f"{_PM_PREFIX}{number}_{secrets.token_hex(4)}"
        return SavedCard(customer_id, pm_id, brand, number[-4:], month, year)

    async def remove_payment_method(self, customer_id: str, payment_method_id: str) -> None:
        return None

    async def describe_payment_method(self, payment_method_id: str) -> SavedCard | None:
        try:
            _behaviour(payment_method_id)
        except PaymentMethodRejected:
            return None
        number = TEST_PAYMENT_METHODS.get(payment_method_id) or payment_method_id.split("_")[2]
        year = datetime.now(UTC).year + 5
        return SavedCard("", payment_method_id, TEST_CARDS[number][0], number[-4:], 12, year)

    async def charge(
        self,
        *,
        account_id: str,
        customer_id: str | None,
        payment_method_id: str | None,
        amount_cents: int,
        idempotency_key: str,
        off_session: bool,
        description: str,
        metadata: Mapping[str, str],
    ) -> Charge:
        if payment_method_id is None:
            raise PaymentMethodRejected(
                "The sandbox needs a saved test card: add one with POST "
                ".../ai-gateway/billing/payment-method first.",
                code="payment_method_required",
                param="payment_method_id",
            )
        behaviour = _behaviour(payment_method_id)
        charge_id = "pi_sandbox_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
        params = (account_id, payment_method_id, amount_cents, off_session)
        seen = self._charges.get(charge_id)
        if seen is not None:
            if seen[1] != params:
                raise PaymentProviderError(
                    "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with ({SIMULATED}).",
                    code="idempotency_error",
                )
            return seen[0]
        status, decline = _outcome(behaviour, off_session)
        code, message = _DECLINES[decline] if decline else (None, None)
        result = Charge(
            id=charge_id,
            status=status,
            amount_cents=amount_cents,
            client_secret=f"{charge_id}_secret_sandbox" if status == "requires_action" else None,
            error_code=decline if decline and code == "card_declined" else code,
            error_message=f"{message} ({SIMULATED})" if message else None,
            payment_method_id=payment_method_id,
            metadata=dict(metadata),
        )
        self._charges[charge_id] = (result, params)
        return result

    async def get_charge(self, charge_id: str) -> Charge | None:
        seen = self._charges.get(charge_id)
        return seen[0] if seen else None

    def parse_webhook(self, payload: bytes, signature: str | None) -> WebhookEvent:
        raise WebhookRejected(
            "The sandbox payment provider sends no webhooks; this endpoint serves "
            "[billing] payment_provider = 'stripe'."
        )

    async def aclose(self) -> None:
        return None


def _behaviour(payment_method_id: str) -> str:
    number = TEST_PAYMENT_METHODS.get(payment_method_id) or (
        payment_method_id.removeprefix(_PM_PREFIX).split("_", 1)[0]
        if payment_method_id.startswith(_PM_PREFIX)
        else ""
    )
    if number not in TEST_CARDS:
        raise PaymentMethodRejected(
            f"'{payment_method_id[:80]}' is not a sandbox payment method; add a test card with "
            "POST .../ai-gateway/billing/payment-method.",
            param="payment_method_id",
        )
    return TEST_CARDS[number][1]


def _outcome(behaviour: str, off_session: bool) -> tuple[ChargeStatus, str | None]:
    """(status, decline code) for a card behaviour, on or off session."""
    if behaviour == "succeed":
        return "succeeded", None
    if behaviour == "charge_fails":
        return "failed", "generic_decline"
    if behaviour.startswith("auth_"):
        if not off_session:
            return "requires_action", None
        if behaviour == "auth_unless_saved":
            return "succeeded", None
        if behaviour == "auth_always":
            return "failed", "authentication_required"
        return "failed", "insufficient_funds"
    return "failed", behaviour
