"""Credit leases (SQLite): Unified Billing holds admitted in memory against a lease, settled in
batches, recovered from the journal of a process that died. Real store, real journal files.

The money guarantees are the ledger's: exactly as many requests admitted as the credit covers,
under any concurrency; a request charged its measured usage is one `lease:` usage entry, any
other outcome a resolved hold row (plus a `hold:` entry when charged); a repeated settle returns
the first result; the invariants (`check_invariants`, which also checks `leased_nanos` against
the lease rows) after every step; nothing left leased once the account is idle or the process
stops."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from tests.billing.test_ledger import FakeClock, new_account
from tollgate.billing.lease_batches import RequestIdReused
from tollgate.billing.leases import GROWTH_REQUESTS, CreditLeases
from tollgate.billing.ledger import RECOVERY_NOTE, InvariantViolation, Ledger, check_invariants
from tollgate.billing.limits import LimitSpec, account_key
from tollgate.billing.windows import Window
from tollgate.errors import InsufficientBalance
from tollgate.store import Store
from tollgate.store import journal as journal_module
from tollgate.store._util import ordered_id
from tollgate.store.journal import Admitted, journal_dir, read_lines
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
    assert books.holds == ()  # charged their measured usage: one `lease:` entry each
    usage = [e for e in books.entries if e.kind == "usage"]
    assert sorted(e.reference or "" for e in usage) == sorted(f"lease:{h.id}" for h in admitted)  # type: ignore[attr-defined]
    assert all(e.amount_nanos == -(HOLD // 2) for e in usage)
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
    # A linger far longer than the check below may take on a loaded machine (it once took more
    # than 50 ms in a CI run), and a wait well past it.
    ledger = env.another_process(linger=1.0)
    admitted = await hold(ledger, account_id)
    await ledger.settle(admitted, 10)  # type: ignore[arg-type]
    assert (await check_invariants(env.store, account_id)).leased_nanos > 0
    await asyncio.sleep(2.0)
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
    # A request id is stored with a hold row: a release, or a charge of an estimate. (A request
    # charged its measured usage is one `lease:` entry: the meter's request ids are fresh.)
    account_id = await new_account(env.store, 10**12)
    first = await env.ledger.hold(account_id, "same-id", HOLD, forwarded=True)
    await env.ledger.release(first)  # type: ignore[arg-type]
    again = await env.ledger.hold(account_id, "same-id", HOLD, forwarded=True)
    others = [await hold(env.ledger, account_id) for _ in range(3)]
    results = await asyncio.gather(
        env.ledger.settle(again, 5, estimated=True),  # type: ignore[arg-type]
        *(env.ledger.settle(h, 5) for h in others),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert isinstance(results[0], RequestIdReused)
    assert [getattr(r, "state", None) for r in results[1:]] == ["settled"] * 3
    books = await check_invariants(env.store, account_id)
    assert books.balance_nanos == 10**12 - 3 * 5


async def test_a_repeated_settle_returns_the_first_result_and_changes_nothing(env: Leased) -> None:
    account_id = await new_account(env.store, 10**12)
    admitted = await hold(env.ledger, account_id)
    first = await env.ledger.settle(admitted, 5, note="measured")  # type: ignore[arg-type]
    books = await check_invariants(env.store, account_id)
    again = await env.ledger.settle(admitted, 7)  # type: ignore[arg-type]
    assert again.replayed and not first.replayed
    assert (again.charged_nanos, again.ledger_entry_id, again.balance_after_nanos) == (
        5,
        first.ledger_entry_id,
        first.balance_after_nanos,
    )
    after = await check_invariants(env.store, account_id)
    assert (after.balance_nanos, after.entries) == (books.balance_nanos, books.entries)


async def test_an_estimated_charge_keeps_its_hold_row_and_flag(env: Leased) -> None:
    account_id = await new_account(env.store, 10**12)
    admitted = await hold(env.ledger, account_id)
    result = await env.ledger.settle(admitted, 9, estimated=True)  # type: ignore[arg-type]
    books = await check_invariants(env.store, account_id)
    [row] = books.holds
    stored = books.resolutions[row.id]
    assert (stored.state, stored.charged_nanos, stored.estimated) == ("settled", 9, True)
    [usage] = [e for e in books.entries if e.kind == "usage"]
    assert usage.reference == f"hold:{row.id}" and usage.id == result.ledger_entry_id


async def test_the_invariants_refuse_a_leased_request_written_twice(env: Leased) -> None:
    account_id = await new_account(env.store, 10**12)
    admitted = await hold(env.ledger, account_id)
    await env.ledger.settle(admitted, 5)  # type: ignore[arg-type]
    await env.leases.close()
    # The same request also as a hold row: its charge would be counted twice.
    conn = sqlite3.connect(env.store.sqlite_path or "")
    with conn:
        conn.execute(
            "INSERT INTO holds (id, account_id, request_id, amount_nanos, recovery_charge_nanos, "
            "state, created_at, expires_at, charged_nanos) VALUES (?, ?, 'again', ?, 0, "
            "'released', '2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000', 0)",
            (admitted.id, account_id, HOLD),  # type: ignore[attr-defined]
        )
    conn.close()
    with pytest.raises(InvariantViolation, match="also has a row"):
        await check_invariants(env.store, account_id)


def test_the_journal_reader_skips_a_line_cut_short_and_reads_older_lines(tmp_path: Path) -> None:
    current = Admitted("h1", "acct", "req-1", "default", "openai/gpt-4o", 100, 10, 1_700_000_000)
    # Written by tollgate 0.1: stored-form timestamps and an expiry.
    older = b'["h2","acct","req-2",null,null,200,20,"2026-01-02 03:04:05.000006","x"]\n'
    cut = current.line()[:-9]  # the process died while copying this line: never forwarded
    segment = tmp_path / "owner.1.jsonl"
    segment.write_bytes(current.line() + older + cut + bytes(4096))
    lines = read_lines(segment)
    assert [a.hold_id for a in lines] == ["h1", "h2"]
    assert lines[0] == current
    assert lines[1].created_us == 1_767_323_045_000_006  # 2026-01-02 03:04:05.000006 UTC


async def test_settlements_ending_close_together_share_one_commit(env: Leased) -> None:
    account_id = await new_account(env.store, 10**12)
    leases = CreditLeases(env.store, hold_ttl=TTL, commit_delay=0.2)
    ledger = Ledger(env.store, env.clock, hold_ttl=TTL, leases=leases)
    held = [await hold(ledger, account_id) for _ in range(3)]
    writer = env.store.hot()
    before = writer.commits
    first = asyncio.create_task(ledger.settle(held[0], 1))  # type: ignore[arg-type]
    await asyncio.sleep(0.02)  # two others still in flight: the batch waits for them
    assert not first.done()
    rest = [ledger.settle(h, 1) for h in held[1:]]  # type: ignore[arg-type]
    results = await asyncio.gather(first, *rest)
    assert [r.state for r in results] == ["settled"] * 3
    assert writer.commits == before + 1
    await leases.close()
    assert (await check_invariants(env.store, account_id)).balance_nanos == 10**12 - 3


async def test_a_lone_settlement_is_not_delayed(env: Leased) -> None:
    account_id = await new_account(env.store, 10**12)
    leases = CreditLeases(env.store, hold_ttl=TTL, commit_delay=5.0)
    ledger = Ledger(env.store, env.clock, hold_ttl=TTL, leases=leases)
    alone = await hold(ledger, account_id)
    # Nothing else in flight: written at once, not after the 5 s delay.
    result = await asyncio.wait_for(ledger.settle(alone, 1), timeout=2.0)  # type: ignore[arg-type]
    assert result.state == "settled"
    await leases.close()


async def test_after_an_overshoot_the_lease_still_covers_the_requests_in_flight(
    env: Leased,
) -> None:
    # Found by the stateful test: the overshoot's charge took the whole lease, so the books
    # stopped counting B, and another process could admit credit B would still spend.
    account_id = await new_account(env.store, 1_000)
    a = await hold(env.ledger, account_id, 10)  # the lease grows to 10 + 64 x 10 = 650
    b = await hold(env.ledger, account_id, 600)
    settled = await env.ledger.settle(a, 700)  # type: ignore[arg-type]  # 690 above its hold
    assert settled.overshoot_nanos == 690
    books = await check_invariants(env.store, account_id)
    assert (books.balance_nanos, books.leased_nanos) == (300, 600)  # B is still covered
    assert await env.ledger.available(account_id) == 300 - 600  # as on the hold path
    with pytest.raises(InsufficientBalance):
        await env.another_process().hold(account_id, "other", 300, forwarded=True)
    await env.ledger.settle(b, 100)  # type: ignore[arg-type]
    await env.leases.close()
    books = await check_invariants(env.store, account_id)
    assert (books.balance_nanos, books.leased_nanos) == (200, 0)
