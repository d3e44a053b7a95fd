"""Auto top-up on SQLite and PostgreSQL: one charge per threshold crossing under concurrency (one
process and several), re-arming, failures recorded and disabled after 3, the monthly cap, a
provider outage resumed with the same idempotency key, and the background scheduling."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from tests.billing.test_topup import (  # the *_fixture names are fixtures
    Clock,
    account_id_fixture,  # noqa: F401
    add_card,
    balance_cents,
    clock_fixture,  # noqa: F401
    credits,
    store_fixture,  # noqa: F401
    topups_fixture,  # noqa: F401
)
from tollgate import money
from tollgate.billing.payments import Charge, PaymentProviderError
from tollgate.billing.payments.sandbox import SandboxPayments
from tollgate.billing.topup import TopUps
from tollgate.store import Store
from tollgate.store import ledger as ledger_repo


async def set_balance_cents(store: Store, account_id: str, cents: int) -> int:
    """Move the balance to `cents` with a grant or a usage entry; returns the balance in nanos."""
    current = await balance_cents(store, account_id)
    if cents != current:
        kind = "grant" if cents > current else "usage"
        await ledger_repo.append_entry(
            store, account_id, kind=kind, amount_nanos=money.from_cents(cents - current)
        )
    return money.from_cents(cents)


async def configure(topups: TopUps, account_id: str, **extra: Any) -> None:
    await topups.set_auto_config(
        account_id, threshold_cents=extra.pop("threshold", 1000), amount_cents=2000, **extra
    )


async def test_many_concurrent_calls_charge_once_per_crossing(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await add_card(topups, account_id)
    await configure(topups, account_id)
    balance = await set_balance_cents(store, account_id, 400)
    outcomes = await asyncio.gather(
        *(topups.maybe_auto_topup(account_id, balance) for _ in range(50))
    )
    done = [o for o in outcomes if o is not None]
    assert [o.status for o in done] == ["succeeded"]
    [entry] = await credits(store, account_id)
    assert entry.kind == "auto_topup" and entry.amount_nanos == money.from_cents(2000)
    assert await balance_cents(store, account_id) == 2400
    # More calls reporting the old (stale) balance charge nothing: the crossing is spent.
    assert await topups.maybe_auto_topup(account_id, balance) is None
    config = await topups.auto_config(account_id)
    assert config is not None and config.in_flight_topup_id is None and not config.armed


async def test_concurrent_calls_from_several_processes_charge_once(
    database_url: str, store: Store, clock: Clock, account_id: str
) -> None:
    """Separate stores (engines) and services stand in for separate processes."""
    stores = [Store(database_url) for _ in range(4)]
    services = [TopUps(s, SandboxPayments(), clock=clock) for s in stores]
    try:
        await add_card(services[0], account_id)
        await configure(services[0], account_id)
        balance = await set_balance_cents(store, account_id, 100)
        outcomes = await asyncio.gather(
            *(services[i % 4].maybe_auto_topup(account_id, balance) for i in range(40))
        )
        assert [o.status for o in outcomes if o is not None] == ["succeeded"]
        assert len(await credits(store, account_id)) == 1
        assert await balance_cents(store, account_id) == 2100
    finally:
        for s in stores:
            await s.close()


async def test_a_new_crossing_after_the_balance_rose_charges_again(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await add_card(topups, account_id)
    await configure(topups, account_id)
    balance = await set_balance_cents(store, account_id, 900)
    assert (await topups.maybe_auto_topup(account_id, balance)).status == "succeeded"  # type: ignore[union-attr]
    # Still below after usage, without the balance having been seen above: no second charge.
    balance = await set_balance_cents(store, account_id, 800)
    assert await topups.maybe_auto_topup(account_id, balance) is None
    # A settle that sees the balance at or above the threshold arms the next crossing.
    balance = await set_balance_cents(store, account_id, 1500)
    assert await topups.maybe_auto_topup(account_id, balance) is None
    balance = await set_balance_cents(store, account_id, 999)
    assert (await topups.maybe_auto_topup(account_id, balance)).status == "succeeded"  # type: ignore[union-attr]
    assert len(await credits(store, account_id)) == 2
    assert await balance_cents(store, account_id) == 2999


async def test_nothing_happens_above_the_threshold_or_without_a_config(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await add_card(topups, account_id)
    balance = await set_balance_cents(store, account_id, 100)
    assert await topups.maybe_auto_topup(account_id, balance) is None  # no config
    await configure(topups, account_id)
    balance = await set_balance_cents(store, account_id, 1000)  # at the threshold: not below
    assert await topups.maybe_auto_topup(account_id, balance) is None
    await topups.delete_auto_config(account_id)
    assert await topups.maybe_auto_topup(account_id, 0) is None
    assert await credits(store, account_id) == []


async def test_failures_are_recorded_and_three_in_a_row_disable_it(
    store: Store, topups: TopUps, clock: Clock, account_id: str
) -> None:
    await add_card(topups, account_id, "4000000000000341")  # attaches, every charge declined
    await configure(topups, account_id)
    balance = await set_balance_cents(store, account_id, 300)
    for attempt in range(1, 4):
        outcome = await topups.maybe_auto_topup(account_id, balance)
        assert outcome is not None and outcome.status == "failed"
        config = await topups.auto_config(account_id)
        assert config is not None and config.consecutive_failures == attempt
        assert config.error and "generic_decline" in config.error
        assert config.last_failed_at == clock()
        assert config.enabled is (attempt < 3)
        # Backing off: a call right away does nothing.
        assert await topups.maybe_auto_topup(account_id, balance) is None
        clock.advance(seconds=61)
    config = await topups.auto_config(account_id)
    assert config is not None and config.disabled_reason
    assert "3 consecutive failed payments" in config.disabled_reason
    assert await topups.maybe_auto_topup(account_id, balance) is None
    assert await credits(store, account_id) == []
    assert await balance_cents(store, account_id) == 300
    # Setting the config again (after fixing the card) re-enables it and clears the record.
    await add_card(topups, account_id)
    await configure(topups, account_id)
    config = await topups.auto_config(account_id)
    assert config is not None and config.enabled and config.error is None
    assert (await topups.maybe_auto_topup(account_id, balance)).status == "succeeded"  # type: ignore[union-attr]


async def test_a_success_resets_the_failure_count(
    store: Store, topups: TopUps, clock: Clock, account_id: str
) -> None:
    await add_card(topups, account_id, "4000000000009995")
    await configure(topups, account_id)
    balance = await set_balance_cents(store, account_id, 0)
    assert (await topups.maybe_auto_topup(account_id, balance)).status == "failed"  # type: ignore[union-attr]
    await add_card(topups, account_id)
    clock.advance(minutes=2)
    assert (await topups.maybe_auto_topup(account_id, balance)).status == "succeeded"  # type: ignore[union-attr]
    config = await topups.auto_config(account_id)
    assert config is not None and config.consecutive_failures == 0 and config.error is None
    assert config.last_failed_at is not None  # kept: when it last failed


@pytest.mark.parametrize("number", ["4000002760003184", "4000008260003178"])
async def test_off_session_cards_needing_authentication_fail(
    store: Store, topups: TopUps, account_id: str, number: str
) -> None:
    await add_card(topups, account_id, number)
    await configure(topups, account_id)
    outcome = await topups.maybe_auto_topup(account_id, 0)
    assert outcome is not None and outcome.status == "failed"
    assert await balance_cents(store, account_id) == 0


async def test_cards_set_up_for_off_session_succeed(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await add_card(topups, account_id, "4000002500003155")
    await configure(topups, account_id)
    assert (await topups.maybe_auto_topup(account_id, 0)).status == "succeeded"  # type: ignore[union-attr]
    assert await balance_cents(store, account_id) == 2000


async def test_the_monthly_cap_defers_to_next_month(
    store: Store, topups: TopUps, clock: Clock, account_id: str
) -> None:
    await add_card(topups, account_id)
    await configure(topups, account_id, monthly_cap_cents=3000)
    balance = await set_balance_cents(store, account_id, 0)
    assert (await topups.maybe_auto_topup(account_id, balance)).status == "succeeded"  # type: ignore[union-attr]
    await set_balance_cents(store, account_id, 1500)
    assert await topups.maybe_auto_topup(account_id, money.from_cents(1500)) is None  # re-arm
    balance = await set_balance_cents(store, account_id, 0)
    capped = await topups.maybe_auto_topup(account_id, balance)
    assert capped is not None and capped.status == "capped"
    assert capped.error and "$30.00" in capped.error and "2031-04-01" in capped.error
    config = await topups.auto_config(account_id)
    assert config is not None and config.enabled and config.consecutive_failures == 0
    clock.advance(days=10)
    assert await topups.maybe_auto_topup(account_id, balance) is None  # still March
    clock.advance(days=8)  # April 1st
    assert (await topups.maybe_auto_topup(account_id, balance)).status == "succeeded"  # type: ignore[union-attr]
    assert len(await credits(store, account_id)) == 2


class FlakyProvider(SandboxPayments):
    """Charges, then loses the answer, `failures` times (a timeout after the charge)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls: list[str] = []

    async def charge(self, **kwargs: Any) -> Charge:
        self.calls.append(kwargs["idempotency_key"])
        result = await super().charge(**kwargs)
        if self.failures:
            self.failures -= 1
            raise PaymentProviderError("simulated timeout")
        return result


async def test_a_lost_provider_answer_is_resumed_with_the_same_key(
    store: Store, clock: Clock, account_id: str
) -> None:
    provider = FlakyProvider(failures=1)
    topups = TopUps(store, provider, clock=clock)
    await add_card(topups, account_id)
    await configure(topups, account_id)
    first = await topups.maybe_auto_topup(account_id, 0)
    assert first is not None and first.status == "retry_later"
    assert await topups.maybe_auto_topup(account_id, 0) is None  # the marker is held
    clock.advance(minutes=11)  # past stale_after: taken over and resumed
    resumed = await topups.maybe_auto_topup(account_id, 0)
    assert resumed is not None and resumed.status == "succeeded"
    assert len(provider.calls) == 2 and len(set(provider.calls)) == 1  # one key: one charge
    assert len(await credits(store, account_id)) == 1
    assert await balance_cents(store, account_id) == 2000


class BrokenProvider(SandboxPayments):
    async def charge(self, **kwargs: Any) -> Charge:
        raise RuntimeError("bug")

    async def save_payment_method(
        self, account_id: str, customer_id: str, details: Mapping[str, Any]
    ) -> Any:
        return await SandboxPayments().save_payment_method(account_id, customer_id, details)


async def test_an_unexpected_error_never_raises_into_the_caller(
    store: Store, clock: Clock, account_id: str
) -> None:
    topups = TopUps(store, BrokenProvider(), clock=clock)
    await add_card(topups, account_id)
    await configure(topups, account_id)
    outcome = await topups.maybe_auto_topup(account_id, 0)
    assert outcome is not None and outcome.status == "error" and "bug" in (outcome.error or "")


async def test_schedule_runs_in_the_background_and_skips_when_nothing_to_do(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await add_card(topups, account_id)
    await configure(topups, account_id)
    for _ in range(20):
        topups.schedule_auto_topup(account_id, 0)  # returns at once
    await topups.auto.drain()
    assert len(await credits(store, account_id)) == 1
    for _ in range(2):  # the first re-arms the next crossing, the second re-reads the config
        topups.schedule_auto_topup(account_id, money.from_cents(5000))
        await topups.auto.drain()
    # With a fresh cached config that shows nothing to do, no task is even started.
    topups.schedule_auto_topup(account_id, money.from_cents(5000))
    assert not topups.auto._tasks
    await topups.aclose()
    assert await balance_cents(store, account_id) == 2000


async def test_no_payment_method_counts_as_a_failure(
    store: Store, topups: TopUps, account_id: str
) -> None:
    await configure(topups, account_id)
    outcome = await topups.maybe_auto_topup(account_id, 0)
    assert outcome is not None and outcome.status == "failed"
    config = await topups.auto_config(account_id)
    assert config is not None and config.error and "payment method" in config.error
