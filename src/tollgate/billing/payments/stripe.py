"""The Stripe payment provider, on the official `stripe` library (async calls over aiohttp).

- One Customer per account (created with an idempotency key derived from the account id, so two
  racing first calls make one customer), metadata `tollgate_account_id`.
- A saved PaymentMethod (from Stripe.js, or a test PaymentMethod such as `pm_card_visa` in test
  mode) is attached to the customer and becomes its default (`invoice_settings`).
- A charge is one PaymentIntent created with `confirm=true` and an `idempotency_key` derived from
  tollgate's own top-up id: a retry after a timeout returns the same PaymentIntent and never charges
  twice. Auto top-up charges add `off_session=true`; the issuer may still ask for authentication,
  which comes back as a decline with code `authentication_required`.
- Without a saved payment method, a manual top-up creates an unconfirmed PaymentIntent with
  `setup_future_usage=off_session` and returns its `client_secret`, for Stripe.js to collect and
  confirm the card; the webhook credits it when it succeeds.
- Webhooks: `parse_webhook` verifies `Stripe-Signature` with `stripe.Webhook.construct_event`
  (HMAC-SHA256 over the raw body, 300 s tolerance) before anything else is read.

`api_base` points the client elsewhere (tests use a local fake; never the network).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import stripe

from tollgate.billing.payments import (
    Charge,
    ChargeStatus,
    PaymentMethodRejected,
    PaymentProviderError,
    SavedCard,
    WebhookEvent,
    WebhookRejected,
)

WEBHOOK_TOLERANCE_SECONDS = 300

_STATUS: dict[str, ChargeStatus] = {
    "succeeded": "succeeded",
    "processing": "processing",
    "requires_capture": "processing",
    "requires_action": "requires_action",
    "requires_confirmation": "requires_action",
    "canceled": "failed",
}


def _charge_from(intent: Mapping[str, Any]) -> Charge:
    """Map a PaymentIntent (a dict or a StripeObject) to a `Charge`."""
    raw_status = str(intent.get("status") or "")
    error = intent.get("last_payment_error") or {}
    status = _STATUS.get(raw_status)
    if status is None:  # requires_payment_method: failed if it was tried, else awaiting a card
        status = "failed" if error else "requires_action"
    payment_method = intent.get("payment_method")
    if isinstance(payment_method, Mapping):
        payment_method = payment_method.get("id")
    return Charge(
        id=str(intent["id"]) if intent.get("id") else None,
        status=status,
        amount_cents=int(intent.get("amount") or 0),
        client_secret=intent.get("client_secret") if status == "requires_action" else None,
        error_code=(error.get("decline_code") or error.get("code")) if status == "failed" else None,
        error_message=error.get("message") if status == "failed" else None,
        payment_method_id=str(payment_method) if payment_method else None,
        metadata={str(k): str(v) for k, v in dict(intent.get("metadata") or {}).items()},
    )


class StripePayments:
    """`PaymentProvider` on Stripe (see the module doc)."""

    name = "stripe"
    sandbox = False

    def __init__(
        self,
        *,
        api_key: str,
        webhook_secret: str | None,
        api_base: str | None = None,
        max_network_retries: int = 2,
    ) -> None:
        self._webhook_secret = webhook_secret
        self._http = stripe.AIOHTTPClient(timeout=30)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            http_client=self._http,
            max_network_retries=max_network_retries,
        )

    async def ensure_customer(self, account_id: str, customer_id: str | None) -> str:
        if customer_id:
            return customer_id
        try:
            customer = await self._client.v1.customers.create_async(
                {"metadata": {"tollgate_account_id": account_id}},
                {"idempotency_key": f"tollgate-customer-{account_id}"},
            )
        except stripe.StripeError as exc:
            raise _provider_error(exc) from None
        return str(customer.id)

    async def save_payment_method(
        self, account_id: str, customer_id: str, details: Mapping[str, Any]
    ) -> SavedCard:
        pm_id = details.get("payment_method_id")
        if not isinstance(pm_id, str) or not pm_id.startswith("pm_") or len(pm_id) > 255:
            raise PaymentMethodRejected(
                "payment_method_id must be a Stripe PaymentMethod id (pm_...), created in the "
                "browser with Stripe.js; card numbers never pass through tollgate.",
                param="payment_method_id",
            )
        try:
            method = await self._client.v1.payment_methods.attach_async(
                pm_id, {"customer": customer_id}
            )
            await self._client.v1.customers.update_async(
                customer_id, {"invoice_settings": {"default_payment_method": method.id}}
            )
        except (stripe.CardError, stripe.InvalidRequestError) as exc:
            raise PaymentMethodRejected(
                f"Stripe refused the payment method: {exc.user_message or exc}",
                code=str(exc.code or "invalid_payment_method"),
                param="payment_method_id",
            ) from None
        except stripe.StripeError as exc:
            raise _provider_error(exc) from None
        card = method.card
        return SavedCard(
            customer_id=customer_id,
            payment_method_id=str(method.id),
            brand=str(card.brand) if card else None,
            last4=str(card.last4) if card else None,
            exp_month=int(card.exp_month) if card else None,
            exp_year=int(card.exp_year) if card else None,
        )

    async def describe_payment_method(self, payment_method_id: str) -> SavedCard | None:
        try:
            method = await self._client.v1.payment_methods.retrieve_async(payment_method_id)
        except stripe.InvalidRequestError:
            return None
        except stripe.StripeError as exc:
            raise _provider_error(exc) from None
        card = method.card
        return SavedCard(
            customer_id=str(method.customer or ""),
            payment_method_id=str(method.id),
            brand=str(card.brand) if card else None,
            last4=str(card.last4) if card else None,
            exp_month=int(card.exp_month) if card else None,
            exp_year=int(card.exp_year) if card else None,
        )

    async def remove_payment_method(self, customer_id: str, payment_method_id: str) -> None:
        try:
            await self._client.v1.payment_methods.detach_async(payment_method_id)
        except stripe.InvalidRequestError:
            return None  # already detached or unknown: the outcome we want
        except stripe.StripeError as exc:
            raise _provider_error(exc) from None

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
        params: dict[str, Any] = {
            "amount": amount_cents,
            "currency": "usd",
            "description": description,
            "metadata": dict(metadata),
            "payment_method_types": ["card"],
        }
        if customer_id:
            params["customer"] = customer_id
        if payment_method_id is None:
            if off_session:
                raise PaymentMethodRejected(
                    "An off-session charge needs a saved payment method.",
                    code="payment_method_required",
                    param="payment_method_id",
                )
            params["setup_future_usage"] = "off_session"
        else:
            params.update(payment_method=payment_method_id, confirm=True)
            if off_session:
                params["off_session"] = True
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            )
        except stripe.CardError as exc:
            return _declined(exc, amount_cents)
        except stripe.StripeError as exc:
            raise _provider_error(exc) from None
        return _charge_from(intent.to_dict())

    async def get_charge(self, charge_id: str) -> Charge | None:
        try:
            intent = await self._client.v1.payment_intents.retrieve_async(charge_id)
        except stripe.InvalidRequestError:
            return None
        except stripe.StripeError as exc:
            raise _provider_error(exc) from None
        return _charge_from(intent.to_dict())

    def parse_webhook(self, payload: bytes, signature: str | None) -> WebhookEvent:
        if not self._webhook_secret:
            raise WebhookRejected(
                "Webhooks are not configured: set [billing] stripe_webhook_secret (whsec_...)."
            )
        if not signature:
            raise WebhookRejected("The Stripe-Signature header is missing.")
        try:
            text = payload.decode("utf-8")
            stripe.Webhook.construct_event(
                text, signature, self._webhook_secret, tolerance=WEBHOOK_TOLERANCE_SECONDS
            )
            body = orjson.loads(payload)
        except stripe.SignatureVerificationError as exc:
            raise WebhookRejected(f"The Stripe-Signature does not verify: {exc}") from None
        except (ValueError, UnicodeDecodeError, IndexError, KeyError):
            raise WebhookRejected("The webhook body or signature header is malformed.") from None
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise WebhookRejected("The webhook body is not a Stripe event.")
        data = body.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        charge = None
        if isinstance(obj, dict) and obj.get("object") == "payment_intent":
            charge = _charge_from(obj)
        return WebhookEvent(id=body["id"], type=str(body.get("type") or ""), charge=charge)

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]


def _declined(exc: stripe.CardError, amount_cents: int) -> Charge:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error") or {}
    intent = error.get("payment_intent") or {}
    return Charge(
        id=str(intent["id"]) if intent.get("id") else None,
        status="failed",
        amount_cents=amount_cents,
        error_code=str(error.get("decline_code") or exc.code or "card_declined"),
        error_message=str(error.get("message") or exc.user_message or "Your card was declined."),
        payment_method_id=None,
        metadata={str(k): str(v) for k, v in dict(intent.get("metadata") or {}).items()},
    )


def _provider_error(exc: stripe.StripeError) -> PaymentProviderError:
    code = "idempotency_error" if isinstance(exc, stripe.IdempotencyError) else None
    return PaymentProviderError(
        f"Stripe did not complete the request ({type(exc).__name__}: {exc.user_message or exc}). "
        "Retrying with the same idempotency key is safe.",
        code=code or "payment_provider_error",
    )
