"""The credits page's forms and words: typed amounts, card details, the pay form's idempotency key,
and what a payment outcome means in plain words. Pure functions, no I/O.

Amounts are typed in dollars and become integer cents by `format.parse_dollars_to_cents`, within
the same bounds the billing API enforces (`tollgate.billing.topup`): a top-up $10 to $10,000; auto
top-up threshold at least $5, amount at least $10, an optional monthly cap at least the amount.

Card details go to the payment provider as the billing API's `POST billing/payment-method` takes
them: the sandbox wants a Stripe test card (`card_number`, `exp_month`, `exp_year`, `cvc`); Stripe
wants a PaymentMethod id (`pm_...`) made by Stripe.js, so no card number reaches tollgate.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from tollgate.api.billing_fields import MAX_LIMIT_CENTS
from tollgate.billing.payments import PaymentMethodRejected
from tollgate.billing.payments.sandbox import SIMULATED, TEST_CARDS
from tollgate.billing.topup import (
    MAX_TOPUP_CENTS,
    MIN_AUTO_AMOUNT_CENTS,
    MIN_AUTO_THRESHOLD_CENTS,
    MIN_TOPUP_CENTS,
)
from tollgate.dashboard.format import AmountError, parse_dollars_to_cents, usd
from tollgate.money import from_cents

# The pay form's idempotency key: made at the confirm step, so a second submit of the same form (a
# double click, a reload of the POST, the back button) replays the same top-up and never charges
# twice. Scoped to the account by the store's unique (account_id, idempotency_key).
KEY_PREFIX = "dashboard-"
_KEY = re.compile(r"dashboard-[A-Za-z0-9_-]{32}")

# Stripe test cards shown on the page, in this order (each is in the sandbox's `TEST_CARDS`).
SHOWN_TEST_CARDS = (
    "4242424242424242",
    "5555555555554444",
    "4000000000000002",
    "4000000000009995",
    "4000000000000069",
    "4000000000000127",
    "4000002500003155",
    "4000002760003184",
    "4000000000000341",
)
# The sandbox's card behaviours (`sandbox.TEST_CARDS`), as what happens on a top-up here.
BEHAVIOUR_WORDS = {
    "succeed": "Succeeds",
    "generic_decline": "Declined",
    "insufficient_funds": "Declined: insufficient funds",
    "lost_card": "Declined: lost card",
    "stolen_card": "Declined: stolen card",
    "expired_card": "Declined: expired card",
    "incorrect_cvc": "Declined: incorrect CVC",
    "processing_error": "Declined: processing error",
    "charge_fails": "Saves, then every charge is declined",
    "auth_unless_saved": "Top-up here: authentication required; auto top-up: succeeds",
    "auth_always": "Always requires authentication; auto top-up is declined",
    "auth_then_insufficient": "Top-up here: authentication required; auto top-up: declined",
}
# Decline codes (the sandbox's and Stripe's `decline_code` or `code`) in plain words. Lost and
# stolen cards read as a plain decline, as Stripe advises, so the page tips off nobody.
DECLINE_WORDS = {
    "generic_decline": "The card's bank declined the payment without giving a reason. Use another "
    "card, or ask the bank.",
    "card_declined": "The card's bank declined the payment without giving a reason. Use another "
    "card, or ask the bank.",
    "lost_card": "The card's bank declined the payment. Use another card, or ask the bank.",
    "stolen_card": "The card's bank declined the payment. Use another card, or ask the bank.",
    "insufficient_funds": "The card does not have enough funds for this payment. Use another card "
    "or top up a smaller amount.",
    "expired_card": "The card has expired. Add a card with a future expiry date.",
    "incorrect_cvc": "The card's security code (CVC) is incorrect. Add the card again with the "
    "right code.",
    "processing_error": "The bank could not process the card just now. Try again in a little "
    "while.",
    "authentication_required": "The card's bank wants the cardholder to confirm this payment "
    "(3-D Secure), which cannot happen here. Use another card.",
}


class FormErrors(Exception):
    """Inline messages for a form, by the id of the field each belongs to."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class AutoTopUpSettings:
    threshold_cents: int
    amount_cents: int
    monthly_cap_cents: int | None


def usd_cents(cents: int) -> str:
    return usd(from_cents(cents))


def topup_amount_cents(raw: str) -> int:
    """A typed top-up amount in cents, within the billing API's bounds (raises `AmountError`)."""
    return parse_dollars_to_cents(
        raw,
        field="the top-up amount",
        minimum_cents=MIN_TOPUP_CENTS,
        maximum_cents=MAX_TOPUP_CENTS,
    )


def parse_auto_topup(form: dict[str, str]) -> AutoTopUpSettings:
    """The auto top-up form (`threshold`, `auto_amount`, optional `monthly_cap`), or
    `FormErrors` naming every bad field at once."""
    errors: dict[str, str] = {}
    threshold = amount = cap = None
    try:
        threshold = parse_dollars_to_cents(
            form.get("threshold", ""),
            field="the threshold",
            minimum_cents=MIN_AUTO_THRESHOLD_CENTS,
            maximum_cents=MAX_TOPUP_CENTS,
        )
    except AmountError as exc:
        errors["auto-threshold"] = str(exc)
    try:
        amount = parse_dollars_to_cents(
            form.get("auto_amount", ""),
            field="the auto top-up amount",
            minimum_cents=MIN_AUTO_AMOUNT_CENTS,
            maximum_cents=MAX_TOPUP_CENTS,
        )
    except AmountError as exc:
        errors["auto-amount"] = str(exc)
    if form.get("monthly_cap", "").strip():
        try:
            cap = parse_dollars_to_cents(
                form["monthly_cap"],
                field="the monthly cap",
                minimum_cents=MIN_AUTO_AMOUNT_CENTS,
                maximum_cents=MAX_LIMIT_CENTS,
            )
        except AmountError as exc:
            errors["auto-cap"] = str(exc)
        if cap is not None and amount is not None and cap < amount:
            errors["auto-cap"] = (
                f"The monthly cap must be at least the auto top-up amount ({usd_cents(amount)}), "
                "or left empty for no cap."
            )
    if errors or threshold is None or amount is None:
        raise FormErrors(errors)
    return AutoTopUpSettings(threshold, amount, cap)


def card_details(form: dict[str, str], *, sandbox: bool) -> dict[str, str]:
    """What the payment provider's `save_payment_method` takes from the card form, or
    `FormErrors` for fields left empty (the provider checks the rest)."""
    if not sandbox:
        method = form.get("payment_method_id", "").strip()
        if not method:
            raise FormErrors({"payment-method-id": "Paste a Stripe PaymentMethod id (pm_...)."})
        return {"payment_method_id": method}
    fields = {
        "card_number": ("card-number", "Enter the card number, for example 4242 4242 4242 4242."),
        "exp_month": ("exp-month", "Enter the expiry month, 1 to 12."),
        "exp_year": ("exp-year", "Enter the expiry year, for example 2030."),
        "cvc": (
            "cvc",
            "Enter the 3 or 4 digit security code (CVC); any digits do for a test card.",
        ),
    }
    details = {name: form.get(name, "").strip() for name in fields}
    missing = {fields[name][0]: fields[name][1] for name, value in details.items() if not value}
    if missing:
        raise FormErrors(missing)
    return details


def card_error(exc: PaymentMethodRejected, *, sandbox: bool) -> FormErrors:
    """The provider's refusal of a card as an inline message on the field it is about."""
    field = exc.param.replace("_", "-")
    if exc.param == "card_number":
        if exc.code == "not_a_test_card":
            message = (
                "The sandbox accepts only Stripe's test card numbers, such as 4242 4242 4242 "
                "4242 (see the list). Never enter a real card here."
            )
        else:
            message = (
                "That is not a valid card number: check the digits (a test card such as "
                "4242 4242 4242 4242 passes)."
            )
    elif exc.param == "exp_month":
        message = "Enter the expiry month as a number from 1 to 12."
    elif exc.param == "exp_year" and exc.code == "expired_card":
        message = exc.message
    elif exc.param == "exp_year":
        message = "Enter the expiry year as a future year, for example 2030."
    elif exc.param == "cvc":
        message = "The security code (CVC) is 3 or 4 digits; any digits do for a test card."
    elif not sandbox and exc.param == "payment_method_id":
        message = (
            exc.message
            if exc.message.startswith("Stripe refused")
            else "That is not a Stripe PaymentMethod id: it starts with pm_ (see below where it "
            "comes from)."
        )
    else:
        message = exc.message
    if sandbox and field not in ("card-number", "exp-month", "exp-year", "cvc"):
        field = "card-number"  # the sandbox form has no other field to put it next to
    return FormErrors({field: message})


def new_topup_key() -> str:
    """A fresh idempotency key for one confirm step (never reused for another top-up)."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def pay_fields(form: dict[str, str]) -> tuple[int, str]:
    """The pay form's amount (cents, as the confirm step wrote it) and idempotency key; an
    `AmountError` when either was altered into something unusable."""
    raw, key = form.get("amount_cents", ""), form.get("idempotency_key", "")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not _KEY.fullmatch(key):
        raise AmountError(
            "This payment form is incomplete or was altered, so nothing was charged. Enter the "
            "amount again."
        )
    cents = int(raw)
    if not MIN_TOPUP_CENTS <= cents <= MAX_TOPUP_CENTS:
        raise AmountError("The amount on this payment form is out of range; nothing was charged.")
    return cents, key


def decline_words(code: str | None, message: str | None) -> str:
    """Why a payment failed, in plain words (the provider's own message when the code is new)."""
    if code in DECLINE_WORDS:
        return DECLINE_WORDS[code]
    text = (message or "").replace(f" ({SIMULATED})", "").strip()
    return text or "The card's bank declined the payment. Use another card, or ask the bank."


def auto_error_words(error: str) -> str:
    """An auto top-up's recorded error (`code: message` for a decline, else a sentence) in plain
    words."""
    code, _, _ = error.partition(": ")
    if code in DECLINE_WORDS:
        return DECLINE_WORDS[code]
    return error.replace(f" ({SIMULATED})", "").strip()


def percent_words(percent: Decimal) -> str:
    """A fee percentage as people write it: 2.9%, 3%, 0%."""
    text = format(percent.normalize(), "f")
    return f"{text}%"


def page_number(raw: str | None) -> int:
    """The invoice history's `?page=` (1 when absent, malformed or absurd)."""
    if raw is None or not (raw.isascii() and raw.isdigit() and len(raw) < 7):
        return 1
    return max(int(raw), 1)


def when(moment: datetime | None) -> str:
    """A stored time as the dashboard shows it (UTC, to the minute)."""
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment else ""


def grouped(number: str) -> str:
    """A card number in groups of four, as printed on cards."""
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4))


def shown_test_cards() -> list[tuple[str, str, str]]:
    """(number grouped, brand, what happens) for the test cards listed on the page."""
    rows = []
    for number in SHOWN_TEST_CARDS:
        brand, behaviour = TEST_CARDS[number]
        rows.append((grouped(number), brand.title(), BEHAVIOUR_WORDS[behaviour]))
    return rows
