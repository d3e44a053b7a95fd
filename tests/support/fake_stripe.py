"""A small Stripe-compatible fake, served on loopback, for the `stripe` payment provider's tests.

It speaks the part of Stripe's API tollgate uses, as the official `stripe` library calls it
(form-encoded bodies, `Idempotency-Key`, Stripe's error bodies): customers, test PaymentMethods
(`pm_card_visa`... attached as fresh `pm_...` ids, as Stripe does), PaymentIntents with
`confirm`/`off_session`, and retrieval. Card behaviours are Stripe's test cards (the table in
`tollgate.billing.payments.sandbox`). Idempotency follows Stripe: the same key replays the first
response; the same key with other parameters is a 400 `idempotency_error`.

Every state change of a PaymentIntent is also recorded as a Stripe event (`events`), which tests
sign with `sign()` and deliver to the webhook in any order, any number of times. Tests can also make
the next N PaymentIntent creations fail with a 500 *after* the intent was made (`drop_next`: the
charge happened, the answer was lost), and complete 3-D Secure (`complete_action`).

Never the network: `serve_fake_stripe()` yields the base URL for `api_base`.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl

import orjson
import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.server import serve_in_thread
from tollgate.billing.payments.sandbox import (
    _DECLINES,
    TEST_CARDS,
    TEST_PAYMENT_METHODS,
    _outcome,
)

API_KEY = "sk_test_fake_0123456789"
WEBHOOK_SECRET = "whsec_fake_0123456789abcdef"


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(status: int, kind: str, message: str, **extra: Any) -> Response:
    return _json({"error": {"type": kind, "message": message, **extra}}, status)


def _nested(form: dict[str, str], name: str) -> dict[str, str]:
    prefix = f"{name}["
    return {k[len(prefix) : -1]: v for k, v in form.items() if k.startswith(prefix)}


class FakeStripe:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.customers: dict[str, dict[str, Any]] = {}
        self.payment_methods: dict[str, dict[str, Any]] = {}
        self.intents: dict[str, dict[str, Any]] = {}
        self.idempotent: dict[str, tuple[dict[str, str], int, bytes]] = {}
        self.events: list[dict[str, Any]] = []
        self.intent_creations = 0  # requests that made a new PaymentIntent
        self.drop_next = 0  # make the intent, then answer 500 (a lost response)
        self.app = Starlette(
            routes=[
                Route("/v1/customers", self.create_customer, methods=["POST"]),
                Route("/v1/customers/{id}", self.update_customer, methods=["POST"]),
                Route("/v1/payment_methods/{id}/attach", self.attach, methods=["POST"]),
                Route("/v1/payment_methods/{id}/detach", self.detach, methods=["POST"]),
                Route("/v1/payment_methods/{id}", self.get_method, methods=["GET"]),
                Route("/v1/payment_intents", self.create_intent, methods=["POST"]),
                Route("/v1/payment_intents/{id}", self.get_intent, methods=["GET"]),
            ]
        )

    # --- helpers for tests ----------------------------------------------------------------------

    def charged_cents(self) -> int:
        """What the fake's cards were charged in total (succeeded intents)."""
        return sum(i["amount"] for i in self.intents.values() if i["status"] == "succeeded")

    def succeeded(self) -> list[dict[str, Any]]:
        return [i for i in self.intents.values() if i["status"] == "succeeded"]

    def sign(
        self, payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
    ) -> str:
        return stripe.WebhookSignature.generate_signature_header(
            payload.decode(), secret, timestamp=timestamp
        )

    def event_bytes(self, event: dict[str, Any]) -> bytes:
        return orjson.dumps(event)

    def complete_action(self, intent_id: str, *, payment_method: str | None = None) -> None:
        """The customer completes 3-D Secure (or Stripe.js confirms a card) on-session."""
        with self.lock:
            intent = self.intents[intent_id]
            if payment_method is not None:
                intent["payment_method"] = self._attach_token(payment_method, intent["customer"])
            intent.update(status="succeeded", amount_received=intent["amount"])
            intent["next_action"] = None
            self._event("payment_intent.succeeded", intent)

    # --- internals ------------------------------------------------------------------------------

    def _event(self, kind: str, intent: dict[str, Any]) -> None:
        self.events.append(
            {
                "id": f"evt_{secrets.token_hex(12)}",
                "object": "event",
                "api_version": "2024-06-20",
                "created": int(time.time()),
                "type": kind,
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "data": {"object": dict(intent)},
            }
        )

    def _attach_token(self, token: str, customer: str | None) -> str:
        if token in self.payment_methods:
            self.payment_methods[token]["customer"] = customer
            return token
        number = TEST_PAYMENT_METHODS[token]
        pm_id = f"pm_{secrets.token_hex(12)}"
        self.payment_methods[pm_id] = {
            "id": pm_id,
            "object": "payment_method",
            "type": "card",
            "customer": customer,
            "card": {
                "brand": TEST_CARDS[number][0],
                "last4": number[-4:],
                "exp_month": 12,
                "exp_year": 2034,
            },
            "_behaviour": TEST_CARDS[number][1],
        }
        return pm_id

    @staticmethod
    async def _form(request: Request) -> dict[str, str]:
        return dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))

    @staticmethod
    def _authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {API_KEY}"

    async def create_customer(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid_request_error", "Invalid API Key provided")
        form = await self._form(request)
        key = request.headers.get("idempotency-key")
        with self.lock:
            if key and key in self.idempotent:
                return Response(self.idempotent[key][2], media_type="application/json")
            customer = {"id": f"cus_{secrets.token_hex(7)}", "object": "customer"}
            customer["metadata"] = _nested(form, "metadata")
            self.customers[customer["id"]] = customer
            body = orjson.dumps(customer)
            if key:
                self.idempotent[key] = (form, 200, body)
        return Response(body, media_type="application/json")

    async def update_customer(self, request: Request) -> Response:
        form = await self._form(request)
        customer = self.customers.get(request.path_params["id"])
        if customer is None:
            return _error(404, "invalid_request_error", "No such customer", code="resource_missing")
        customer["invoice_settings"] = _nested(form, "invoice_settings")
        return _json(customer)

    async def attach(self, request: Request) -> Response:
        form = await self._form(request)
        token = request.path_params["id"]
        if token not in TEST_PAYMENT_METHODS and token not in self.payment_methods:
            return _error(
                404,
                "invalid_request_error",
                f"No such PaymentMethod: '{token}'",
                code="resource_missing",
                param="payment_method",
            )
        with self.lock:
            pm_id = self._attach_token(token, form.get("customer"))
        shown = {k: v for k, v in self.payment_methods[pm_id].items() if not k.startswith("_")}
        return _json(shown)

    async def detach(self, request: Request) -> Response:
        method = self.payment_methods.get(request.path_params["id"])
        if method is None:
            return _error(
                404, "invalid_request_error", "No such PaymentMethod", code="resource_missing"
            )
        method["customer"] = None
        return _json({k: v for k, v in method.items() if not k.startswith("_")})

    async def get_method(self, request: Request) -> Response:
        method = self.payment_methods.get(request.path_params["id"])
        if method is None:
            return _error(
                404, "invalid_request_error", "No such PaymentMethod", code="resource_missing"
            )
        return _json({k: v for k, v in method.items() if not k.startswith("_")})

    async def get_intent(self, request: Request) -> Response:
        intent = self.intents.get(request.path_params["id"])
        if intent is None:
            return _error(
                404, "invalid_request_error", "No such payment_intent", code="resource_missing"
            )
        return _json(intent)

    async def create_intent(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid_request_error", "Invalid API Key provided")
        form = await self._form(request)
        key = request.headers.get("idempotency-key")
        with self.lock:
            if key and key in self.idempotent:
                first, status, body = self.idempotent[key]
                if first != form:
                    return _error(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with.",
                    )
                return Response(body, status_code=status, media_type="application/json")
            status, body = self._new_intent(form)
            if key:
                self.idempotent[key] = (form, status, body)
            if self.drop_next > 0:
                self.drop_next -= 1
                return _error(500, "api_error", "simulated: the answer was lost")
        return Response(body, status_code=status, media_type="application/json")

    def _new_intent(self, form: dict[str, str]) -> tuple[int, bytes]:
        self.intent_creations += 1
        intent_id = f"pi_{secrets.token_hex(12)}"
        intent: dict[str, Any] = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": int(form["amount"]),
            "amount_received": 0,
            "currency": form.get("currency", "usd"),
            "customer": form.get("customer"),
            "description": form.get("description"),
            "metadata": _nested(form, "metadata"),
            "payment_method": form.get("payment_method"),
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(8)}",
            "status": "requires_payment_method",
            "last_payment_error": None,
            "next_action": None,
            "livemode": False,
        }
        self.intents[intent_id] = intent
        if form.get("confirm") != "true" or not intent["payment_method"]:
            return 200, orjson.dumps(intent)
        method = self.payment_methods.get(intent["payment_method"])
        if method is None:
            return 400, orjson.dumps(
                {"error": {"type": "invalid_request_error", "message": "No such PaymentMethod"}}
            )
        status, decline = _outcome(method["_behaviour"], form.get("off_session") == "true")
        if status == "succeeded":
            intent.update(status="succeeded", amount_received=intent["amount"])
            self._event("payment_intent.succeeded", intent)
            return 200, orjson.dumps(intent)
        if status == "requires_action":
            intent.update(status="requires_action", next_action={"type": "use_stripe_sdk"})
            self._event("payment_intent.requires_action", intent)
            return 200, orjson.dumps(intent)
        assert decline is not None
        code, message = _DECLINES[decline]
        error = {"type": "card_error", "code": code, "message": message}
        if code == "card_declined":
            error["decline_code"] = decline
        intent.update(last_payment_error=dict(error), status="requires_payment_method")
        self._event("payment_intent.payment_failed", intent)
        body = {"error": {**error, "payment_intent": intent}}
        return 402, orjson.dumps(body)


@contextmanager
def serve_fake_stripe() -> Iterator[tuple[FakeStripe, str]]:
    fake = FakeStripe()
    with serve_in_thread(fake.app) as base:
        yield fake, base
