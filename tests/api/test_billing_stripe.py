"""The billing API and `POST /stripe/webhook` over HTTP with the `stripe` provider, against the
local Stripe fake: a signed delivery credits once, replays are duplicates, and a bad signature is a
400 that credits nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_billing import Billing, _seed
from tests.support.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe, serve_fake_stripe
from tests.support.server import serve_in_thread
from tollgate import money
from tollgate.app import create_app
from tollgate.settings import Settings


@pytest.fixture
def stripe_gw(
    make_settings: Callable[..., Settings], database_url: str
) -> Iterator[tuple[Billing, FakeStripe]]:
    with serve_fake_stripe() as (fake, stripe_base):
        settings = make_settings(
            {
                "TOLLGATE_SANDBOX__ENABLED": "false",
                "TOLLGATE_DATABASE_URL": database_url,
                "TOLLGATE_BILLING__PAYMENT_PROVIDER": "stripe",
                "TOLLGATE_BILLING__STRIPE_SECRET_KEY": API_KEY,
                "TOLLGATE_BILLING__STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "TOLLGATE_BILLING__STRIPE_API_BASE": stripe_base,
            }
        )
        app = create_app(settings)
        with serve_in_thread(app) as base:
            account_id, tokens = asyncio.run(_seed(settings.database.url))
            running = Billing(base, app, settings.database.url, account_id, *tokens)
            try:
                yield running, fake
                running.balance_nanos()
            finally:
                for client in running.clients.values():
                    client.close()


def post_webhook(gw: Billing, payload: bytes, signature: str | None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if signature is not None:
        headers["stripe-signature"] = signature
    return httpx.post(f"{gw.base}/stripe/webhook", content=payload, headers=headers)


def test_sdk_topup_then_signed_webhooks_credit_once(stripe_gw: tuple[Billing, FakeStripe]) -> None:
    gw, fake = stripe_gw
    card = gw.raw(
        "POST", "/payment-method", json={"payment_method_id": "pm_card_authenticationRequired"}
    )
    assert card.status_code == 200 and card.json()["result"]["sandbox"] is False
    created = gw.billing.topup.create(account_id=gw.account_id, amount=2000)
    assert created.client_secret and created.payment_intent_id.startswith("pi_")
    status = gw.billing.topup.status(
        account_id=gw.account_id, payment_intent_id=created.payment_intent_id
    )
    assert status.status == "pending"
    fake.complete_action(created.payment_intent_id)
    event = [e for e in fake.events if e["data"]["object"]["id"] == created.payment_intent_id][-1]
    payload = fake.event_bytes(event)

    bad = post_webhook(gw, payload, fake.sign(payload, secret="whsec_wrong"))
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["error_code"] == "invalid_signature"
    old = post_webhook(gw, payload, fake.sign(payload, timestamp=int(time.time()) - 301))
    assert old.status_code == 400
    assert post_webhook(gw, payload, None).status_code == 400
    assert gw.balance_nanos() == 0

    first = post_webhook(gw, payload, fake.sign(payload))
    assert first.status_code == 200 and first.json() == {"received": True, "result": "processed"}
    again = post_webhook(gw, payload, fake.sign(payload))
    assert again.json()["result"] == "duplicate"
    assert gw.balance_nanos() == money.from_cents(2000)
    status = gw.billing.topup.status(
        account_id=gw.account_id, payment_intent_id=created.payment_intent_id
    )
    assert status.status == "completed"


def test_a_webhook_about_someone_elses_payment_is_ignored(
    stripe_gw: tuple[Billing, FakeStripe],
) -> None:
    gw, fake = stripe_gw
    event: dict[str, Any] = {
        "id": "evt_foreign",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": "pi_foreign",
                "object": "payment_intent",
                "amount": 100000,
                "status": "succeeded",
                "metadata": {"tollgate_account_id": gw.account_id, "tollgate_topup_id": "x" * 32},
            }
        },
    }
    payload = fake.event_bytes(event)
    response = post_webhook(gw, payload, fake.sign(payload))
    assert response.status_code == 200 and response.json()["result"] == "ignored"
    assert gw.balance_nanos() == 0
