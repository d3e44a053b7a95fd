"""Ledger maintenance on both engines: periodic recovery, and pruning that never changes what a
limit counts nor breaks an invariant. The clock is injected; the task's sleep is stepped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from tests.billing.test_ledger import START, FakeClock, new_account
from tollgate.app import create_app
from tollgate.billing.ledger import InvariantViolation, Ledger, RecoveryReport, check_invariants
from tollgate.billing.limits import LimitSpec, account_limit, gateway_limits, rule_key
from tollgate.billing.maintenance import (
    GRACE,
    Horizons,
    Maintenance,
    MaintenanceReport,
    run_maintenance,
)
from tollgate.billing.windows import epoch_seconds
from tollgate.errors import SpendLimitExceeded
from tollgate.gateway_config import default_gateway_config
from tollgate.settings import Settings
from tollgate.store import Store
from tollgate.store import gateways as gateway_repo
from tollgate.store import holds as holds_repo
from tollgate.store import ledger as ledger_repo
from tollgate.store import maintenance as store_maintenance
from tollgate.store.holds import Hold
from tollgate.store.migrate import migrate

RETENTION = timedelta(days=2)
ACCOUNT = "0123456789abcdef0123456789abcdef"
LONG_TTL = timedelta(days=400)  # an open hold that the recovery in each pass must not resolve


@dataclass(frozen=True)
class MonthlyLimit:
    amount_nanos: int = 10**9
    duration: str = "monthly"
    strategy: str = "sliding"


def spend_limits(*rules: dict[str, Any], enabled: bool = True) -> dict[str, Any]:
    return {"enabled": enabled, "rules": list(rules)}


def rule(rule_id: str, window: int, limit: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"id": rule_id, "limit": limit, "limitType": "cost", "window": window, **extra}


@dataclass
class Env:
    store: Store
    clock: FakeClock
    ledger: Ledger
    account_id: str

    async def gateway(self, spend: dict[str, Any], gateway_id: str = "gw") -> list[LimitSpec]:
        config = {**default_gateway_config(), "spend_limits": spend}
        if await gateway_repo.get_gateway(self.store, self.account_id, gateway_id) is None:
            await gateway_repo.insert_gateway(
                self.store, self.account_id, gateway_id, config, is_default=False
            )
        else:
            await gateway_repo.update_gateway(self.store, self.account_id, gateway_id, config)
        return gateway_limits(self.account_id, gateway_id, spend, model=None, provider=None)

    async def settled(self, name: str, amount: int, charge: int | None, **kwargs: Any) -> Hold:
        hold = await self.ledger.hold(self.account_id, name, amount, **kwargs)
        if charge is None:
            await self.ledger.release(hold)
        else:
            await self.ledger.settle(hold, charge)
        return hold

    async def run(self, at: timedelta) -> MaintenanceReport:
        """One pass at START + `at`; the invariants must hold after it."""
        self.clock.now = START + at
        report = await run_maintenance(self.ledger, retention=RETENTION)
        await self.check()
        return report

    async def check(self) -> Any:
        """The invariants, knowing holds resolved before the retention cutoff may be pruned."""
        cutoff = self.clock.now - RETENTION
        return await check_invariants(self.store, self.account_id, pruned_before=cutoff)

    async def buckets(self) -> dict[tuple[str, int], int]:
        return (await self.check()).buckets

    async def hold_ids(self) -> set[str]:
        return {hold.id for hold in (await self.check()).holds}


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    store = Store(database_url)
    await migrate(store)
    clock = FakeClock()
    try:
        yield Env(store, clock, Ledger(store, clock), await new_account(store, 10_000))
    finally:
        await store.close()


def pruned(deleted: int = 0, buckets: int = 0) -> tuple[int, int]:
    return deleted, buckets


def counts(report: MaintenanceReport) -> tuple[int, int]:
    return report.holds_deleted, report.buckets_deleted


# --- when a bucket is dead (pure) ------------------------------------------------------------


def test_horizons_come_from_the_longest_window_that_can_count_a_key() -> None:
    horizons = Horizons.of(
        [
            (ACCOUNT, "gw", spend_limits(rule("short", 60), rule("off", 7_200, enabled=False))),
            (ACCOUNT, "other", spend_limits(rule("short", 86_400), enabled=False)),
            (ACCOUNT, "none", None),
        ]
    )
    short = rule_key(ACCOUNT, "gw", "short", ())
    assert horizons.seconds(f"account:{ACCOUNT}") == 31 * 86_400  # with or without a limit
    assert horizons.seconds(short) == 60
    assert horizons.seconds(short + ":" + "ab" * 16) == 60  # a partition of the same rule
    assert horizons.seconds(rule_key(ACCOUNT, "gw", "off", ())) == 7_200  # disabled: still live
    assert horizons.seconds(rule_key(ACCOUNT, "other", "short", ())) == 86_400
    assert horizons.seconds(rule_key(ACCOUNT, "gw", "deleted", ())) == 0  # no rule counts it
    assert horizons.seconds(rule_key(ACCOUNT, "gw", "a/b:c", ())) == 0  # quoted: still a rule
    assert horizons.seconds("something:else") is None  # unknown shape: never dead
    assert horizons.seconds(f"account:{ACCOUNT}:extra") is None

    is_dead = horizons.dead_at(START)
    now = epoch_seconds(START)
    last_counted = now - 60 - int(GRACE.total_seconds()) + 1
    assert not is_dead(short, last_counted) and is_dead(short, last_counted - 1)
    assert not is_dead(f"account:{ACCOUNT}", now - 31 * 86_400 - 3_600 + 1)
    assert is_dead(f"account:{ACCOUNT}", now - 31 * 86_400 - 3_600)
    assert not is_dead("something:else", 0)


# --- pruning on the store --------------------------------------------------------------------


async def test_pruning_waits_for_retention_and_dead_buckets_and_keeps_the_invariants(
    env: Env,
) -> None:
    [minute] = await env.gateway(spend_limits(rule("minute", 60)))
    month = account_limit(env.account_id, MonthlyLimit())
    both = [month, minute]
    released = await env.settled("released", 300, None, limits=both)
    await env.settled("byok", 200, 150, limits=[minute], uses_credits=False)
    charged = await env.settled("charged", 400, 250, limits=both)
    zero = await env.settled("zero", 100, 0, limits=[month])
    await env.settled("no-limits", 100, 80)  # counts in no limit: pruned after retention
    still_open = await env.ledger.hold(env.account_id, "open", 500, limits=both, ttl=LONG_TTL)
    entries = await ledger_repo.list_entries(env.store, env.account_id)
    month_bucket = (month.key, epoch_seconds(START))
    minute_bucket = (minute.key, epoch_seconds(START))
    assert await env.buckets() == {month_bucket: 750, minute_bucket: 900}

    # Inside retention nothing goes, though the minute bucket has long stopped counting.
    assert counts(await env.run(timedelta(days=1))) == pruned()

    # Past retention: the BYOK hold, whose one bucket is dead (it leaves that bucket), and the
    # hold that counts in no limit at all.
    assert counts(await env.run(timedelta(days=3))) == pruned(deleted=2)
    assert await env.hold_ids() == {h.id for h in (released, charged, zero, still_open)}
    assert await env.buckets() == {month_bucket: 750, minute_bucket: 750}
    assert await env.ledger.spent(month) == 750  # the month still counts all of it

    # The monthly bucket is dead 31 days + grace on: the released, charged and zero-charge
    # holds go; the charged one's usage entry stays (the ledger is never pruned).
    assert counts(await env.run(timedelta(days=32))) == pruned(deleted=3)
    assert await env.hold_ids() == {still_open.id}
    assert await env.buckets() == {month_bucket: 500, minute_bucket: 500}  # the open hold's
    assert await holds_repo.get_hold(env.store, charged.id) is None
    assert await ledger_repo.list_entries(env.store, env.account_id) == entries  # untouched
    with pytest.raises(InvariantViolation, match="names no hold"):
        await check_invariants(env.store, env.account_id)  # told nothing was pruned: it says so

    # The open hold was never touched; it settles as usual, into its dead buckets.
    assert (await holds_repo.get_hold(env.store, still_open.id)) == still_open
    await env.ledger.settle(still_open, 420)
    assert await env.buckets() == {month_bucket: 420, minute_bucket: 420}
    entries = await ledger_repo.list_entries(env.store, env.account_id)
    assert counts(await env.run(timedelta(days=33))) == pruned()  # resolved a day ago
    # A hold is kept `retention` past both its resolution and its expiry (400 days here).
    assert counts(await env.run(timedelta(days=35))) == pruned()
    assert counts(await env.run(timedelta(days=403))) == pruned(deleted=1, buckets=2)
    assert await env.buckets() == {}
    assert await env.hold_ids() == set()

    assert await ledger_repo.list_entries(env.store, env.account_id) == entries
    assert counts(await env.run(timedelta(days=800))) == pruned()  # nothing left to do


async def test_a_bucket_a_live_rule_still_counts_is_kept_and_keeps_refusing(env: Env) -> None:
    [week] = await env.gateway(spend_limits(rule("week", 7 * 86_400, limit=0.000001)))
    await env.settled("spent", 600, 600, limits=[week], uses_credits=False)  # of 1,000 nanos

    assert counts(await env.run(timedelta(days=3))) == pruned()  # past retention, still counted
    assert await env.ledger.spent(week) == 600
    with pytest.raises(SpendLimitExceeded):
        await env.ledger.hold(env.account_id, "over", 500, limits=[week], uses_credits=False)

    assert counts(await env.run(timedelta(days=8))) == pruned(deleted=1, buckets=1)
    assert await env.buckets() == {}
    assert await env.ledger.spent(week) == 0


@pytest.mark.parametrize(
    ("change", "prunable"),
    [
        ("window shortened to 60 s", True),
        ("rule deleted", True),
        ("gateway deleted", True),
        ("rule disabled", False),
        ("spend limits disabled", False),
        ("window lengthened to 30 days", False),
    ],
)
async def test_the_horizon_follows_the_current_gateway_config(
    env: Env, change: str, prunable: bool
) -> None:
    [week] = await env.gateway(spend_limits(rule("week", 7 * 86_400)))
    await env.settled("spent", 600, 600, limits=[week], uses_credits=False)
    changed = {
        "window shortened to 60 s": spend_limits(rule("week", 60)),
        "rule deleted": spend_limits(rule("another", 7 * 86_400)),
        "gateway deleted": None,
        "rule disabled": spend_limits(rule("week", 7 * 86_400, enabled=False)),
        "spend limits disabled": spend_limits(rule("week", 7 * 86_400), enabled=False),
        "window lengthened to 30 days": spend_limits(rule("week", 30 * 86_400)),
    }[change]
    if changed is None:
        await gateway_repo.delete_gateway(env.store, env.account_id, "gw")
    else:
        await env.gateway(changed)

    report = await env.run(timedelta(days=3))  # past retention; inside the week
    assert counts(report) == (pruned(deleted=1, buckets=1) if prunable else pruned())
    assert await env.ledger.spent(week) == (0 if prunable else 600)


async def test_an_empty_bucket_that_fills_before_its_deletion_is_kept(env: Env) -> None:
    """The race a pass can meet: an open hold of nothing (a free request) names a dead, empty
    bucket; it settles between the pass listing that bucket and deleting it."""
    [minute] = await env.gateway(spend_limits(rule("minute", 60)))
    free = await env.ledger.hold(env.account_id, "free", 0, limits=[minute], ttl=LONG_TTL)
    env.clock.advance(days=3)
    is_dead = Horizons.of(await store_maintenance.spend_rules(env.store)).dead_at(env.clock.now)
    listed = await store_maintenance.zero_buckets(env.store, after=None, limit=10)
    assert listed == [(minute.key, epoch_seconds(START))] and is_dead(*listed[0])

    await env.ledger.settle(free, 5)  # usage beyond a zero hold: charged in full
    assert await store_maintenance.delete_zero_buckets(env.store, env.account_id, listed) == 0
    assert await env.buckets() == {listed[0]: 5}


async def test_a_pass_recovers_expired_holds_only(env: Env) -> None:
    forwarded = await env.ledger.hold(
        env.account_id, "sent", 500, recovery_charge_nanos=120, forwarded=True
    )
    await env.ledger.hold(env.account_id, "never-sent", 300)
    env.clock.advance(minutes=10)
    fresh = await env.ledger.hold(env.account_id, "fresh", 50, forwarded=True)

    report = await env.run(timedelta(minutes=16))
    assert report.recovered == RecoveryReport(
        released=1, settled=1, charged_nanos=120, already_resolved=0
    )
    late = await env.ledger.settle(forwarded, 480)  # the request's own settle, too late
    assert (late.replayed, late.charged_nanos, late.estimated) == (True, 120, True)
    assert (await holds_repo.get_hold(env.store, fresh.id)) == fresh  # not expired: still open
    again = await env.run(timedelta(minutes=17))
    assert again.recovered == RecoveryReport(0, 0, 0, 0)


async def test_passes_racing_from_several_processes_prune_each_hold_once(
    database_url: str,
) -> None:
    clock = FakeClock()
    stores = [Store(database_url) for _ in range(3)]
    try:
        await migrate(stores[0])
        account_id = await new_account(stores[0], 10**9)
        ledger = Ledger(stores[0], clock)
        [minute] = gateway_limits(
            account_id, "gw", spend_limits(rule("minute", 60)), model=None, provider=None
        )
        for i in range(30):
            hold = await ledger.hold(account_id, f"r{i}", 1_000, limits=[minute])
            if i % 3:
                await (ledger.release(hold) if i % 3 == 1 else ledger.settle(hold, 0))
            else:
                await ledger.settle(hold, 10)  # charged: deleted too, its usage entry stays
        clock.advance(days=3)
        reports = await asyncio.gather(
            *(run_maintenance(Ledger(s, clock), retention=RETENTION) for s in stores * 2)
        )
        # Each hold pruned once: a second subtraction would leave the bucket negative.
        assert sum(r.holds_deleted for r in reports) == 30
        assert sum(r.buckets_deleted for r in reports) == 1
        cutoff = clock.now - RETENTION
        snapshot = await check_invariants(stores[0], account_id, pruned_before=cutoff)
        assert snapshot.buckets == {}
        assert snapshot.holds == ()
        usage = [e for e in snapshot.entries if e.kind == "usage"]
        assert len(usage) == 10 and all(e.amount_nanos == -10 for e in usage)  # each kept once
        assert snapshot.balance_nanos == 10**9 - 100
    finally:
        for store in stores:
            await store.close()


# --- the task --------------------------------------------------------------------------------


class Steps:
    """The task's injected sleep: each `step()` lets exactly one pass run, then waits for the
    task to be back asleep (so the pass is over)."""

    def __init__(self) -> None:
        self.asleep: asyncio.Queue[float] = asyncio.Queue()
        self.wake: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        await self.asleep.put(seconds)
        await self.wake.get()

    async def step(self) -> None:
        await self.wake.put(None)
        await asyncio.wait_for(self.asleep.get(), timeout=30)


async def test_the_task_survives_a_database_error_and_stops_cleanly(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(database_url)  # not migrated yet: every query fails
    steps = Steps()
    clock = FakeClock()
    maintenance = Maintenance(
        Ledger(store, clock), interval=300, retention=RETENTION, sleep=steps.sleep
    ).start()
    try:
        assert await asyncio.wait_for(steps.asleep.get(), timeout=30) == 300
        with caplog.at_level(logging.INFO, logger="tollgate.billing.maintenance"):
            await steps.step()
            assert maintenance.failures == 1
            assert "ledger maintenance failed" in caplog.text

            await migrate(store)  # the database is back
            account_id = await new_account(store, 1_000)
            hold = await Ledger(store, clock).hold(account_id, "r", 100, forwarded=True)
            clock.advance(hours=1)
            await steps.step()
            assert maintenance.failures == 1
            assert "recovered 1 holds (0 released, 1 settled for 100 nanos" in caplog.text
        resolved = await holds_repo.get_hold(store, hold.id)
        assert resolved is not None and resolved.state == "settled"
        await check_invariants(store, account_id)
    finally:
        await maintenance.aclose()
        await maintenance.aclose()  # twice: harmless
        await store.close()
    assert _maintenance_tasks() == []


def _maintenance_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "tollgate-ledger-maintenance"]


@pytest.mark.parametrize(("interval", "runs"), [("300", True), ("0", False)])
async def test_the_app_lifespan_starts_and_stops_the_task(
    make_settings: Callable[..., Settings], interval: str, runs: bool
) -> None:
    settings = make_settings(
        {
            "TOLLGATE_SANDBOX__ENABLED": "false",
            "TOLLGATE_BILLING__MAINTENANCE_INTERVAL_SECONDS": interval,
        }
    )
    async with create_app(settings):
        assert len(_maintenance_tasks()) == (1 if runs else 0)
    assert _maintenance_tasks() == []
