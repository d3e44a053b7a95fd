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
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Sim, provider_env
from tests.e2e.test_billing_cost import cost_comment, header_nanos, run_store
from tests.support.accounts import Seeded, seed_account
from tests.support.databases import fresh_postgres_database
from tests.support.server import free_port
from tollgate.billing.ledger import RECOVERY_NOTE, Ledger, check_invariants
from tollgate.providers.registry import PROVIDERS
from tollgate.store import Store
from tollgate.store import holds as holds_repo
from tollgate.store import ledger as ledger_repo
from tollgate.store.holds import Hold
from tollgate.store.journal import journal_dir, read_lines
from tollgate.store.snapshot import AccountSnapshot

MODEL = "gpt-4o-mini"
IN_FLIGHT = 4
PG_HOLD_TTL = 3  # seconds: PostgreSQL start-up recovery waits for holds to expire
SLOW = "[sim output-tokens=200 chunks=50 chunk-delay-ms=200]"  # about 10 s per stream


@dataclass
class Target:
    database_url: str
    env: dict[str, str]  # the gateway process's TOLLGATE_* settings


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path, sim: Sim) -> Iterator[Target]:
    env = {
        "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
        "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "TOLLGATE_LOG_LEVEL": "warning",
        **provider_env(sim.url),
    }
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'crash.db'}"
        yield Target(url, {**env, "TOLLGATE_DATABASE_URL": url})
        return
    with fresh_postgres_database() as url:  # its own: the test checks every hold in it
        yield Target(
            url,
            {
                **env,
                "TOLLGATE_DATABASE_URL": url,
                "TOLLGATE_BILLING__HOLD_TTL_SECONDS": str(PG_HOLD_TTL),
            },
        )


STARTED: list[subprocess.Popen[bytes]] = []  # killed after each test, whatever happened


@pytest.fixture(autouse=True)
def no_gateway_outlives_its_test() -> Iterator[None]:
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


class GatewayProcess:
    """`python -m tollgate serve` as a child process, on a port of its own."""

    def __init__(self, target: Target, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        keys = {row.key_env for row in PROVIDERS.values()}
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_") and k not in keys
        }
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tollgate", "serve", "--port", str(self.port)],
                env={**inherited, **target.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        STARTED.append(self.process)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the gateway exited at start-up:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return  # start-up (with its recovery) is complete
            time.sleep(0.05)
        self.process.kill()
        raise AssertionError(f"the gateway did not become ready:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> None:
        """A clean shutdown (uvicorn re-raises the SIGTERM it handled once it is done)."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) in (0, -signal.SIGTERM), self.tail()
        assert "Traceback" not in self.log.read_text(errors="replace"), self.tail()

    def client(self, account: Seeded) -> openai.OpenAI:
        return openai.OpenAI(
            api_key=account.token,
            base_url=f"{self.url}/v1/{account.account_id}/default/openai",
            max_retries=0,
            timeout=30,
        )


def messages(text: str) -> Any:
    return [{"role": "user", "content": text}]


def complete(client: openai.OpenAI, *, stream: bool, prompt: str) -> int:
    """One request to its end; returns the cost its client was shown, in nano-dollars."""
    chat = client.chat.completions
    if not stream:
        raw = chat.with_raw_response.create(
            model=MODEL, messages=messages(prompt), max_completion_tokens=40
        )
        assert raw.parse().choices[0].message.content
        return header_nanos(raw.headers, "cf-aig-cost")
    with chat.with_streaming_response.create(
        model=MODEL, messages=messages(prompt), max_completion_tokens=40, stream=True
    ) as response:
        body = b"".join(response.iter_bytes())
    cost, _remaining, estimated = cost_comment(body)
    assert not estimated and b"data: [DONE]" in body
    return cost


def snapshot(database_url: str, account_id: str) -> tuple[AccountSnapshot, list[Hold]]:
    """The account's books after `check_invariants` passed on them, and every open hold."""

    async def read(store: Store) -> tuple[AccountSnapshot, list[Hold]]:
        books = await check_invariants(store, account_id)
        return books, await holds_repo.open_holds(store, expired_by=None, limit=1000)

    return run_store(database_url, read)


def usage_entries(database_url: str, account_id: str) -> list[Any]:
    async def read(store: Store) -> list[Any]:
        entries = await ledger_repo.list_entries(store, account_id, limit=10_000)
        return [entry for entry in entries if entry.kind == "usage"]

    return run_store(database_url, read)


def hold_never_forwarded(target: Target, account_id: str) -> Hold:
    """A hold whose request never reached the upstream, as the same Ledger API leaves it when a
    process dies between holding and forwarding. (The gateway's meter holds and marks forwarded
    in one write, so its own requests never are in that state; this covers the other branch of
    the recovery policy in the same crash.)"""
    ttl = timedelta(seconds=PG_HOLD_TTL)

    async def hold(store: Store) -> Hold:
        ledger = Ledger(store, hold_ttl=ttl)
        return await ledger.hold(account_id, "crash-before-forwarding", 1_000_000, model=MODEL)

    return run_store(target.database_url, hold)


@dataclass(frozen=True)
class InFlight:
    """A forwarded request's hold, wherever it was recorded (a row, or a journal line)."""

    id: str
    amount_nanos: int
    recovery_charge_nanos: int


def in_flight(
    target: Target, account_id: str, books: AccountSnapshot, open_holds: list[Hold]
) -> list[InFlight]:
    """The forwarded holds of requests in flight: open rows on PostgreSQL; on SQLite, the journal
    lines of lease-admitted requests that have no hold row or `lease:` entry yet."""
    rows = [
        InFlight(h.id, h.amount_nanos, h.recovery_charge_nanos)
        for h in open_holds
        if h.forwarded_at is not None
    ]
    if "postgresql" in target.database_url:
        return rows
    directory = journal_dir(target.database_url.removeprefix("sqlite:///"))
    lines = [a for path in sorted(directory.glob("*.jsonl")) for a in read_lines(path)]
    stored = {hold.id for hold in books.holds}  # over: a hold row, or a `lease:` entry
    stored |= {(e.reference or "").removeprefix("lease:") for e in books.entries}
    journaled = [
        InFlight(a.hold_id, a.amount_nanos, a.recovery_charge_nanos)
        for a in lines
        if a.account_id == account_id and a.hold_id not in stored
    ]
    return rows + journaled


def wait_until_expired(holds: list[Hold]) -> None:
    last = max(hold.expires_at for hold in holds)
    while (left := (last - datetime.now(UTC)).total_seconds()) >= 0:
        time.sleep(left + 0.1)


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
        unforwarded = hold_never_forwarded(target, account.account_id)
        books_before, open_before = snapshot(target.database_url, account.account_id)
        forwarded = in_flight(target, account.account_id, books_before, open_before)
        assert len(forwarded) == IN_FLIGHT
        assert unforwarded.id in {h.id for h in open_before}
        first.kill()
        client.close()

    # The crash lost nothing committed and left the holds open; the invariants hold already.
    books, still_open = snapshot(target.database_url, account.account_id)
    assert {h.id for h in still_open} == {h.id for h in open_before}
    assert books.held_nanos == sum(h.amount_nanos for h in open_before)
    assert in_flight(target, account.account_id, books, still_open) == forwarded
    if "postgresql" in target.database_url:
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
