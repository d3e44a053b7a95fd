"""No overspend under concurrency, on both engines, from one store and from several (processes).

A balance (or a spending limit) worth exactly N holds, and 10×N concurrent `hold()` calls: exactly
N are admitted. Then everything settles concurrently: the ledger sums to the balance, holds drain
to zero, the balance stays ≥ 0, and no limit is passed. Seeded, so a failure names its seed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from tests.billing.test_ledger import FakeClock, new_account
from tollgate.billing.ledger import Hold, Ledger, check_invariants
from tollgate.billing.limits import LimitSpec, account_key
from tollgate.billing.windows import Window
from tollgate.errors import InsufficientCredits, SpendLimitExceeded
from tollgate.store import Store
from tollgate.store import accounts as account_repo
from tollgate.store.migrate import migrate

N = 10
SEEDS = [11, 22, 33]


IN_FLIGHT = 10  # per store: PostgreSQL's pool size, so a test never opens overflow connections


class Group:
    """Ledgers on separate `Store`s (separate engines and pools: stand-ins for processes)."""

    def __init__(self, ledgers: list[Ledger]) -> None:
        self.ledgers = ledgers
        self._slots = [asyncio.Semaphore(IN_FLIGHT) for _ in ledgers]

    def __getitem__(self, i: int) -> Ledger:
        return self.ledgers[i]

    def __len__(self) -> int:
        return len(self.ledgers)

    @asynccontextmanager
    async def pick(self, i: int) -> AsyncIterator[Ledger]:
        """Ledger `i mod n`, with at most IN_FLIGHT calls in flight on its store (the server's
        connection limit is shared with other test runs)."""
        async with self._slots[i % len(self.ledgers)]:
            yield self.ledgers[i % len(self.ledgers)]


@asynccontextmanager
async def ledgers(database_url: str, count: int, clock: FakeClock) -> AsyncIterator[Group]:
    stores = [Store(database_url) for _ in range(count)]
    try:
        await migrate(stores[0])
        yield Group([Ledger(store, clock) for store in stores])
    finally:
        for store in stores:
            await store.close()


async def race_holds(
    group: Group,
    account_id: str,
    amount: int,
    rng: random.Random,
    limits: Callable[[str], list[LimitSpec]] = lambda _: [],
) -> tuple[list[Hold], list[Exception]]:
    async def attempt(i: int) -> Hold | Exception:
        async with group.pick(i) as ledger:
            try:
                return await ledger.hold(account_id, f"req-{i}", amount, limits=limits(account_id))
            except (InsufficientCredits, SpendLimitExceeded) as refused:
                return refused

    order = list(range(10 * N))
    rng.shuffle(order)
    results = await asyncio.gather(*(attempt(i) for i in order))
    admitted = [r for r in results if isinstance(r, Hold)]
    refused = [r for r in results if isinstance(r, Exception)]
    return admitted, refused


async def settle_all(
    group: Group, admitted: list[Hold], rng: random.Random, *, overshoot: bool = False
) -> int:
    """Settle (or release, one in five) every hold concurrently; returns the total charged."""
    actuals = [
        None if rng.random() < 0.2 else rng.randint(0, h.amount_nanos * (2 if overshoot else 1))
        for h in admitted
    ]

    async def resolve(i: int) -> int:
        actual = actuals[i]
        async with group.pick(i) as ledger:
            if actual is None:
                return (await ledger.release(admitted[i])).charged_nanos
            return (await ledger.settle(admitted[i], actual)).charged_nanos

    charged = await asyncio.gather(*(resolve(i) for i in range(len(admitted))))
    assert sum(charged) == sum(a or 0 for a in actuals)
    return sum(charged)


@pytest.mark.parametrize("processes", [1, 3])
@pytest.mark.parametrize("seed", SEEDS)
async def test_a_balance_worth_n_holds_admits_exactly_n(
    database_url: str, seed: int, processes: int
) -> None:
    rng = random.Random(seed)
    amount = rng.randint(1, 10**9)
    clock = FakeClock()
    async with ledgers(database_url, processes, clock) as group:
        store = group[0].store
        account_id = await new_account(store, N * amount)
        admitted, refused = await race_holds(group, account_id, amount, rng)
        assert len(admitted) == N, f"seed {seed}"
        assert all(isinstance(r, InsufficientCredits) for r in refused)
        await check_invariants(store, account_id)
        assert await group[0].available(account_id) == 0

        charged = await settle_all(group, admitted, rng)
        await check_invariants(store, account_id)
        found = await account_repo.get_account(store, account_id)
        assert found is not None
        assert (found.balance_nanos, found.held_nanos) == (N * amount - charged, 0)
        assert found.balance_nanos >= 0


def account_fixed(account_id: str, limit: int) -> LimitSpec:
    return LimitSpec(account_key(account_id), limit, Window.calendar("month"), "monthly")


def account_sliding(account_id: str, limit: int) -> LimitSpec:
    return LimitSpec(account_key(account_id), limit, Window.sliding(86_400), "24 h")


def gateway_rule(account_id: str, limit: int) -> LimitSpec:
    return LimitSpec(f"gateway:{account_id}:gw:rule-1", limit, Window.fixed(3600), "rule-1")


@pytest.mark.parametrize("make_limit", [account_fixed, account_sliding, gateway_rule])
@pytest.mark.parametrize("processes", [1, 3])
@pytest.mark.parametrize("seed", SEEDS[:2])
async def test_a_spending_limit_worth_n_holds_admits_exactly_n(
    database_url: str,
    seed: int,
    processes: int,
    make_limit: Callable[[str, int], LimitSpec],
) -> None:
    rng = random.Random(seed)
    amount = rng.randint(1, 10**9)
    clock = FakeClock()
    async with ledgers(database_url, processes, clock) as group:
        store = group[0].store
        account_id = await new_account(store, 100 * N * amount)  # credits are not the limit
        roomy = LimitSpec(f"gateway:{account_id}:gw:roomy", 10**18, Window.sliding(60), "roomy")

        def limits(account: str) -> list[LimitSpec]:
            return [make_limit(account, N * amount), roomy]

        admitted, refused = await race_holds(group, account_id, amount, rng, limits)
        assert len(admitted) == N, f"seed {seed}"
        assert all(isinstance(r, SpendLimitExceeded) for r in refused)
        assert all(r.retry_after >= 1 for r in refused if isinstance(r, SpendLimitExceeded))
        await check_invariants(store, account_id)
        limit = make_limit(account_id, N * amount)
        assert await group[0].spent(limit) == N * amount
        assert await group[0].spent(roomy) == N * amount

        charged = await settle_all(group, admitted, rng)
        await check_invariants(store, account_id)
        assert await group[0].spent(limit) == charged <= N * amount


@pytest.mark.parametrize("seed", SEEDS)
async def test_holds_settles_and_recovery_interleaved_keep_every_invariant(
    database_url: str, seed: int
) -> None:
    """Contention of every kind at once: holds racing settles (with overshoots) and recovery."""
    rng = random.Random(seed)
    clock = FakeClock()
    async with ledgers(database_url, 3, clock) as group:
        store = group[0].store
        account_id = await new_account(store, 50_000)
        limit = gateway_rule(account_id, 30_000)

        async def request(i: int) -> None:
            amount = rng.randint(0, 3_000)
            async with group.pick(i) as ledger:
                try:
                    hold = await ledger.hold(account_id, f"r{i}", amount, limits=[limit])
                except (InsufficientCredits, SpendLimitExceeded):
                    return
                await ledger.mark_forwarded(hold)
            await asyncio.sleep(0)  # let others in between hold and settle
            if rng.random() < 0.1:
                return  # abandoned: recovery settles it at the estimate (the full hold)
            actual = rng.randint(0, amount + amount // 10)  # up to 10% overshoot
            async with group.pick(i + 1) as ledger:  # settled from another "process"
                await ledger.settle(hold, actual)

        await asyncio.gather(*(request(i) for i in range(120)))
        await check_invariants(store, account_id)
        clock.advance(hours=1)
        await asyncio.gather(*(ledger.recover() for ledger in group.ledgers))
        snapshot = await check_invariants(store, account_id)
        assert snapshot.held_nanos == 0
        assert all(hold.state != "open" for hold in snapshot.holds)
        spent_in_window = sum(r.charged_nanos for r in snapshot.resolutions.values())
        overshoot = sum(r.overshoot_nanos for r in snapshot.resolutions.values())
        # Only usage beyond a hold can pass the limit or the balance, by at most that usage.
        assert spent_in_window <= 30_000 + overshoot
        assert snapshot.balance_nanos >= -overshoot


@pytest.mark.parametrize("seed", SEEDS)
async def test_racing_settles_and_releases_of_one_hold_resolve_it_once(
    database_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    async with ledgers(database_url, 3, clock) as group:
        store = group[0].store
        account_id = await new_account(store, 10_000)
        limit = gateway_rule(account_id, 5_000)
        hold = await group[0].hold(account_id, "once", 1_000, limits=[limit])
        await group[0].mark_forwarded(hold)
        admitted_at = clock()
        clock.advance(hours=1)  # expired: recovery sweeps race the settles too

        async def resolve(i: int) -> object:
            choice = rng.choice(["settle", "release", "recover"])
            async with group.pick(i) as ledger:
                if choice == "settle":
                    return await ledger.settle(hold, rng.randint(0, 2_000))
                if choice == "release":
                    return await ledger.release(hold)
                return await ledger.recover()

        await asyncio.gather(*(resolve(i) for i in range(30)))
        snapshot = await check_invariants(store, account_id)
        [result] = snapshot.resolutions.values()
        usage = [e for e in snapshot.entries if e.kind == "usage"]
        assert len(usage) == (1 if result.charged_nanos else 0)
        assert snapshot.balance_nanos == 10_000 - result.charged_nanos
        assert snapshot.held_nanos == 0
        # A hold's charge stays in the window it was admitted in, whoever resolves it.
        assert await group[0].spent(limit, admitted_at) == result.charged_nanos
        assert await group[0].spent(limit) == 0
