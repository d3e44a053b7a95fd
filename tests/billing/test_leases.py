"""Credit leases (SQLite): Unified Billing holds admitted in memory against a lease, settled in
batches, recovered from the journal of a process that died. Real store, real journal files.

The money guarantees are the ledger's: exactly as many requests admitted as the credit covers,
under any concurrency; every request one hold row and (when charged) one usage entry; the
invariants (`check_invariants`, which also checks `leased_nanos` against the lease rows) after
every step; nothing left leased once the account is idle or the process stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from tests.billing.test_ledger import FakeClock, new_account
from tollgate.billing.leases import GROWTH_REQUESTS, CreditLeases, RequestIdReused
from tollgate.billing.ledger import RECOVERY_NOTE, Ledger, check_invariants
from tollgate.billing.limits import LimitSpec, account_key
from tollgate.billing.windows import Window
from tollgate.errors import InsufficientBalance
from tollgate.store import Store
from tollgate.store import journal as journal_module
from tollgate.store._util import ordered_id
from tollgate.store.journal import journal_dir
from tollgate.store.migrate import migrate

TTL = timedelta(minutes=15)
HOLD = 1_000_000  # $0.001 per request held


@dataclass
class Leased:
    store: Store
    ledger: Ledger
    leases: CreditLeases
    clock: FakeClock

    def another_process(self, linger: float = 60.0) -> Ledger:
        """A second gateway process on the same file: its own leases and journal."""
        leases = CreditLeases(self.store, hold_ttl=TTL, linger=linger)
        return Ledger(self.store, self.clock, hold_ttl=TTL, leases=leases)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Leased]:
    store = Store(f"sqlite:///{tmp_path / 'leases.db'}")
    await migrate(store)
    clock = FakeClock()
    leases = CreditLeases(store, hold_ttl=TTL, linger=60.0)
    try:
        yield Leased(store, Ledger(store, clock, hold_ttl=TTL, leases=leases), leases, clock)
    finally:
        await store.close()


async def hold(ledger: Ledger, account_id: str, amount: int = HOLD) -> object:
    return await ledger.hold(
        account_id,
        f"req-{ordered_id()}",
        amount,
        forwarded=True,
        recovery_charge_nanos=amount // 10,
    )


async def test_a_balance_worth_n_holds_admits_exactly_n_of_10n_concurrent(env: Leased) -> None:
    n = 25
    account_id = await new_account(env.store, n * HOLD)
    results = await asyncio.gather(
        *(hold(env.ledger, account_id) for _ in range(10 * n)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(admitted) == n
    assert all(isinstance(r, InsufficientBalance) for r in refused)
    assert all(env.leases.owns(h) for h in admitted)  # type: ignore[arg-type]
    books = await check_invariants(env.store, account_id)
    assert books.held_nanos == 0 and books.leased_nanos == n * HOLD  # all of it, leased
    assert books.holds == ()  # in the journal, not in the database yet
    settlements = await asyncio.gather(
        *(env.ledger.settle(h, HOLD // 2, note="half") for h in admitted)  # type: ignore[arg-type]
    )
    assert [s.state for s in settlements] == ["settled"] * n
    books = await check_invariants(env.store, account_id)
    assert books.balance_nanos == n * HOLD - n * (HOLD // 2)
    assert len(books.holds) == n and all(h.state == "settled" for h in books.holds)
    assert [e.kind for e in books.entries].count("usage") == n
    await env.leases.close()
    books = await check_invariants(env.store, account_id)
    assert books.leased_nanos == 0 and books.balance_nanos == n * (HOLD // 2)


async def test_the_lease_grows_by_room_for_more_and_never_past_the_balance(env: Leased) -> None:
    account_id = await new_account(env.store, 10**12)
    await hold(env.ledger, account_id)
    books = await check_invariants(env.store, account_id)
    assert books.leased_nanos == (1 + GROWTH_REQUESTS) * HOLD  # one write covers the next 64
    small = await new_account(env.store, 3 * HOLD)
    await hold(env.ledger, small)
    assert (await check_invariants(env.store, small)).leased_nanos == 3 * HOLD  # all there is


async def test_a_refusal_says_what_is_needed_and_what_is_available(env: Leased) -> None:
    account_id = await new_account(env.store, 3 * HOLD)
    await hold(env.ledger, account_id)
    with pytest.raises(InsufficientBalance) as refused:
        await hold(env.ledger, account_id, 5 * HOLD)
    assert refused.value.needed_nanos == 5 * HOLD
    assert refused.value.available_nanos == 2 * HOLD  # the lease's unused part counts
    assert await env.ledger.available(account_id) == 2 * HOLD


async def test_a_release_writes_a_released_hold_and_no_entry(env: Leased) -> None:
    account_id = await new_account(env.store, 10 * HOLD)
    admitted = await hold(env.ledger, account_id)
    result = await env.ledger.release(admitted)  # type: ignore[arg-type]
    assert (result.state, result.charged_nanos, result.ledger_entry_id) == ("released", 0, None)
    books = await check_invariants(env.store, account_id)
    assert [h.state for h in books.holds] == ["released"]
    assert [e.kind for e in books.entries] == ["grant"]
    again = await env.ledger.release(admitted)  # type: ignore[arg-type]
    assert again.replayed and again.state == "released"  # from the row, exactly once


async def test_a_hold_a_limit_counts_takes_the_database_path_and_the_lease_makes_room(
    env: Leased,
) -> None:
    account_id = await new_account(env.store, 10 * HOLD)
    first = await hold(env.ledger, account_id)  # leases all 10: the growth is capped there
    await env.ledger.settle(first, HOLD)  # type: ignore[arg-type]
    assert (await check_invariants(env.store, account_id)).leased_nanos == 9 * HOLD
    limit = LimitSpec(account_key(account_id), 100 * HOLD, Window("fixed", 86_400), "limit")
    limited = await env.ledger.hold(account_id, "limited", 9 * HOLD, limits=[limit], forwarded=True)
    assert not env.leases.owns(limited)  # a row, counted in its bucket
    books = await check_invariants(env.store, account_id)
    assert books.held_nanos == 9 * HOLD and books.leased_nanos == 0  # the idle lease gave way


async def test_an_idle_lease_is_given_back_after_the_linger(env: Leased) -> None:
    account_id = await new_account(env.store, 10**12)
    ledger = env.another_process(linger=0.05)
    admitted = await hold(ledger, account_id)
    await ledger.settle(admitted, 10)  # type: ignore[arg-type]
    assert (await check_invariants(env.store, account_id)).leased_nanos > 0
    await asyncio.sleep(0.3)
    assert (await check_invariants(env.store, account_id)).leased_nanos == 0


async def test_a_dead_process_journal_is_settled_at_the_recovery_charges(env: Leased) -> None:
    account_id = await new_account(env.store, 10**12)
    dying = env.another_process()
    held = [await hold(dying, account_id, HOLD * (i + 1)) for i in range(3)]
    await dying.settle(held[0], 12_345)  # type: ignore[arg-type]
    assert dying.leases is not None and dying.leases._journal is not None
    dying.leases._journal.close(remove=False)  # the process dies: its lock goes, files stay
    report = await env.ledger.recover()
    assert (report.settled, report.charged_nanos) == (2, (2 * HOLD + 3 * HOLD) // 10)
    books = await check_invariants(env.store, account_id)
    assert books.leased_nanos == 0 and books.held_nanos == 0
    by_id = {h.id: h for h in books.holds}
    for lost in held[1:]:
        result = books.resolutions[lost.id]  # type: ignore[attr-defined]
        assert (result.state, result.estimated) == ("settled", True)
        assert result.charged_nanos == by_id[lost.id].recovery_charge_nanos  # type: ignore[attr-defined]
    notes = [e for e in books.entries if e.kind == "usage"]
    assert len(notes) == 3
    assert books.balance_nanos == 10**12 - 12_345 - (2 * HOLD + 3 * HOLD) // 10
    again = await env.ledger.recover()  # the journal is gone: nothing twice
    assert again.settled == 0
    assert list(journal_dir(env.store.sqlite_path or "").glob("*.jsonl")) == []
    assert RECOVERY_NOTE  # the entries' note (checked end to end in test_billing_crash.py)


async def test_a_live_process_journal_is_left_alone(env: Leased) -> None:
    account_id = await new_account(env.store, 10**12)
    alive = env.another_process()
    admitted = await hold(alive, account_id)
    assert (await env.ledger.recover()).settled == 0
    await alive.settle(admitted, 7)  # type: ignore[arg-type]
    assert (await check_invariants(env.store, account_id)).balance_nanos == 10**12 - 7


async def test_settled_journal_segments_are_deleted(
    env: Leased, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 400)  # a few lines per segment
    account_id = await new_account(env.store, 10**12)
    admitted = [await hold(env.ledger, account_id) for _ in range(20)]
    directory = journal_dir(env.store.sqlite_path or "")
    assert len(list(directory.glob("*.jsonl"))) > 3
    for h in admitted:
        await env.ledger.settle(h, 1)  # type: ignore[arg-type]
    assert len(list(directory.glob("*.jsonl"))) == 1  # only the segment being written
    await env.leases.close()
    assert list(directory.iterdir()) == []  # a clean stop leaves nothing to recover


async def test_a_reused_request_id_fails_alone_and_the_batch_is_written(env: Leased) -> None:
    account_id = await new_account(env.store, 10**12)
    first = await env.ledger.hold(account_id, "same-id", HOLD, forwarded=True)
    await env.ledger.settle(first, 5)  # type: ignore[arg-type]
    again = await env.ledger.hold(account_id, "same-id", HOLD, forwarded=True)
    others = [await hold(env.ledger, account_id) for _ in range(3)]
    results = await asyncio.gather(
        env.ledger.settle(again, 5),  # type: ignore[arg-type]
        *(env.ledger.settle(h, 5) for h in others),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert isinstance(results[0], RequestIdReused)
    assert [getattr(r, "state", None) for r in results[1:]] == ["settled"] * 3
    books = await check_invariants(env.store, account_id)
    assert books.balance_nanos == 10**12 - 4 * 5
