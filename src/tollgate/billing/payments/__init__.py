"""Payment providers: how money comes in. The ledger, not the provider, is the balance of record.

`PaymentProvider` is what the top-up code (`tollgate.billing.topup`) needs from a card processor:

- `ensure_customer` / `save_payment_method` / `remove_payment_method`: a customer per account and
  its default payment method (only brand, last four and expiry come back; never a card number);
- `charge`: charge an amount in cents, with an idempotency key (the same key never charges
  twice), either on-session (a manual top-up, where the customer may be asked to authenticate) or
  off-session (auto top-up, where nobody is there to authenticate);
- `get_charge`: a charge's current state, to settle a pending top-up;
- `parse_webhook`: verify and decode a webhook delivery (Stripe only).

A declined card is not an exception: `charge` returns a `Charge` with status `failed` and the
provider's decline code. Exceptions mean something else:
`PaymentMethodRejected` (the card details or payment method id are unusable; a 400) and
`PaymentProviderError` (the provider could not be reached or answered oddly; retrying with the same
idempotency key is safe; a 502).

Implementations: `sandbox` (the default; Stripe's test cards, no money moves, every answer says
so) and `stripe` (the official `stripe` library). `build_payment_provider(settings)` picks one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ChargeStatus = Literal["succeeded", "processing", "requires_action", "failed"]


@dataclass(frozen=True, slots=True)
class SavedCard:
    """A saved payment method, as much of it as tollgate keeps."""

    customer_id: str
    payment_method_id: str
    brand: str | None
    last4: str | None
    exp_month: int | None = None
    exp_year: int | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    """What a charge came to. `id` is the payment intent id (None when none was created)."""

    id: str | None
    status: ChargeStatus
    amount_cents: int
    client_secret: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    payment_method_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A verified webhook delivery about a payment intent."""

    id: str
    type: str
    charge: Charge | None  # the payment intent in the event, when it is about one


class PaymentMethodRejected(Exception):
    """The payment method given cannot be used (bad card details, unknown id): a 400."""

    def __init__(self, message: str, *, code: str = "invalid_payment_method", param: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


class PaymentProviderError(Exception):
    """The provider failed (network, 5xx, misconfiguration). Retrying with the same idempotency
    key is safe: it cannot charge twice."""

    def __init__(self, message: str, *, code: str = "payment_provider_error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class WebhookRejected(Exception):
    """A webhook delivery whose signature, timestamp or body does not verify: a 400."""


class PaymentProvider(Protocol):
    name: str  # "sandbox" | "stripe"
    sandbox: bool  # True: simulated, no money moves

    async def ensure_customer(self, account_id: str, customer_id: str | None) -> str:
        """The account's customer id at the provider, created when `customer_id` is None."""
        ...

    async def save_payment_method(
        self, account_id: str, customer_id: str, details: Mapping[str, Any]
    ) -> SavedCard:
        """Attach a payment method to the customer and make it the default.

        `details`: sandbox: `{card_number, exp_month, exp_year, cvc}` of a Stripe test card, or
        `{payment_method_id}` naming a Stripe test PaymentMethod (`pm_card_visa`...); stripe:
        `{payment_method_id}` from Stripe.js (or a test PaymentMethod in test mode).
        Raises `PaymentMethodRejected`.
        """
        ...

    async def remove_payment_method(self, customer_id: str, payment_method_id: str) -> None: ...

    async def describe_payment_method(self, payment_method_id: str) -> SavedCard | None:
        """Brand, last four and expiry of a payment method the customer attached elsewhere (with
        Stripe.js, during an onboarding top-up); None when unknown."""
        ...

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
        """Charge `amount_cents` (already including any purchase fee).

        The same `idempotency_key` always returns the first answer and never charges twice.
        `payment_method_id` None (stripe, on-session only): create the payment intent unconfirmed,
        for Stripe.js to collect a card with its `client_secret` (status `requires_action`).
        """
        ...

    async def get_charge(self, charge_id: str) -> Charge | None:
        """The charge's current state; None when the provider does not know it."""
        ...

    def parse_webhook(self, payload: bytes, signature: str | None) -> WebhookEvent:
        """Verify and decode a webhook delivery; raises `WebhookRejected`."""
        ...

    async def aclose(self) -> None: ...


def build_payment_provider(settings: Any) -> PaymentProvider:
    """The provider `[billing] payment_provider` names.

    `stripe` reads `billing.stripe_secret_key`, `billing.stripe_webhook_secret` and (for tests
    and proxies) `billing.stripe_api_base` from the settings.
    """
    billing = settings.billing
    if billing.payment_provider == "stripe":
        from tollgate.billing.payments.stripe import StripePayments

        secret = getattr(billing, "stripe_secret_key", None)
        if secret is None:
            from tollgate.settings import SettingsError

            raise SettingsError(
                "invalid configuration:\n  billing.stripe_secret_key: required when "
                "billing.payment_provider is 'stripe'. Set [billing] stripe_secret_key in "
                "tollgate.toml or TOLLGATE_BILLING__STRIPE_SECRET_KEY."
            )
        webhook_secret = getattr(billing, "stripe_webhook_secret", None)
        return StripePayments(
            api_key=_secret(secret),
            webhook_secret=_secret(webhook_secret) if webhook_secret is not None else None,
            api_base=getattr(billing, "stripe_api_base", None),
        )
    from tollgate.billing.payments.sandbox import SandboxPayments

    return SandboxPayments()


def _secret(value: Any) -> str:
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if getter is not None else value)
