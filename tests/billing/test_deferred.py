"""Settlements deferred while the database is unreachable (`tollgate.billing.deferred`): written
once it is back, exactly once; left to crash recovery when the process stops first; a failure
that is not the outage is not retried forever.

A real PostgreSQL reached through a TCP relay the test cuts and restores (the shared server is
never touched). The end-to-end view, under load through a gateway: tests/e2e/
test_outages_under_load.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from tests.billing.test_ledger import new_account
from tests.support.databases import fresh_postgres_database
from tests.support.tcp_proxy import TcpProxy
from tollgate.billing.deferred import DeferredSettlements, Due
from tollgate.billing.ledger import Ledger, check_invariants
from tollgate.store import Store
from tollgate.store import holds as holds_repo
from tollgate.store.holds import Hold, Settlement
from tollgate.store.migrate import migrate

pytestmark = pytest.mark.postgres


@dataclass
class Books:
    store: Store  # through the relay: what the deferred settlements write with
    ledger: Ledger
    relay: TcpProxy
    account_id: str
    told: list[Settlement]
    deferred: DeferredSettlements

    async def open_hold(self, amount: int) -> Hold:
        return await self.ledger.hold(self.account_id, f"req-{amount}", amount, model="m")


async def back_and_written(books: Books) -> None:
    """Restore the database; wait (up to 10 s) until nothing is left deferred."""
    books.relay.forward()
    for _ in range(100):
        if not books.deferred:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(books.deferred)} still deferred 10 s after the database is back")


@pytest.fixture
def relay() -> Iterator[TcpProxy]:
    proxy = TcpProxy()
    proxy.forward()
    yield proxy
    proxy.close()


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
async def books(database: str, relay: TcpProxy) -> AsyncIterator[Books]:
    store = Store(database.replace(":5432/", f":{relay.port}/"))
    await migrate(store)
    ledger = Ledger(store)
    told: list[Settlement] = []
    deferred = DeferredSettlements(ledger, told.append)
    try:
        yield Books(store, ledger, relay, await new_account(store, 10**9), told, deferred)
    finally:
        await store.close()


async def test_a_settlement_deferred_in_an_outage_is_written_once_the_database_is_back(
    books: Books,
) -> None:
    charged, released = await books.open_hold(5_000), await books.open_hold(7_000)
    books.relay.cut()
    shown = books.deferred.defer(Due(charged, 4_200, False, "measured"))
    books.deferred.defer(Due(released, None, False, ""))
    # What the request reports meanwhile: the charge due, no balance (no cost headers).
    assert (shown.charged_nanos, shown.balance_after_nanos, shown.replayed) == (4_200, None, False)
    await asyncio.sleep(0.6)  # two retries fail while the relay is cut
    assert len(books.deferred) == 2 and books.told == []

    await back_and_written(books)
    assert [(s.hold_id, s.state, s.charged_nanos) for s in books.told] == [
        (charged.id, "settled", 4_200),
        (released.id, "released", 0),
    ]
    snapshot = await check_invariants(books.store, books.account_id)
    assert snapshot.balance_nanos == 10**9 - 4_200 and snapshot.held_nanos == 0
    # Written once: the same settlement again is a replay of the first.
    again = await books.ledger.settle(charged, 4_200)
    assert again.replayed and again.charged_nanos == 4_200


async def test_at_shutdown_what_the_database_still_refuses_is_left_to_crash_recovery(
    books: Books,
) -> None:
    hold = await books.open_hold(5_000)
    books.relay.cut()
    books.deferred.defer(Due(hold, 4_200, False, "measured"))
    assert await books.deferred.drain() == 1  # still down: left open, retries stopped
    books.relay.forward()
    await asyncio.sleep(0.5)
    found = await holds_repo.get_hold(books.store, hold.id)
    assert found is not None and found.state == "open"  # crash recovery's, at its estimate
    assert books.told == []


async def test_a_failure_that_is_not_the_outage_is_dropped_not_retried(books: Books) -> None:
    """A hold the database does not know (a bug, not an outage) is logged and dropped; the
    settlements behind it are still written."""
    hold = await books.open_hold(5_000)
    books.deferred.defer(Due(dataclasses.replace(hold, id="no-such-hold"), 4_200, False, ""))
    books.deferred.defer(Due(hold, 4_200, False, "measured"))
    assert await books.deferred.write_due()
    assert not books.deferred
    assert [s.hold_id for s in books.told] == [hold.id]
    await books.deferred.drain()


async def test_a_hold_whose_admission_failed_in_the_outage_is_released_if_it_was_written(
    books: Books,
) -> None:
    """The connection broke after the hold's commit: the request was refused (503) and never
    sent, so its hold must not be recovered as forwarded and charged."""
    written = await books.open_hold(5_000)  # as if its commit landed and the answer was lost
    books.relay.cut()
    books.deferred.release_if_held(written.request_id)
    books.deferred.release_if_held("req-never-written")
    await asyncio.sleep(0.3)
    assert len(books.deferred) == 2
    await back_and_written(books)
    found = await holds_repo.get_hold(books.store, written.id)
    assert found is not None and found.state == "released"
    snapshot = await check_invariants(books.store, books.account_id)
    assert snapshot.balance_nanos == 10**9 and snapshot.held_nanos == 0
