"""Manual top-ups through the sandbox provider, on SQLite and PostgreSQL: credited exactly once,
idempotency keys replayed, declines, pending authentication, the fee, resuming a crashed attempt.

After every test the ledger invariant is checked: balance == sum of entries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tollgate import money
from tollgate.billing.payments.sandbox import SandboxPayments
from tollgate.billing.topup import PaymentDeclined, TopUps
from tollgate.errors import Conflict, InvalidRequest, NotFound
from tollgate.store import Store
from tollgate.store import accounts as account_repo
from tollgate.store import ledger as ledger_repo
from tollgate.store import payments as repo
from tollgate.store.migrate import migrate


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2031, 3, 14, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(name="store")
async def store_fixture(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await migrate(store)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(name="clock")
def clock_fixture() -> Clock:
    return Clock()


@pytest.fixture(name="account_id")
async def account_id_fixture(store: Store) -> AsyncIterator[str]:
    account = await account_repo.create_account(store, "top-up tests")
    yield account.id
    await assert_ledger_invariant(store, account.id)


@pytest.fixture(name="topups")
def topups_fixture(store: Store, clock: Clock) -> TopUps:
    return TopUps(store, SandboxPayments(), clock=clock)


async def assert_ledger_invariant(store: Store, account_id: str) -> int:
    account = await account_repo.get_account(store, account_id)
    assert account is not None
    assert await ledger_repo.ledger_sum(store, account_id) == account.balance_nanos
    return account.balance_nanos


async def balance_cents(store: Store, account_id: str) -> int:
    nanos = await assert_ledger_invariant(store, account_id)
    assert nanos % money.NANOS_PER_CENT == 0
    return nanos // money.NANOS_PER_CENT


async def add_card(topups: TopUps, account_id: str, number: str = "4242424242424242") -> None:
    await topups.save_payment_method(
        account_id, {"card_number": number, "exp_month": 12, "exp_year": 2099, "cvc": "123"}
    )


async def credits(store: Store, account_id: str) -> list[ledger_repo.LedgerEntry]:
    entries = await ledger_repo.list_entries(store, account_id, limit=1000)
    return [e for e in entries if e.kind in ("topup", "auto_topup")]


async def test_manual_topup_is_credited_once_with_the_intent_as_reference(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await add_card(topups, account_id)
    record = await topups.create_topup(account_id, 2500, idempotency_key="k-1")
    assert record.status == "succeeded" and record.payment_intent_id
    assert (record.brand, record.last4) == ("visa", "4242")
    [entry] = await credits(store, account_id)
    assert (entry.kind, entry.reference) == ("topup", record.payment_intent_id)
    assert entry.amount_nanos == money.from_cents(2500) and entry.id == record.ledger_entry_id
    assert "simulated, no money moved" in entry.note
    assert await balance_cents(store, account_id) == 2500


async def test_replaying_an_idempotency_key_returns_the_same_topup_and_credits_once(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await add_card(topups, account_id)
    first = await topups.create_topup(account_id, 1000, idempotency_key="same")
    for _ in range(3):
        again = await topups.create_topup(account_id, 1000, idempotency_key="same")
        assert (again.id, again.payment_intent_id) == (first.id, first.payment_intent_id)
    other = await topups.create_topup(account_id, 1000, idempotency_key="other")
    assert other.payment_intent_id != first.payment_intent_id
    assert len(await credits(store, account_id)) == 2
    assert await balance_cents(store, account_id) == 2000


async def test_concurrent_requests_with_one_key_credit_once(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await add_card(topups, account_id)
    results = await asyncio.gather(
        *(topups.create_topup(account_id, 1500, idempotency_key="race") for _ in range(20)),
        return_exceptions=True,
    )
    done = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    assert done and all(isinstance(e, Conflict) and e.code == "topup_in_progress" for e in errors)
    assert len({r.payment_intent_id for r in done}) == 1
    replay = await topups.create_topup(account_id, 1500, idempotency_key="race")
    assert replay.payment_intent_id == done[0].payment_intent_id
    assert len(await credits(store, account_id)) == 1
    assert await balance_cents(store, account_id) == 1500


async def test_a_key_reused_for_another_amount_is_a_conflict(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await add_card(topups, account_id)
    await topups.create_topup(account_id, 1000, idempotency_key="k")
    with pytest.raises(Conflict) as caught:
        await topups.create_topup(account_id, 2000, idempotency_key="k")
    assert caught.value.code == "idempotency_key_reused"
    assert await balance_cents(store, account_id) == 1000


@pytest.mark.parametrize(
    ("number", "code"),
    [
        ("4000000000000002", "generic_decline"),
        ("4000000000009995", "insufficient_funds"),
        ("4000000000000341", "generic_decline"),
    ],
)
async def test_a_declined_card_is_402_credits_nothing_and_replays_the_decline(
    store: Store, topups: TopUps, account_id: str, number: str, code: str
) -> None:
    await add_card(topups, account_id, number)
    for _ in range(2):
        with pytest.raises(PaymentDeclined) as caught:
            await topups.create_topup(account_id, 1000, idempotency_key="declined")
        assert (caught.value.status, caught.value.code) == (402, code)
    [record], _ = await repo.list_topups(store, account_id, kind=None, offset=0, limit=10)
    assert (record.status, record.error_code) == ("failed", code)
    assert await credits(store, account_id) == []
    assert await balance_cents(store, account_id) == 0


async def test_authentication_required_stays_pending_and_is_not_credited(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await add_card(topups, account_id, "4000002500003155")
    record = await topups.create_topup(account_id, 1000)
    assert record.status == "requires_action" and record.client_secret
    assert record.payment_intent_id is not None
    status = await topups.topup_status(account_id, record.payment_intent_id)
    assert status.status == "requires_action"
    assert await balance_cents(store, account_id) == 0


async def test_the_fee_is_charged_on_top_and_only_the_amount_is_credited(
    store: Store, clock: Clock, account_id: str
) -> None:
    topups = TopUps(store, SandboxPayments(), fee_percent=Decimal("5"), clock=clock)
    await add_card(topups, account_id)
    record = await topups.create_topup(account_id, 2500)
    assert (record.amount_cents, record.fee_cents, record.charge_cents) == (2500, 125, 2625)
    odd = await topups.create_topup(account_id, 1010)  # 50.5 cents of fee: half up
    assert (odd.fee_cents, odd.charge_cents) == (51, 1061)
    assert await balance_cents(store, account_id) == 3510


async def test_status_of_an_unknown_or_foreign_intent_is_404(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await add_card(topups, account_id)
    record = await topups.create_topup(account_id, 1000)
    assert record.payment_intent_id is not None
    assert (await topups.topup_status(account_id, record.payment_intent_id)).status == "succeeded"
    with pytest.raises(NotFound):
        await topups.topup_status(account_id, "pi_unknown")
    other = await account_repo.create_account(store, "other")
    with pytest.raises(NotFound):
        await topups.topup_status(other.id, record.payment_intent_id)


async def test_no_payment_method_is_a_400_and_writes_nothing(
    store: Store, topups: TopUps, account_id: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await topups.create_topup(account_id, 1000, idempotency_key="k")
    assert caught.value.code == "payment_method_required"
    assert await repo.list_topups(store, account_id, kind=None, offset=0, limit=10) == ([], 0)


async def test_an_attempt_left_by_a_dead_process_is_resumed_with_its_key(
    store: Store, topups: TopUps, clock: Clock, account_id: str
) -> None:
    await add_card(topups, account_id)
    profile = await topups.profile(account_id)
    assert profile is not None
    await repo.claim_topup(  # a process claimed the key, then died before charging
        store,
        now=clock(),
        id="d" * 32,
        account_id=account_id,
        kind="manual",
        provider="sandbox",
        idempotency_key="crashed",
        amount_cents=1000,
        fee_cents=0,
        charge_cents=1000,
        payment_method_id=profile.payment_method_id,
        brand="visa",
        last4="4242",
    )
    with pytest.raises(Conflict):  # still fresh: it may be running
        await topups.create_topup(account_id, 1000, idempotency_key="crashed")
    clock.advance(seconds=31)
    resumed = await topups.create_topup(account_id, 1000, idempotency_key="crashed")
    assert resumed.id == "d" * 32 and resumed.status == "succeeded"
    again = await topups.create_topup(account_id, 1000, idempotency_key="crashed")
    assert again.payment_intent_id == resumed.payment_intent_id
    assert await balance_cents(store, account_id) == 1000


async def test_replacing_and_removing_the_payment_method(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await add_card(topups, account_id)
    await add_card(topups, account_id, "5555555555554444")
    profile = await topups.profile(account_id)
    assert profile is not None and (profile.brand, profile.last4) == ("mastercard", "4444")
    assert await topups.remove_payment_method(account_id) is True
    assert await topups.remove_payment_method(account_id) is False
    profile = await topups.profile(account_id)
    assert profile is not None and profile.payment_method_id is None
