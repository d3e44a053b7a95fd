"""The `stripe` payment provider against a local Stripe fake (never the network), on SQLite and
PostgreSQL: customer and saved PaymentMethod, PaymentIntents with idempotency keys, off-session
auto top-up, and webhooks: verified, and credited exactly once however often, in whatever order
and however concurrently events arrive."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from tests.billing.test_topup import (  # the *_fixture names are fixtures
    Clock,
    account_id_fixture,  # noqa: F401
    balance_cents,
    clock_fixture,  # noqa: F401
    credits,
    store_fixture,  # noqa: F401
)
from tests.support.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe, serve_fake_stripe
from tollgate.billing.payments import WebhookRejected
from tollgate.billing.payments.stripe import StripePayments
from tollgate.billing.topup import PaymentDeclined, TopUps
from tollgate.errors import UpstreamUnavailable
from tollgate.store import Store
from tollgate.store import payments as repo


@pytest.fixture(scope="module")
def stripe_fake() -> Iterator[tuple[FakeStripe, str]]:
    with serve_fake_stripe() as served:
        yield served


@pytest.fixture
def fake(stripe_fake: tuple[FakeStripe, str]) -> FakeStripe:
    return stripe_fake[0]


def provider(stripe_fake: tuple[FakeStripe, str], retries: int = 2) -> StripePayments:
    return StripePayments(
        api_key=API_KEY,
        webhook_secret=WEBHOOK_SECRET,
        api_base=stripe_fake[1],
        max_network_retries=retries,
    )


@pytest.fixture
async def topups(
    store: Store, clock: Clock, stripe_fake: tuple[FakeStripe, str]
) -> AsyncIterator[TopUps]:
    service = TopUps(store, provider(stripe_fake), clock=clock)
    yield service
    await service.aclose()


async def deliver(topups: TopUps, fake: FakeStripe, event: dict[str, Any]) -> str:
    payload = fake.event_bytes(event)
    return await topups.handle_webhook(payload, fake.sign(payload))


def events_for(fake: FakeStripe, intent_id: str) -> list[dict[str, Any]]:
    return [e for e in fake.events if e["data"]["object"]["id"] == intent_id]


async def test_customer_saved_card_and_a_manual_topup(
    store: Store, topups: TopUps, fake: FakeStripe, account_id: str
) -> None:
    profile = await topups.save_payment_method(account_id, {"payment_method_id": "pm_card_visa"})
    assert profile.customer_id in fake.customers
    assert (profile.brand, profile.last4) == ("visa", "4242")
    assert profile.payment_method_id in fake.payment_methods  # a fresh pm_..., as Stripe does
    customer = fake.customers[profile.customer_id]
    assert customer["invoice_settings"]["default_payment_method"] == profile.payment_method_id
    assert customer["metadata"] == {"tollgate_account_id": account_id}
    record = await topups.create_topup(account_id, 2500, idempotency_key="client-key")
    assert record.status == "succeeded"
    intent = fake.intents[record.payment_intent_id or ""]
    assert intent["amount"] == 2500 and intent["customer"] == profile.customer_id
    assert intent["metadata"]["tollgate_topup_id"] == record.id
    form = fake.idempotent[f"tollgate-topup-{record.id}"][0]
    assert form["confirm"] == "true" and "off_session" not in form
    assert await balance_cents(store, account_id) == 2500


async def test_webhook_replays_reordering_and_concurrent_copies_credit_once(
    store: Store, topups: TopUps, fake: FakeStripe, account_id: str
) -> None:
    await topups.save_payment_method(
        account_id, {"payment_method_id": "pm_card_authenticationRequiredOnSetup"}
    )
    record = await topups.create_topup(account_id, 1000)  # on-session: 3-D Secure needed
    assert record.status == "requires_action" and record.payment_intent_id
    fake.complete_action(record.payment_intent_id)  # the customer authenticates
    events = events_for(fake, record.payment_intent_id)
    assert [e["type"] for e in events] == [
        "payment_intent.requires_action",
        "payment_intent.succeeded",
    ]
    late_failure = {**events[1], "id": "evt_late_failure", "type": "payment_intent.payment_failed"}
    deliveries = events * 3 + [late_failure]
    random.Random(7).shuffle(deliveries)
    for event in deliveries:
        await deliver(topups, fake, event)
    results = await asyncio.gather(*(deliver(topups, fake, events[1]) for _ in range(10)))
    assert set(results) == {"duplicate"}
    assert len(await credits(store, account_id)) == 1
    status = await topups.topup_status(account_id, record.payment_intent_id)
    assert status.status == "succeeded"
    assert await balance_cents(store, account_id) == 1000


async def test_concurrent_first_deliveries_credit_once(
    store: Store, topups: TopUps, fake: FakeStripe, account_id: str
) -> None:
    await topups.save_payment_method(
        account_id, {"payment_method_id": "pm_card_authenticationRequired"}
    )
    record = await topups.create_topup(account_id, 1200)
    assert record.payment_intent_id is not None
    fake.complete_action(record.payment_intent_id)
    succeeded = events_for(fake, record.payment_intent_id)[-1]
    copies = [{**succeeded, "id": f"evt_copy_{i}"} for i in range(8)] + [succeeded] * 8
    await asyncio.gather(*(deliver(topups, fake, e) for e in copies))
    assert len(await credits(store, account_id)) == 1
    assert await balance_cents(store, account_id) == 1200


async def test_a_webhook_that_beats_the_request_credits_once(
    store: Store, topups: TopUps, fake: FakeStripe, account_id: str, clock: Clock
) -> None:
    profile = await topups.save_payment_method(account_id, {"payment_method_id": "pm_card_visa"})
    record, _ = await repo.claim_topup(
        store,
        now=clock(),
        id=secrets.token_hex(16),
        account_id=account_id,
        kind="manual",
        provider="stripe",
        idempotency_key="k",
        amount_cents=1000,
        fee_cents=0,
        charge_cents=1000,
        payment_method_id=profile.payment_method_id,
        brand="visa",
        last4="4242",
    )
    charge = await topups.provider.charge(  # the charge went through; its answer is not in yet
        account_id=account_id,
        customer_id=profile.customer_id,
        payment_method_id=profile.payment_method_id,
        amount_cents=1000,
        idempotency_key=f"tollgate-topup-{record.id}",
        off_session=False,
        description="",
        metadata={"tollgate_account_id": account_id, "tollgate_topup_id": record.id},
    )
    assert await deliver(topups, fake, events_for(fake, charge.id or "")[-1]) == "processed"
    settled = await topups.settle(record, charge)  # then the request's own answer arrives
    assert settled.status == "succeeded"
    assert len(await credits(store, account_id)) == 1
    assert await balance_cents(store, account_id) == 1000


@pytest.mark.parametrize(
    "tamper",
    ["wrong_secret", "too_old", "flipped_byte", "missing", "garbage", "no_v1", "future_bogus"],
)
async def test_a_bad_signature_is_rejected_and_nothing_is_credited(
    store: Store, topups: TopUps, fake: FakeStripe, account_id: str, tamper: str
) -> None:
    await topups.save_payment_method(
        account_id, {"payment_method_id": "pm_card_authenticationRequired"}
    )
    record = await topups.create_topup(account_id, 1000)
    fake.complete_action(record.payment_intent_id or "")
    payload = fake.event_bytes(events_for(fake, record.payment_intent_id or "")[-1])
    signature: str | None = fake.sign(payload)
    if tamper == "wrong_secret":
        signature = fake.sign(payload, secret="whsec_someone_else")
    elif tamper == "too_old":
        signature = fake.sign(payload, timestamp=int(time.time()) - 301)
    elif tamper == "flipped_byte":
        payload = payload.replace(b'"amount":1000', b'"amount":9000')
    elif tamper == "missing":
        signature = None
    elif tamper == "garbage":
        signature = "not a signature"
    elif tamper == "no_v1":
        signature = (signature or "").split(",")[0]
    else:
        signature = f"t={int(time.time())},v1={'0' * 64}"
    with pytest.raises(WebhookRejected):
        await topups.handle_webhook(payload, signature)
    assert await credits(store, account_id) == []
    assert not await repo.event_processed(store, orjson.loads(payload)["id"])


async def test_a_lost_answer_is_retried_by_the_library_with_the_same_key(
    store: Store, topups: TopUps, fake: FakeStripe, account_id: str
) -> None:
    await topups.save_payment_method(account_id, {"payment_method_id": "pm_card_visa"})
    before = fake.intent_creations
    fake.drop_next = 1
    record = await topups.create_topup(account_id, 1000)
    assert record.status == "succeeded"
    assert fake.intent_creations == before + 1  # the retry replayed: one charge
    assert await balance_cents(store, account_id) == 1000


async def test_a_lost_answer_without_retries_is_502_then_resumed_with_one_charge(
    store: Store,
    clock: Clock,
    stripe_fake: tuple[FakeStripe, str],
    fake: FakeStripe,
    account_id: str,
) -> None:
    topups = TopUps(store, provider(stripe_fake, retries=0), clock=clock)
    try:
        await topups.save_payment_method(account_id, {"payment_method_id": "pm_card_visa"})
        before = fake.intent_creations
        fake.drop_next = 1
        with pytest.raises(UpstreamUnavailable):
            await topups.create_topup(account_id, 1000, idempotency_key="retry-me")
        assert await balance_cents(store, account_id) == 0
        clock.advance(seconds=31)
        record = await topups.create_topup(account_id, 1000, idempotency_key="retry-me")
        assert record.status == "succeeded"
        assert fake.intent_creations == before + 1
        assert await balance_cents(store, account_id) == 1000
    finally:
        await topups.aclose()


async def test_declines_are_402_and_credit_nothing(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await topups.save_payment_method(
        account_id, {"payment_method_id": "pm_card_chargeDeclinedInsufficientFunds"}
    )
    with pytest.raises(PaymentDeclined) as caught:
        await topups.create_topup(account_id, 1000)
    assert caught.value.code == "insufficient_funds"
    assert await balance_cents(store, account_id) == 0


async def test_auto_topup_charges_off_session(
    store: Store, topups: TopUps, fake: FakeStripe, account_id: str
) -> None:
    await topups.save_payment_method(account_id, {"payment_method_id": "pm_card_visa"})
    await topups.set_auto_config(account_id, threshold_cents=1000, amount_cents=2000)
    outcomes = await asyncio.gather(*(topups.maybe_auto_topup(account_id, 0) for _ in range(10)))
    [done] = [o for o in outcomes if o is not None]
    assert done.status == "succeeded" and done.topup is not None
    form = fake.idempotent[f"tollgate-topup-{done.topup.id}"][0]
    assert (form["off_session"], form["confirm"]) == ("true", "true")
    assert await balance_cents(store, account_id) == 2000


async def test_off_session_authentication_required_is_a_failure(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await topups.save_payment_method(
        account_id, {"payment_method_id": "pm_card_authenticationRequired"}
    )
    await topups.set_auto_config(account_id, threshold_cents=1000, amount_cents=2000)
    outcome = await topups.maybe_auto_topup(account_id, 0)
    assert outcome is not None and outcome.status == "failed"
    assert "authentication_required" in (outcome.error or "")
    assert await balance_cents(store, account_id) == 0


async def test_onboarding_without_a_card_returns_a_client_secret_and_the_webhook_credits(
    store: Store, topups: TopUps, fake: FakeStripe, account_id: str
) -> None:
    record = await topups.create_topup(account_id, 1500)
    assert record.status == "requires_action" and record.client_secret
    assert record.payment_method_id is None
    intent = fake.intents[record.payment_intent_id or ""]
    assert intent["status"] == "requires_payment_method"
    fake.complete_action(record.payment_intent_id or "", payment_method="pm_card_visa")
    assert await deliver(topups, fake, events_for(fake, intent["id"])[-1]) == "processed"
    assert await balance_cents(store, account_id) == 1500
    profile = await topups.profile(account_id)  # the card entered in Stripe.js is now the default
    assert profile is not None and (profile.brand, profile.last4) == ("visa", "4242")
    assert profile.payment_method_id == fake.intents[intent["id"]]["payment_method"]


async def test_status_polling_settles_a_completed_intent_without_a_webhook(
    store: Store, topups: TopUps, fake: FakeStripe, account_id: str
) -> None:
    await topups.save_payment_method(
        account_id, {"payment_method_id": "pm_card_authenticationRequired"}
    )
    record = await topups.create_topup(account_id, 1000)
    assert record.payment_intent_id is not None
    assert (await topups.topup_status(account_id, record.payment_intent_id)).status == (
        "requires_action"
    )
    fake.complete_action(record.payment_intent_id)
    assert (await topups.topup_status(account_id, record.payment_intent_id)).status == "succeeded"
    await deliver(topups, fake, events_for(fake, record.payment_intent_id)[-1])
    assert len(await credits(store, account_id)) == 1
    assert await balance_cents(store, account_id) == 1000


async def test_an_unknown_payment_method_is_refused(topups: TopUps, account_id: str) -> None:
    from tollgate.billing.payments import PaymentMethodRejected

    with pytest.raises(PaymentMethodRejected) as caught:
        await topups.save_payment_method(account_id, {"payment_method_id": "pm_nope"})
    assert caught.value.param == "payment_method_id"
    with pytest.raises(PaymentMethodRejected):
        await topups.save_payment_method(account_id, {"card_number": "4242424242424242"})
