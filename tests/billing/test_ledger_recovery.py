"""Crash recovery: abandoned holds resolved by the documented policy, exactly once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta

from tests.billing import test_ledger
from tests.billing.test_ledger import START, Env, FakeClock, daily, new_account
from tollgate.billing.ledger import RECOVERY_NOTE, Ledger, RecoveryReport, check_invariants
from tollgate.store import Store
from tollgate.store import accounts as account_repo
from tollgate.store import holds as holds_repo
from tollgate.store import ledger as ledger_repo
from tollgate.store.migrate import migrate

env = test_ledger.env  # the fixture: a migrated store, a fake clock, a ledger, a funded account


async def test_expired_holds_are_released_or_settled_at_the_estimate(env: Env) -> None:
    limit = daily(env.account_id, 10_000)
    never = await env.ledger.hold(env.account_id, "never", 300, limits=[limit])
    sent = await env.ledger.hold(
        env.account_id, "sent", 500, recovery_charge_nanos=120, limits=[limit]
    )
    await env.ledger.mark_forwarded(sent)
    sent_default = await env.ledger.hold(env.account_id, "sent-default", 100)
    await env.ledger.mark_forwarded(sent_default)
    env.clock.advance(minutes=10)
    fresh = await env.ledger.hold(env.account_id, "fresh", 50, recovery_charge_nanos=5)
    await env.ledger.mark_forwarded(fresh)
    env.clock.advance(minutes=5)  # 12:15: the first three expire now; `fresh` at 12:25

    report = await env.ledger.recover()
    await env.check()
    assert report == RecoveryReport(released=1, settled=2, charged_nanos=220, already_resolved=0)
    found = await account_repo.get_account(env.store, env.account_id)
    assert found is not None and (found.balance_nanos, found.held_nanos) == (780, 50)
    assert await env.ledger.spent(limit) == 120  # `never` released, `sent` at 120

    late = await env.ledger.settle(sent, 480)  # the live process, too late: no double charge
    assert (late.replayed, late.charged_nanos, late.estimated) == (True, 120, True)
    assert (await env.ledger.release(never)).state == "released"
    entries = await ledger_repo.list_entries(env.store, env.account_id)
    assert [e.note for e in entries if e.kind == "usage"] == [RECOVERY_NOTE, RECOVERY_NOTE]

    assert await env.ledger.recover() == RecoveryReport(0, 0, 0, 0)  # a second run: nothing
    env.clock.advance(minutes=10)
    assert await env.ledger.recover() == RecoveryReport(0, 1, 5, 0)
    await env.check()
    found = await account_repo.get_account(env.store, env.account_id)
    assert found is not None and (found.balance_nanos, found.held_nanos) == (775, 0)


async def test_recover_all_open_resolves_unexpired_holds(env: Env) -> None:
    await env.ledger.hold(env.account_id, "a", 100)
    b = await env.ledger.hold(env.account_id, "b", 100, recovery_charge_nanos=30)
    await env.ledger.mark_forwarded(b)
    assert await env.ledger.recover() == RecoveryReport(0, 0, 0, 0)
    assert await env.ledger.recover(all_open=True) == RecoveryReport(1, 1, 30, 0)
    await env.check()


async def test_concurrent_recovery_from_several_processes_resolves_each_hold_once(
    database_url: str,
) -> None:
    clock = FakeClock()
    stores = [Store(database_url) for _ in range(4)]
    try:
        await migrate(stores[0])
        account_id = await new_account(stores[0], 1_000_000)
        ledger = Ledger(stores[0], clock)
        for i in range(40):
            hold = await ledger.hold(account_id, f"r{i}", 1_000, recovery_charge_nanos=10 * i)
            if i % 2:
                await ledger.mark_forwarded(hold)
        clock.advance(hours=1)
        reports = await asyncio.gather(*(Ledger(s, clock).recover() for s in stores * 2))
        assert sum(r.released for r in reports) == 20
        assert sum(r.settled for r in reports) == 20
        assert sum(r.charged_nanos for r in reports) == sum(10 * i for i in range(1, 40, 2))
        await check_invariants(stores[0], account_id)
        found = await account_repo.get_account(stores[0], account_id)
        assert found is not None and found.held_nanos == 0
        assert found.balance_nanos == 1_000_000 - sum(10 * i for i in range(1, 40, 2))
        assert await holds_repo.open_holds(stores[0], expired_by=None, limit=10) == []
    finally:
        for store in stores:
            await store.close()


CRASHING_PROCESS = """
import asyncio, os, signal, sys
from sqlalchemy import text
from tollgate.billing.ledger import Ledger
from tollgate.store import Store

async def main(url: str, account_id: str) -> None:
    store = Store(url)
    ledger = Ledger(store)
    for i in range(6):
        hold = await ledger.hold(account_id, f"crash-{i}", 1000, recovery_charge_nanos=100)
        if i % 2:
            await ledger.mark_forwarded(hold)
    settled = await ledger.hold(account_id, "done", 1000)
    await ledger.settle(settled, 700)
    async with store.write() as conn:  # killed inside an uncommitted transaction
        await conn.execute(text("UPDATE accounts SET held_nanos = held_nanos + 999"))
        os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_a_process_killed_with_holds_open_is_recovered_at_restart(database_url: str) -> None:
    store = Store(database_url)
    try:
        await migrate(store)
        account_id = await new_account(store, 100_000)
    finally:
        await store.close()
    crashed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", textwrap.dedent(CRASHING_PROCESS), database_url, account_id],
        capture_output=True,
        timeout=60,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]

    restarted = Store(database_url)
    try:
        await check_invariants(restarted, account_id)  # the killed transaction left nothing
        found = await account_repo.get_account(restarted, account_id)
        assert found is not None and (found.balance_nanos, found.held_nanos) == (99_300, 6_000)
        ledger = Ledger(restarted, FakeClock(START + timedelta(days=365 * 20)))
        assert await ledger.recover() == RecoveryReport(3, 3, 300, 0)
        assert await ledger.recover() == RecoveryReport(0, 0, 0, 0)
        await check_invariants(restarted, account_id)
        found = await account_repo.get_account(restarted, account_id)
        assert found is not None and (found.balance_nanos, found.held_nanos) == (99_000, 0)
    finally:
        await restarted.close()


async def test_an_extended_hold_is_not_recovered_while_its_call_runs(env: Env) -> None:
    hold = await env.ledger.hold(env.account_id, "long-stream", 500)
    await env.ledger.mark_forwarded(hold)
    env.clock.advance(minutes=14)
    extended = await env.ledger.extend(hold)
    assert extended.expires_at == env.clock.now + timedelta(minutes=15)
    env.clock.advance(minutes=14)  # 28 minutes after the hold: past its first expiry
    assert await env.ledger.recover() == RecoveryReport(0, 0, 0, 0)
    result = await env.ledger.settle(hold, 321)
    assert (result.replayed, result.charged_nanos, result.estimated) == (False, 321, False)
    assert (await env.ledger.extend(hold)).state == "settled"  # a late heartbeat: harmless
    await env.check()


async def test_a_hold_marked_forwarded_at_once_is_settled_by_recovery(env: Env) -> None:
    hold = await env.ledger.hold(env.account_id, "a", 400, recovery_charge_nanos=40, forwarded=True)
    assert hold.forwarded_at == START
    env.clock.advance(minutes=16)
    assert await env.ledger.recover() == RecoveryReport(0, 1, 40, 0)
    await env.check()
