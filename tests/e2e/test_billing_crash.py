"""A real gateway process killed with SIGKILL while streams are mid-flight, then restarted twice on
the same store (SQLite file, and PostgreSQL).

Before the kill, some requests complete (streamed and not) and the test keeps the cost each one
showed its client (`cf-aig-cost`, or the stream's `: cf-aig-cost=` comment). Then several slow
streams are opened and read up to their first chunk: their holds are committed and forwarded.
The gateway is killed; the streams die with it.

Where an in-flight request's hold lives depends on the engine: on PostgreSQL it is an open row in
`holds`; on SQLite the request was admitted against the process's credit lease and its hold is a
line in the process's journal (`tollgate.billing.leases`), with no row until it is settled.

After the restart, by the recovery policy in `tollgate.billing.ledger`: every hold of a request
that was forwarded is settled at its hold-time `recovery_charge_nanos`, flagged estimated, with
the recovery note (on SQLite, read from the dead process's journal, whose lease is released);
a hold never forwarded is released. No hold is left open, the invariants hold
(`check_invariants`: the ledger sums to the balance, buckets, one usage entry per charge), every
completed request's cost appears exactly once as a usage entry equal to what its client saw, and
a second restart changes nothing.

SQLite: start-up resolves every open hold (one process owns the file). PostgreSQL: only expired
ones, so that gateway runs with a 3-second hold TTL and the test waits for the holds to expire.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Sim
from tests.support.accounts import seed_account
from tests.support.crash_books import (
    MODEL,
    complete,
    hold_never_forwarded,
    in_flight,
    messages,
    snapshot,
    usage_entries,
    wait_until_expired,
)
from tests.support.gateway_process import GatewayProcess, Target, gateway_target, kill_leftovers
from tollgate.billing.ledger import RECOVERY_NOTE

IN_FLIGHT = 4
PG_HOLD_TTL = 3  # seconds: PostgreSQL start-up recovery waits for holds to expire
SLOW = "[sim output-tokens=200 chunks=50 chunk-delay-ms=200]"  # about 10 s per stream


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path, sim: Sim) -> Iterator[Target]:
    with gateway_target(request.param, tmp_path, sim.url, pg_hold_ttl=PG_HOLD_TTL) as target:
        yield target


@pytest.fixture(autouse=True)
def no_gateway_outlives_its_test() -> Iterator[None]:
    yield
    kill_leftovers()


def test_sigkill_mid_stream_then_restart_recovers_every_hold_exactly_once(
    target: Target, tmp_path: Path
) -> None:
    account = seed_account(target.database_url, credits_cents=10_000, name="crash")
    log = tmp_path / "gateway.log"
    first = GatewayProcess(target, log)
    client = first.client(account)
    seen = [
        complete(client, stream=stream, prompt=f"Request {i} before the crash.")
        for i, stream in enumerate([False, True, False, True])
    ]
    assert all(cost > 0 for cost in seen)

    with contextlib.ExitStack() as streams:
        readers = []  # kept: a line iterator that is dropped closes its stream
        for i in range(IN_FLIGHT):
            response = streams.enter_context(
                client.chat.completions.with_streaming_response.create(
                    model=MODEL,
                    messages=messages(f"Stream {i}, cut off by the crash. {SLOW}"),
                    stream=True,
                )
            )
            readers.append(response.iter_lines())
            first_line = next(readers[-1])  # the upstream is answering: forwarded
            assert first_line.startswith("data: {"), first_line
        unforwarded = hold_never_forwarded(
            target.database_url, account.account_id, ttl_seconds=PG_HOLD_TTL
        )
        books_before, open_before = snapshot(target.database_url, account.account_id)
        forwarded = in_flight(target.database_url, account.account_id, books_before, open_before)
        assert len(forwarded) == IN_FLIGHT
        assert unforwarded.id in {h.id for h in open_before}
        first.kill()
        client.close()

    # The crash lost nothing committed and left the holds open; the invariants hold already.
    books, still_open = snapshot(target.database_url, account.account_id)
    assert {h.id for h in still_open} == {h.id for h in open_before}
    assert books.held_nanos == sum(h.amount_nanos for h in open_before)
    assert in_flight(target.database_url, account.account_id, books, still_open) == forwarded
    if target.postgres:
        wait_until_expired(still_open)

    second = GatewayProcess(target, log)
    after, left_open = snapshot(target.database_url, account.account_id)
    assert left_open == [] and after.held_nanos == 0
    assert after.leased_nanos == 0  # the dead process's credit lease is given back
    released = after.resolutions[unforwarded.id]
    assert (released.state, released.charged_nanos, released.ledger_entry_id) == (
        "released",
        0,
        None,
    )
    for hold in forwarded:
        result = after.resolutions[hold.id]
        assert (result.state, result.estimated) == ("settled", True)
        assert result.charged_nanos == hold.recovery_charge_nanos > 0
    entries = usage_entries(target.database_url, account.account_id)
    by_reference = {entry.reference: entry for entry in entries}
    assert len(by_reference) == len(entries) == len(seen) + IN_FLIGHT  # nothing doubled
    for hold in forwarded:
        entry = by_reference.pop(f"hold:{hold.id}")
        assert (entry.amount_nanos, entry.note) == (-hold.recovery_charge_nanos, RECOVERY_NOTE)
    # What is left are the completed requests: each cost its client saw, exactly once.
    assert sorted(-entry.amount_nanos for entry in by_reference.values()) == sorted(seen)
    recovered = sum(hold.recovery_charge_nanos for hold in forwarded)
    assert after.balance_nanos == 10_000 * 10**7 - sum(seen) - recovered

    # The restarted gateway serves and bills as before.
    with second.client(account) as again:
        seen.append(complete(again, stream=True, prompt="After the restart."))
    settled, _ = snapshot(target.database_url, account.account_id)
    assert settled.balance_nanos == after.balance_nanos - seen[-1]

    # Recovery is idempotent: another crash and restart with nothing in flight changes nothing.
    second.kill()
    third = GatewayProcess(target, log)
    final, left_open = snapshot(target.database_url, account.account_id)
    assert left_open == []
    # The money is exactly as it was; only the killed process's unused credit lease (SQLite)
    # was given back.
    unleased = {"leased_nanos": 0, "lease_rows_nanos": 0}
    assert dataclasses.replace(final, **unleased) == dataclasses.replace(settled, **unleased)
    assert final.leased_nanos == 0
    assert len(usage_entries(target.database_url, account.account_id)) == len(seen) + IN_FLIGHT
    third.stop()
