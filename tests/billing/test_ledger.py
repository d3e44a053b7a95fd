"""Holds, settlements and spending limits on both engines, invariants checked after every step."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from tollgate.billing.ledger import Ledger, check_invariants
from tollgate.billing.limits import LimitSpec, account_key
from tollgate.billing.windows import Window
from tollgate.errors import Conflict, InsufficientCredits, NotFound, SpendLimitExceeded
from tollgate.store import Store
from tollgate.store import accounts as account_repo
from tollgate.store import ledger as ledger_repo
from tollgate.store import limits as limits_repo
from tollgate.store.migrate import migrate

START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)  # a Sunday


class FakeClock:
    """An injected clock: tests move time; nothing sleeps."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Env:
    store: Store
    clock: FakeClock
    ledger: Ledger
    account_id: str

    async def check(self) -> None:
        await check_invariants(self.store, self.account_id)

    async def balance(self) -> tuple[int, int]:
        found = await account_repo.get_account(self.store, self.account_id)
        assert found is not None
        return found.balance_nanos, found.held_nanos


async def new_account(store: Store, grant_nanos: int) -> str:
    account = await account_repo.create_account(store, "billing test")
    if grant_nanos:
        await ledger_repo.append_entry(store, account.id, kind="grant", amount_nanos=grant_nanos)
    return account.id


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    store = Store(database_url)
    await migrate(store)
    clock = FakeClock()
    try:
        yield Env(store, clock, Ledger(store, clock), await new_account(store, 1_000))
    finally:
        await store.close()


def daily(account_id: str, limit: int) -> LimitSpec:
    return LimitSpec(account_key(account_id), limit, Window.calendar("day"), "account daily")


# --- arithmetic -----------------------------------------------------------------------------------


async def test_hold_then_settle_charges_the_actual_and_releases_the_rest(env: Env) -> None:
    hold = await env.ledger.hold(env.account_id, "req-1", 300, model="openai/gpt-4o")
    await env.check()
    assert (hold.amount_nanos, hold.state, hold.forwarded_at) == (300, "open", None)
    assert hold.expires_at == START + timedelta(minutes=15)
    assert await env.balance() == (1_000, 300)
    assert await env.ledger.available(env.account_id) == 700

    result = await env.ledger.settle(hold, 120, note="gpt-4o 10 in / 5 out")
    await env.check()
    assert (result.state, result.charged_nanos, result.held_nanos) == ("settled", 120, 300)
    assert (result.overshoot_nanos, result.balance_after_nanos, result.replayed) == (0, 880, False)
    assert await env.balance() == (880, 0)
    [entry, _grant] = await ledger_repo.list_entries(env.store, env.account_id)
    assert (entry.kind, entry.amount_nanos, entry.balance_after_nanos) == ("usage", -120, 880)
    assert (entry.id, entry.reference, entry.note) == (
        result.ledger_entry_id,
        f"hold:{hold.id}",
        "gpt-4o 10 in / 5 out",
    )


async def test_a_second_settle_or_release_returns_the_first_result(env: Env) -> None:
    hold = await env.ledger.hold(env.account_id, "req-1", 300)
    first = await env.ledger.settle(hold, 100, estimated=True)
    again = await env.ledger.settle(hold, 250)
    released = await env.ledger.release(hold)
    await env.check()
    assert again == released
    assert again.replayed and not first.replayed
    assert again.charged_nanos == 100 and again.estimated
    assert again.balance_after_nanos == first.balance_after_nanos == 900
    assert await env.balance() == (900, 0)
    assert len(await ledger_repo.list_entries(env.store, env.account_id)) == 2


async def test_release_charges_nothing_and_writes_no_entry(env: Env) -> None:
    hold = await env.ledger.hold(env.account_id, "req-1", 300)
    result = await env.ledger.release(hold)
    await env.check()
    assert (result.state, result.charged_nanos, result.ledger_entry_id) == ("released", 0, None)
    assert result.balance_after_nanos == 1_000
    assert await env.balance() == (1_000, 0)
    assert len(await ledger_repo.list_entries(env.store, env.account_id)) == 1
    assert (await env.ledger.settle(hold, 50)).state == "released"  # a late settle: no-op
    await env.check()


async def test_a_zero_charge_settles_without_a_ledger_entry(env: Env) -> None:
    hold = await env.ledger.hold(env.account_id, "req-1", 300)
    result = await env.ledger.settle(hold, 0)
    await env.check()
    assert (result.state, result.charged_nanos, result.ledger_entry_id) == ("settled", 0, None)
    assert await env.balance() == (1_000, 0)
    assert len(await ledger_repo.list_entries(env.store, env.account_id)) == 1


async def test_usage_beyond_the_hold_is_charged_in_full_and_flagged(env: Env) -> None:
    hold = await env.ledger.hold(env.account_id, "req-1", 1_000)
    result = await env.ledger.settle(hold, 1_250)
    await env.check()
    assert (result.charged_nanos, result.overshoot_nanos, result.balance_after_nanos) == (
        1_250,
        250,
        -250,
    )
    assert await env.ledger.available(env.account_id) == -250
    with pytest.raises(InsufficientCredits):  # a negative balance admits nothing, not even 0
        await env.ledger.hold(env.account_id, "req-2", 0)
    await env.check()


async def test_insufficient_credits_says_needed_and_available(env: Env) -> None:
    await env.ledger.hold(env.account_id, "req-1", 600)
    with pytest.raises(InsufficientCredits) as caught:
        await env.ledger.hold(env.account_id, "req-2", 500)
    error = caught.value
    assert (error.status, error.code) == (402, "insufficient_credits")
    assert (getattr(error, "needed_nanos"), getattr(error, "available_nanos")) == (500, 400)  # noqa: B009
    assert "$0.0000005" in error.message and "$0.0000004" in error.message
    await env.check()
    assert await env.balance() == (1_000, 600)
    await env.ledger.hold(env.account_id, "req-3", 400)  # exactly what is left
    await env.check()


async def test_a_repeated_request_id_returns_the_same_hold(env: Env) -> None:
    first = await env.ledger.hold(env.account_id, "req-1", 300)
    assert await env.ledger.hold(env.account_id, "req-1", 300) == first
    with pytest.raises(Conflict):
        await env.ledger.hold(env.account_id, "req-1", 301)
    await env.check()
    assert await env.balance() == (1_000, 300)


async def test_bad_arguments_and_unknown_accounts(env: Env) -> None:
    for amount in (-1, True, 1.5):
        with pytest.raises(ValueError):
            await env.ledger.hold(env.account_id, "r", amount)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="recovery"):
        await env.ledger.hold(env.account_id, "r", 10, recovery_charge_nanos=11)
    with pytest.raises(NotFound):
        await env.ledger.hold("0" * 32, "r", 10)
    with pytest.raises(NotFound):
        await env.ledger.available("0" * 32)
    limit = daily(env.account_id, 100)
    with pytest.raises(ValueError, match="share a key"):
        await env.ledger.hold(env.account_id, "r", 10, limits=[limit, limit])
    with pytest.raises(ValueError, match="another account"):
        await env.ledger.hold(env.account_id, "r", 10, limits=[daily("b" * 32, 100)])
    hold = await env.ledger.hold(env.account_id, "r", 10)
    with pytest.raises(ValueError):
        await env.ledger.settle(hold, -5)
    await env.check()


async def test_mark_forwarded_records_the_first_time_only(env: Env) -> None:
    hold = await env.ledger.hold(env.account_id, "req-1", 300)
    forwarded = await env.ledger.mark_forwarded(hold)
    assert forwarded.forwarded_at == START
    env.clock.advance(seconds=5)
    assert (await env.ledger.mark_forwarded(hold)).forwarded_at == START
    await env.ledger.settle(hold, 10)
    assert (await env.ledger.mark_forwarded(hold)).state == "settled"


async def test_a_limits_only_hold_never_touches_credits(env: Env) -> None:
    limit = daily(env.account_id, 500)
    hold = await env.ledger.hold(env.account_id, "byok-1", 5_000, limits=[], uses_credits=False)
    assert await env.balance() == (1_000, 0)  # more than the balance, but BYOK
    await env.ledger.settle(hold, 4_000)
    await env.check()
    assert await env.balance() == (1_000, 0)
    byok = await env.ledger.hold(env.account_id, "byok-2", 300, limits=[limit], uses_credits=False)
    assert await env.ledger.spent(limit) == 300
    with pytest.raises(SpendLimitExceeded):
        await env.ledger.hold(env.account_id, "ub-1", 201, limits=[limit])
    await env.ledger.settle(byok, 100)
    await env.check()
    assert await env.ledger.spent(limit) == 100
    assert await env.balance() == (1_000, 0)


# --- spending limits ------------------------------------------------------------------------------


async def test_settle_and_release_correct_the_bucket(env: Env) -> None:
    limit = daily(env.account_id, 400)
    a = await env.ledger.hold(env.account_id, "a", 300, limits=[limit])
    assert await env.ledger.spent(limit) == 300
    await env.ledger.settle(a, 50)
    assert await env.ledger.spent(limit) == 50
    b = await env.ledger.hold(env.account_id, "b", 350, limits=[limit])  # fits now: 50 + 350
    await env.check()
    await env.ledger.release(b)
    assert await env.ledger.spent(limit) == 50
    c = await env.ledger.hold(env.account_id, "c", 100, limits=[limit])
    await env.ledger.settle(c, 400)  # overshoot: the bucket carries the real spend
    await env.check()
    assert await env.ledger.spent(limit) == 450
    with pytest.raises(SpendLimitExceeded):
        await env.ledger.hold(env.account_id, "d", 0, limits=[limit])


async def test_fixed_limit_refusal_carries_retry_after_and_reset(env: Env) -> None:
    limit = daily(env.account_id, 500)
    await env.ledger.hold(env.account_id, "a", 400, limits=[limit])
    with pytest.raises(SpendLimitExceeded) as caught:
        await env.ledger.hold(env.account_id, "b", 101, limits=[limit])
    error = caught.value
    assert (error.status, error.code) == (429, "spend_limit_exceeded")
    assert error.retry_after == 12 * 3600  # from 12:00 to midnight UTC
    assert error.reset_at == datetime(2026, 11, 30, tzinfo=UTC)
    assert error.headers["Retry-After"] == str(12 * 3600)
    assert error.limits == ("account daily",)
    assert "2026-11-30T00:00:00Z" in error.message and "$0.0000004 is spent" in error.message
    await env.check()
    assert await env.balance() == (1_000, 400)


async def test_sliding_limit_refusal_waits_for_old_spend_to_leave(env: Env) -> None:
    window = Window.sliding(3600)  # buckets of 60 s
    limit = LimitSpec(account_key(env.account_id), 300, window, "hourly")
    for i in range(3):
        hold = await env.ledger.hold(env.account_id, f"r{i}", 100, limits=[limit])
        await env.ledger.settle(hold, 100)
        env.clock.advance(minutes=10)
    # now 12:30; spend at 12:00, 12:10, 12:20; a 150 needs two to leave: at 13:10
    with pytest.raises(SpendLimitExceeded) as caught:
        await env.ledger.hold(env.account_id, "x", 150, limits=[limit])
    assert caught.value.retry_after == 40 * 60
    assert caught.value.reset_at == START + timedelta(minutes=70)
    env.clock.advance(minutes=40, seconds=-1)
    with pytest.raises(SpendLimitExceeded):
        await env.ledger.hold(env.account_id, "x", 150, limits=[limit])
    env.clock.advance(seconds=1)
    await env.ledger.hold(env.account_id, "x", 150, limits=[limit])
    await env.check()


async def test_multiple_limits_all_must_pass_and_none_is_applied_on_refusal(env: Env) -> None:
    roomy = daily(env.account_id, 10_000)
    tight = LimitSpec(f"gateway:{env.account_id}:gw:tight", 200, Window.fixed(600), "tight")
    await env.ledger.hold(env.account_id, "a", 150, gateway_id="gw", limits=[roomy, tight])
    with pytest.raises(SpendLimitExceeded) as caught:
        await env.ledger.hold(env.account_id, "b", 100, gateway_id="gw", limits=[roomy, tight])
    assert caught.value.limits == ("tight",)
    assert caught.value.retry_after == 600  # 12:00 is a multiple of 600 s from the epoch
    assert await env.ledger.spent(roomy) == 150 and await env.ledger.spent(tight) == 150
    assert await env.balance() == (1_000, 150)
    with pytest.raises(InsufficientCredits):  # credits are checked first
        await env.ledger.hold(env.account_id, "c", 900, limits=[roomy, tight])
    await env.check()


async def test_retry_after_is_the_latest_of_several_refusals(env: Env) -> None:
    day = daily(env.account_id, 100)
    ten_min = LimitSpec(f"gateway:{env.account_id}:gw:r", 100, Window.fixed(600), "ten minutes")
    await env.ledger.hold(env.account_id, "a", 100, limits=[day, ten_min])
    with pytest.raises(SpendLimitExceeded) as caught:
        await env.ledger.hold(env.account_id, "b", 1, limits=[day, ten_min])
    assert set(caught.value.limits) == {"account daily", "ten minutes"}
    assert caught.value.retry_after == 12 * 3600


async def test_an_amount_above_the_limit_itself_says_so(env: Env) -> None:
    with pytest.raises(SpendLimitExceeded) as caught:
        await env.ledger.hold(env.account_id, "a", 600, limits=[daily(env.account_id, 500)])
    assert "lower max_tokens" in caught.value.message


@pytest.mark.parametrize(
    ("window", "before", "after"),
    [
        (Window.calendar("day"), "2026-12-31T23:59:59.999", "2027-01-01T00:00:00"),
        (Window.calendar("week"), "2026-11-29T23:59:59", "2026-11-30T00:00:00"),  # Sun -> Mon
        (Window.calendar("month"), "2026-12-31T23:59:59", "2027-01-01T00:00:00"),  # Dec -> Jan
        (Window.calendar("month"), "2028-02-29T23:59:59", "2028-03-01T00:00:00"),  # leap Feb
        (Window.fixed(3600), "2026-11-29T12:59:59", "2026-11-29T13:00:00"),
    ],
)
async def test_fixed_windows_roll_at_the_boundary(
    env: Env, window: Window, before: str, after: str
) -> None:
    limit = LimitSpec(account_key(env.account_id), 100, window, "limit")
    env.clock.now = datetime.fromisoformat(before).replace(tzinfo=UTC)
    early = await env.ledger.hold(env.account_id, "a", 100, limits=[limit])
    with pytest.raises(SpendLimitExceeded) as caught:
        await env.ledger.hold(env.account_id, "b", 1, limits=[limit])
    assert caught.value.reset_at == datetime.fromisoformat(after).replace(tzinfo=UTC)
    env.clock.now = caught.value.reset_at
    await env.ledger.hold(env.account_id, "b", 100, limits=[limit])
    # A hold from the old window settles into the old window's bucket.
    await env.ledger.settle(early, 40)
    assert await env.ledger.spent(limit) == 100
    await env.check()


async def test_changing_the_window_keeps_the_spend_counted(env: Env) -> None:
    key = account_key(env.account_id)
    hold = await env.ledger.hold(env.account_id, "a", 100, limits=[daily(env.account_id, 1_000)])
    await env.ledger.settle(hold, 100)
    for window in (Window.calendar("week"), Window.calendar("month"), Window.sliding(86_400)):
        assert await env.ledger.spent(LimitSpec(key, 1_000, window, "x")) == 100


async def test_account_limit_config_round_trips(env: Env) -> None:
    assert await limits_repo.get_account_limit(env.store, env.account_id) is None
    first = await limits_repo.set_account_limit(env.store, env.account_id, 500, "daily", "fixed")
    assert (first.amount_nanos, first.duration, first.strategy) == (500, "daily", "fixed")
    second = await limits_repo.set_account_limit(
        env.store, env.account_id, 900, "monthly", "sliding"
    )
    assert second.created_at == first.created_at and second.amount_nanos == 900
    assert await limits_repo.get_account_limit(env.store, env.account_id) == second
    assert await limits_repo.delete_account_limit(env.store, env.account_id) is True
    assert await limits_repo.delete_account_limit(env.store, env.account_id) is False
    assert await limits_repo.get_account_limit(env.store, env.account_id) is None
    for bad in ((0, "daily", "fixed"), (1, "hourly", "fixed"), (1, "daily", "rolling")):
        with pytest.raises(ValueError):
            await limits_repo.set_account_limit(env.store, env.account_id, *bad)
    with pytest.raises(ledger_repo.AccountMissing):
        await limits_repo.set_account_limit(env.store, "0" * 32, 1, "daily", "fixed")


async def test_a_hold_that_does_not_match_the_stored_one_is_refused(env: Env) -> None:
    hold = await env.ledger.hold(env.account_id, "req-1", 300, limits=[daily(env.account_id, 900)])
    for forged in (
        replace(hold, amount_nanos=100),
        replace(hold, buckets=()),
        replace(hold, uses_credits=False),
    ):
        with pytest.raises(ValueError, match="does not match"):
            await env.ledger.settle(forged, 50)
        await env.check()
    with pytest.raises(ValueError, match="does not match"):
        await env.ledger.settle(replace(hold, amount_nanos=5_000), 50)  # held would go < 0
    assert await env.balance() == (1_000, 300)
    assert (await env.ledger.settle(hold, 50)).charged_nanos == 50
    await env.check()
