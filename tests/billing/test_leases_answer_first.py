"""Credit leases answering first (the data plane's settle, `wait_for_commit=False`): the result
returns once the resolution is journaled, the batch commits within the settle interval, and
nothing is lost or doubled on the way. Real store, real journal files.

What each test pins down: the answer comes before the commit and says what the books will say
(charge, ledger entry id, balance after); a reader in the process flushes first; a crash before
the commit is recovered exactly as the client was told (not at the estimate); a repeat returns
the first result; a failing batch is retried until written; a reused request id keeps its charge.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.billing.test_leases import HOLD, TTL, hold
from tests.billing.test_ledger import FakeClock, new_account
from tollgate.billing.leases import CreditLeases
from tollgate.billing.ledger import Ledger, check_invariants
from tollgate.store import Store, leases_sqlite
from tollgate.store import journal as journal_module
from tollgate.store.journal import journal_dir, read_segment
from tollgate.store.migrate import migrate

INTERVAL = 0.2  # long enough to look at the books between the answer and the commit


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'answer-first.db'}")
    await migrate(store)
    try:
        yield store
    finally:
        await store.close()


def process(store: Store, *, interval: float = INTERVAL, flush_reads: bool = True) -> Ledger:
    """A gateway process's ledger; `flush_reads` wires its readers' flush as the app does."""
    leases = CreditLeases(store, hold_ttl=TTL, linger=60.0, settle_interval=interval)
    if flush_reads:
        store.before_read = leases.flush
    return Ledger(store, FakeClock(), hold_ttl=TTL, leases=leases)


def committed_balance(store: Store, account_id: str) -> int:
    """The balance another process would read now (no flush)."""
    conn = sqlite3.connect(store.sqlite_path)
    try:
        row = conn.execute("SELECT balance_nanos FROM accounts WHERE id = ?", (account_id,))
        return int(row.fetchone()[0])
    finally:
        conn.close()


async def test_the_answer_comes_before_the_commit_and_says_what_the_books_will_say(
    store: Store,
) -> None:
    ledger = process(store)
    account_id = await new_account(store, 10**12)
    held = await hold(ledger, account_id)
    commits = store.hot().commits
    result = await ledger.settle(held, 1_234, note="measured", wait_for_commit=False)  # type: ignore[arg-type]
    assert store.hot().commits == commits  # nothing written yet
    assert committed_balance(store, account_id) == 10**12
    assert (result.state, result.charged_nanos, result.estimated) == ("settled", 1_234, False)
    assert result.balance_after_nanos == 10**12 - 1_234 and result.ledger_entry_id
    books = await check_invariants(store, account_id)  # a reader here flushes first
    [usage] = [e for e in books.entries if e.kind == "usage"]
    assert (usage.id, usage.amount_nanos, usage.balance_after_nanos) == (
        result.ledger_entry_id,
        -1_234,
        result.balance_after_nanos,
    )
    assert usage.reference == f"lease:{held.id}"  # type: ignore[attr-defined]
    assert ledger.leases is not None
    await ledger.leases.close()


async def test_answers_within_the_interval_share_one_commit(store: Store) -> None:
    ledger = process(store, flush_reads=False)
    account_id = await new_account(store, 10**12)
    primer = await hold(ledger, account_id)  # the lease is taken before counting commits
    await ledger.release(primer)  # type: ignore[arg-type]
    commits = store.hot().commits
    results = []
    for i in range(5):  # one request at a time, as over one connection
        held = await hold(ledger, account_id)
        settled = await ledger.settle(held, 100 * (i + 1), wait_for_commit=False)  # type: ignore[arg-type]
        results.append(settled)
    # Each answer counts the ones before it: the running balance the entries will carry.
    assert [r.balance_after_nanos for r in results] == [
        10**12 - 100,
        10**12 - 300,
        10**12 - 600,
        10**12 - 1_000,
        10**12 - 1_500,
    ]
    await asyncio.sleep(INTERVAL * 2)
    assert store.hot().commits == commits + 1
    assert committed_balance(store, account_id) == 10**12 - 1_500
    books = await check_invariants(store, account_id)
    stored = [e.balance_after_nanos for e in books.entries if e.kind == "usage"]
    assert stored == [r.balance_after_nanos for r in results]
    assert ledger.leases is not None
    await ledger.leases.close()


async def test_with_others_in_flight_the_answer_waits_for_the_shared_commit(
    store: Store,
) -> None:
    # Under concurrency the answers wait for their batch: they keep the requests in step, and
    # the loop serves them in bursts (cheaper than answering each first; see leases.py).
    ledger = process(store, flush_reads=False)
    account_id = await new_account(store, 10**12)
    first, second = await hold(ledger, account_id), await hold(ledger, account_id)
    commits = store.hot().commits
    result = await ledger.settle(first, 10, wait_for_commit=False)  # type: ignore[arg-type]
    assert store.hot().commits == commits + 1  # written before the answer
    assert committed_balance(store, account_id) == result.balance_after_nanos == 10**12 - 10
    last = await ledger.settle(second, 20, wait_for_commit=False)  # type: ignore[arg-type]
    assert committed_balance(store, account_id) == 10**12 - 10  # alone now: answered first
    assert last.balance_after_nanos == 10**12 - 30
    assert ledger.leases is not None
    await ledger.leases.close()
    assert committed_balance(store, account_id) == 10**12 - 30


async def test_a_release_answered_first_is_written_as_a_released_hold(store: Store) -> None:
    ledger = process(store)
    account_id = await new_account(store, 10**12)
    held = await hold(ledger, account_id)
    result = await ledger.release(held, wait_for_commit=False)  # type: ignore[arg-type]
    assert (result.state, result.charged_nanos, result.ledger_entry_id) == ("released", 0, None)
    books = await check_invariants(store, account_id)
    assert books.resolutions[held.id].state == "released"  # type: ignore[attr-defined]
    assert books.balance_nanos == 10**12
    assert ledger.leases is not None
    await ledger.leases.close()


async def test_a_crash_before_the_commit_is_recovered_as_the_client_was_told(
    store: Store,
) -> None:
    dying = process(store, interval=60.0, flush_reads=False)  # never commits by itself
    account_id = await new_account(store, 10**12)
    answered, told = [], []
    for outcome in ("measured", "estimated", "released"):  # one at a time: each answered first
        held = await hold(dying, account_id)
        answered.append(held)
        if outcome == "measured":
            told.append(await dying.settle(held, 777, wait_for_commit=False))  # type: ignore[arg-type]
        elif outcome == "estimated":
            told.append(await dying.settle(held, 5, estimated=True, wait_for_commit=False))  # type: ignore[arg-type]
        else:
            told.append(await dying.release(held, wait_for_commit=False))  # type: ignore[arg-type]
    in_flight = await hold(dying, account_id)
    assert committed_balance(store, account_id) == 10**12
    assert dying.leases is not None and dying.leases._journal is not None
    dying.leases._journal.close(remove=False)  # killed: the lock goes, the files stay
    assert dying.leases._flushing is not None
    dying.leases._flushing.cancel()  # ...and its queue with it

    survivor = process(store)
    report = await survivor.recover()
    assert report.settled == 4
    books = await check_invariants(store, account_id)
    # The answered ones exactly as answered; the one in flight at its recovery estimate.
    recovery = HOLD // 10
    assert books.balance_nanos == 10**12 - 777 - 5 - recovery
    usage = {e.reference: e for e in books.entries if e.kind == "usage"}
    exact = usage[f"lease:{answered[0].id}"]  # type: ignore[attr-defined]
    assert (exact.id, exact.amount_nanos) == (told[0].ledger_entry_id, -777)
    estimate = books.resolutions[answered[1].id]  # type: ignore[attr-defined]
    assert (estimate.charged_nanos, estimate.estimated) == (5, True)
    assert books.resolutions[answered[2].id].state == "released"  # type: ignore[attr-defined]
    lost = books.resolutions[in_flight.id]  # type: ignore[attr-defined]
    assert (lost.charged_nanos, lost.estimated) == (recovery, True)
    assert books.leased_nanos == 0 and books.held_nanos == 0
    assert (await survivor.recover()).settled == 0  # nothing twice
    assert survivor.leases is not None
    await survivor.leases.close()


async def test_a_repeat_before_the_commit_returns_the_first_result(store: Store) -> None:
    ledger = process(store, flush_reads=False)
    account_id = await new_account(store, 10**12)
    held = await hold(ledger, account_id)
    first = await ledger.settle(held, 40, wait_for_commit=False)  # type: ignore[arg-type]
    again = await ledger.settle(held, 99)  # type: ignore[arg-type]
    assert again.replayed and not first.replayed
    assert (again.charged_nanos, again.ledger_entry_id, again.balance_after_nanos) == (
        40,
        first.ledger_entry_id,
        first.balance_after_nanos,
    )
    assert (await check_invariants(store, account_id)).balance_nanos == 10**12 - 40
    assert ledger.leases is not None
    await ledger.leases.close()


async def test_a_failing_batch_is_retried_until_written(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = process(store, interval=0.01, flush_reads=False)
    account_id = await new_account(store, 10**12)
    held = [await hold(ledger, account_id)]
    real, failures = leases_sqlite.settle_groups, []

    def flaky(conn: sqlite3.Connection, **kwargs: object) -> None:
        if len(failures) < 2:
            failures.append(1)
            raise sqlite3.OperationalError("disk I/O error")
        real(conn, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(leases_sqlite, "settle_groups", flaky)
    await ledger.settle(held[0], 10, wait_for_commit=False)  # type: ignore[arg-type]
    for _ in range(2):
        again = await hold(ledger, account_id)
        await ledger.settle(again, 10, wait_for_commit=False)  # type: ignore[arg-type]
    for _ in range(100):  # retried after 50 ms, then 100 ms
        await asyncio.sleep(0.05)
        if committed_balance(store, account_id) == 10**12 - 30:
            break
    assert len(failures) == 2
    books = await check_invariants(store, account_id)
    assert books.balance_nanos == 10**12 - 30
    assert len([e for e in books.entries if e.kind == "usage"]) == 3
    assert ledger.leases is not None
    await ledger.leases.close()
    assert (await check_invariants(store, account_id)).leased_nanos == 0


async def test_a_reused_request_id_answered_first_keeps_its_charge(store: Store) -> None:
    ledger = process(store)
    account_id = await new_account(store, 10**12)
    first = await ledger.hold(account_id, "same-id", HOLD, forwarded=True)
    await ledger.release(first)
    again = await ledger.hold(account_id, "same-id", HOLD, forwarded=True)
    result = await ledger.settle(again, 5, estimated=True, wait_for_commit=False)
    assert result.charged_nanos == 5
    books = await check_invariants(store, account_id)
    assert books.balance_nanos == 10**12 - 5
    row = next(h for h in books.holds if h.id == again.id)
    assert row.request_id == f"same-id#{again.id}"
    assert ledger.leases is not None
    await ledger.leases.close()


async def test_journal_segments_with_resolutions_are_deleted_once_committed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 600)  # a few lines per segment
    ledger = process(store, interval=0.001, flush_reads=False)
    account_id = await new_account(store, 10**12)
    directory = journal_dir(store.sqlite_path)
    for _ in range(20):
        held = await hold(ledger, account_id)
        await ledger.settle(held, 3, wait_for_commit=False)  # type: ignore[arg-type]
        segments = sorted(directory.glob("*.jsonl"))
        lines = [read_segment(path) for path in segments]
        assert any(held.id in found.resolutions for found in lines)  # type: ignore[attr-defined]
    assert ledger.leases is not None
    await ledger.leases.flush()
    assert len(list(directory.glob("*.jsonl"))) == 1  # only the segment being written
    assert (await check_invariants(store, account_id)).balance_nanos == 10**12 - 60
    await ledger.leases.close()
    assert list(directory.iterdir()) == []


def test_under_uvloop_the_gateways_loop(tmp_path: Path) -> None:
    # The gateway runs on uvloop (`tollgate serve`), whose handles differ from asyncio's (no
    # `when()`): a lone answer's long wait, then a waiting caller's sooner one, then a flush.
    import uvloop

    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path / 'uvloop.db'}")
        await migrate(store)
        try:
            ledger = process(store, flush_reads=False)
            account_id = await new_account(store, 10**12)
            for charge in (1, 2, 3):  # answered first, one batch due in INTERVAL
                held = await hold(ledger, account_id)
                await ledger.settle(held, charge, wait_for_commit=False)  # type: ignore[arg-type]
            assert committed_balance(store, account_id) == 10**12
            waiting = await hold(ledger, account_id)
            result = await ledger.settle(waiting, 4)  # type: ignore[arg-type]  # due at once
            assert result.balance_after_nanos == committed_balance(store, account_id)
            assert committed_balance(store, account_id) == 10**12 - 10
            assert ledger.leases is not None
            await ledger.leases.close()
            assert (await check_invariants(store, account_id)).leased_nanos == 0
        finally:
            await store.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


async def test_a_batch_still_failing_at_shutdown_stays_in_the_journal(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = process(store, interval=0.01, flush_reads=False)
    account_id = await new_account(store, 10**12)
    held = await hold(ledger, account_id)
    real = leases_sqlite.settle_groups

    def broken(conn: sqlite3.Connection, **kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(leases_sqlite, "settle_groups", broken)
    told = await ledger.settle(held, 321, wait_for_commit=False)  # type: ignore[arg-type]
    assert ledger.leases is not None
    await ledger.leases.close()  # the database still refuses: nothing may be dropped
    assert list(journal_dir(store.sqlite_path).glob("*.jsonl"))
    monkeypatch.setattr(leases_sqlite, "settle_groups", real)
    restarted = process(store)
    assert (await restarted.recover()).settled == 1
    books = await check_invariants(store, account_id)
    [usage] = [e for e in books.entries if e.kind == "usage"]
    assert (usage.id, usage.amount_nanos) == (told.ledger_entry_id, -321)
    assert books.leased_nanos == 0
    assert restarted.leases is not None
    await restarted.leases.close()
