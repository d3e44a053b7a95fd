"""A request longer than the hold TTL keeps its hold: the meter extends what it has in flight, so
no recovery sweep (this process's maintenance, or another process's) settles a live stream at the
prompt estimate. Real store on both engines, injected clock."""

from __future__ import annotations

from datetime import timedelta

from tests.billing import test_ledger
from tests.billing.test_ledger import Env, new_account
from tollgate.billing.catalog import load_catalog
from tollgate.billing.ledger import check_invariants
from tollgate.billing.meter import KEEP_ALIVE_MAX_AGE, Admission, Meter
from tollgate.billing.requests import RequestFacts
from tollgate.canonical import Usage
from tollgate.store import holds as holds_repo
from tollgate.store.models import GatewayRecord

env = test_ledger.env  # a migrated store, a fake clock, a ledger (15-minute TTL)

BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}'
FACTS = RequestFacts("chat", "gpt-4o-mini", 100, stream=True, wants_usage_chunk=False)


async def _admit(env: Env, meter: Meter, account_id: str) -> Admission:
    now = env.clock()
    gateway = GatewayRecord(account_id, "default", {}, True, now, now)
    return await meter.admit(
        account_id=account_id,
        gateway=gateway,
        provider="openai",
        facts=FACTS,
        body=BODY,
        unified=True,
    )


async def test_a_stream_longer_than_the_ttl_is_not_recovered_while_it_runs(env: Env) -> None:
    account_id = await new_account(env.store, 10**12)
    meter = Meter(env.store, load_catalog(), env.ledger)
    streaming = await _admit(env, meter, account_id)
    assert streaming.hold is not None
    for _ in range(6):  # 6 x 10 minutes: four times the TTL, extended every third of it
        env.clock.advance(minutes=10)
        assert await meter.keep_alive() == 1
        report = await env.ledger.recover()
        assert report.settled == report.released == 0
    settlement = await meter.settle(streaming, Usage(20, 80), produced_bytes=400)
    assert settlement is not None
    assert not settlement.replayed and not settlement.estimated  # measured, not recovered
    assert streaming.price is not None
    assert settlement.charged_nanos == meter.catalog.cost("openai", streaming.price, Usage(20, 80))
    assert await meter.keep_alive() == 0  # settled: nothing left in flight
    await check_invariants(env.store, account_id)


async def test_without_the_keep_alive_the_sweep_would_settle_it_at_the_estimate(env: Env) -> None:
    # The control: the same request, nobody extends it, and recovery takes it mid-stream.
    account_id = await new_account(env.store, 10**12)
    meter = Meter(env.store, load_catalog(), env.ledger)
    streaming = await _admit(env, meter, account_id)
    env.clock.advance(minutes=20)
    assert (await env.ledger.recover()).settled == 1
    late = await meter.settle(streaming, Usage(20, 80), produced_bytes=400)
    assert late is not None and late.replayed and late.estimated


async def test_a_hold_never_settled_is_let_go_after_the_maximum_age(env: Env) -> None:
    account_id = await new_account(env.store, 10**12)
    meter = Meter(env.store, load_catalog(), env.ledger)
    leaked = await _admit(env, meter, account_id)  # a pipeline bug: never settled
    assert leaked.hold is not None
    env.clock.advance(seconds=KEEP_ALIVE_MAX_AGE.total_seconds() - 60)
    assert await meter.keep_alive() == 1
    env.clock.advance(minutes=2)  # now past the maximum age: no longer extended
    assert await meter.keep_alive() == 0
    env.clock.advance(minutes=20)
    assert (await env.ledger.recover()).settled == 1  # resolved by the policy, not held forever
    stored = await holds_repo.get_hold(env.store, leaked.hold.id)
    assert stored is not None and stored.state == "settled"


async def test_the_background_task_starts_and_stops(env: Env) -> None:
    meter = Meter(env.store, load_catalog(), env.ledger)
    meter.start_keep_alive()
    assert meter._keep_alive is not None and not meter._keep_alive.done()
    await meter.stop_keep_alive()
    assert meter._keep_alive is None
    await meter.stop_keep_alive()  # idempotent
    assert env.ledger.hold_ttl == timedelta(minutes=15)


async def test_usage_the_caller_estimated_is_charged_as_measured_and_flagged(env: Env) -> None:
    # Not keep-alive, but the same meter: a provider that reports no count (Gemini's batch
    # embeddings) is charged the gateway's estimate exactly, flagged estimated in the ledger.
    account_id = await new_account(env.store, 10**12)
    meter = Meter(env.store, load_catalog(), env.ledger)
    admission = await _admit(env, meter, account_id)
    settlement = await meter.settle(admission, Usage(20, 80), produced_bytes=400, estimated=True)
    assert settlement is not None and settlement.estimated
    assert admission.price is not None
    assert settlement.charged_nanos == meter.catalog.cost("openai", admission.price, Usage(20, 80))
    snapshot = await check_invariants(env.store, account_id)
    assert snapshot.resolutions[settlement.hold_id].estimated
