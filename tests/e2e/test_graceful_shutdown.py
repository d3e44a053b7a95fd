"""SIGTERM to a real `python -m tollgate serve` while the official openai SDK's streams are in
flight (SQLite and PostgreSQL).

On SIGTERM the server closes its listening socket at once, lets what is in flight finish for up to
`server.shutdown_grace_seconds` (uvicorn's `timeout_graceful_shutdown`), cancels what still runs
then, and shuts the application down: the settlement batches are written, the credit leases given
back, the journal closed and removed, the waiting request logs written.

- Streams that end within the grace period end normally ([DONE] and their cost comment), the
  process exits as soon as they have, each request is charged exactly what its client was shown,
  and its log (written only at shutdown here: the log writer's interval is a minute) has that
  cost.
- A stream longer than the grace period is cut at the deadline. It is billed as any stream that
  broke off with output relayed and no usage seen (docs/billing.md, "What is billed when";
  `Meter.settle`): the prompt estimate plus a token per 4 bytes relayed, flagged estimated, in the
  ledger and in its log. A request still waiting for its upstream's answer then gets an error
  status, and its hold is settled at shutdown as crash recovery would have at the next start
  (forwarded: the hold-time estimate, flagged; `Meter.settle_abandoned`).

Either way no hold is left open, no credit leased, and on SQLite the journal directory is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import asyncpg
import httpx2
import openai
import pytest

from tests.e2e.conftest import Sim
from tests.e2e.test_billing_cost import cost_comment, header_nanos, run_store
from tests.support.accounts import Seeded, seed_account
from tests.support.crash_books import (
    MODEL,
    journal_files,
    messages,
    snapshot,
    usage_entries,
)
from tests.support.gateway_process import GatewayProcess, Target, gateway_target, kill_leftovers
from tollgate.billing.catalog import load_catalog
from tollgate.billing.meter import SHUTDOWN_NOTE
from tollgate.canonical import Usage
from tollgate.store import Store
from tollgate.store import logs as log_repo
from tollgate.store.logs import LogRecord

PRICE = f"openai/{MODEL}"
# A drained `tollgate serve` exits 0 (uvicorn re-raises the SIGTERM it drained on; `serve`
# swallows it, cli.py `_run_uvicorn`).
DRAINED = (0,)
SHORT_STREAM = "[sim output-tokens=30 chunks=10 chunk-delay-ms=150]"  # about 1.4 s
SLOW_ANSWER = "[sim latency-ms=1200 output-tokens=20]"  # a non-streamed request, 1.2 s
LONG_STREAM = "[sim output-tokens=400 chunks=200 chunk-delay-ms=100]"  # 20 s
HELD_UP = "[sim latency-ms=8000 output-tokens=20]"  # the upstream answers after 8 s
CUT = 3  # streams outlasting the grace period, cut together at its end
LOCKED_PAST = 1.5  # seconds the database stays slow after the deadline (PostgreSQL)


class Started(NamedTuple):
    target: Target
    gateway: GatewayProcess
    account: Seeded


@pytest.fixture
def start(tmp_path: Path, sim: Sim, request: pytest.FixtureRequest) -> Iterator[Starter]:
    """Starts the gateway with a grace period; its store lives until the test's end."""
    engine = request.param
    with contextlib.ExitStack() as stores:

        def started(grace: float) -> Started:
            settings = {
                "TOLLGATE_SERVER__SHUTDOWN_GRACE_SECONDS": str(grace),
                # Logs wait in memory for a minute: only the shutdown's flush writes them.
                "TOLLGATE_LOGS__FLUSH_INTERVAL_MS": "60000",
            }
            target = stores.enter_context(
                gateway_target(engine, tmp_path, sim.url, pg_hold_ttl=900, **settings)
            )
            account = seed_account(target.database_url, credits_cents=1_000, name="drained")
            return Started(target, GatewayProcess(target, tmp_path / "gateway.log"), account)

        yield started
        kill_leftovers()


Starter = Callable[[float], Started]
ENGINES = pytest.mark.parametrize(
    "start", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


class Request(threading.Thread):
    """One request through the official SDK, in a thread; keeps what its client saw."""

    def __init__(
        self, client: openai.OpenAI, prompt: str, *, stream: bool, held_up: bool = False
    ) -> None:
        super().__init__(daemon=True)
        self.client, self.prompt, self.stream = client, prompt, stream
        # Under way: a chunk has arrived, or (not streamed, or its upstream `held_up` before
        # answering) it was sent; the test also waits until the upstream has it.
        self.in_flight = threading.Event()
        if held_up or not stream:
            self.in_flight.set()
        self.log_id: str | None = None
        self.body = b""
        self.cost: int | None = None  # the cost shown to the client, if it was
        self.error: BaseException | None = None
        self.ended_at = math.inf

    def run(self) -> None:
        chat = self.client.chat.completions
        try:
            if self.stream:
                with chat.with_streaming_response.create(
                    model=MODEL, messages=messages(self.prompt), stream=True
                ) as response:
                    self.log_id = response.headers["cf-aig-log-id"]
                    for chunk in response.iter_bytes():
                        self.body += chunk
                        self.in_flight.set()
                self.cost, _remaining, estimated = cost_comment(self.body)
                assert not estimated and self.body.count(b"data: [DONE]") == 1
            else:
                raw = chat.with_raw_response.create(model=MODEL, messages=messages(self.prompt))
                assert raw.parse().choices[0].message.content
                self.log_id = raw.headers["cf-aig-log-id"]
                self.cost = header_nanos(raw.headers, "cf-aig-cost")
        except BaseException as exc:  # the test looks at it
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.in_flight.set()


def in_flight(requests: list[Request], sim: Sim) -> None:
    """Wait until every request is under way: a chunk relayed, or the upstream has it."""
    deadline = time.monotonic() + 30
    for request in requests:
        assert request.in_flight.wait(timeout=30)
    while not all(any(r.prompt in str(s["body"]) for s in sim.requests()) for r in requests):
        assert time.monotonic() < deadline, "a request never reached the upstream"
        time.sleep(0.02)
    assert all(r.error is None for r in requests), [r.error for r in requests]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def stop_gracefully(gateway: GatewayProcess, requests: list[Request]) -> tuple[float, int, float]:
    """SIGTERM; checks new connections are refused while `requests` still run. Returns when the
    signal was sent, the exit status, and when the process had exited."""
    sent = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    deadline = sent + 2
    while not refused(gateway.port):  # the listening socket closes within a loop tick or two
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.02)
    still_running = [r for r in requests if r.is_alive()]
    assert still_running, "the requests ended before the drain could be seen"
    while any(r.is_alive() for r in still_running):
        assert refused(gateway.port), "a new connection was accepted while draining"
        time.sleep(0.1)
    returncode = gateway.process.wait(timeout=60)
    return sent, returncode, time.monotonic()


def read_logs(target: Target, account: Seeded, log_ids: list[str]) -> list[LogRecord]:
    async def read(store: Store) -> list[LogRecord]:
        found = [await log_repo.get_log(store, account.account_id, "default", i) for i in log_ids]
        assert all(record is not None for record in found), "a request's log was lost"
        return [record for record in found if record is not None]

    return run_store(target.database_url, read)


def assert_books_closed(target: Target, account: Seeded) -> None:
    """No hold open, no credit leased, no journal left: the shutdown closed everything."""
    books, open_holds = snapshot(target.database_url, account.account_id)  # invariants hold
    assert open_holds == [] and books.held_nanos == 0
    assert books.leased_nanos == books.lease_rows_nanos == 0
    if not target.postgres:
        assert journal_files(target.database_url) == []


@ENGINES
def test_sigterm_lets_streams_in_flight_finish_then_exits(
    start: Starter,
    sim: Sim,
) -> None:
    grace = 15.0
    target, gateway, account = start(grace)
    with gateway.client(account) as client:
        requests = [
            Request(client, f"Drained stream {i}. {SHORT_STREAM}", stream=True) for i in range(3)
        ]
        requests.append(Request(client, f"Drained answer. {SLOW_ANSWER}", stream=False))
        for request in requests:
            request.start()
        in_flight(requests, sim)
        sent, returncode, exited = stop_gracefully(gateway, requests)

    assert returncode in DRAINED, gateway.tail()
    for request in requests:
        request.join(timeout=5)
        assert request.error is None, request.error
    assert all(isinstance(r.cost, int) and r.cost > 0 for r in requests)
    last_answer = max(r.ended_at for r in requests)
    assert sent < last_answer < exited < last_answer + 5  # it waited for them, then no longer
    log = gateway.log.read_text(errors="replace")
    assert "Traceback" not in log and "ERROR" not in log, gateway.tail()

    assert_books_closed(target, account)
    entries = usage_entries(target.database_url, account.account_id)
    assert sorted(-e.amount_nanos for e in entries) == sorted(r.cost for r in requests)
    assert all(
        e.note and e.note.startswith(f"{PRICE}:") and "estimated" not in e.note for e in entries
    )
    logs = read_logs(target, account, [r.log_id for r in requests if r.log_id])
    assert len(logs) == len(requests)
    assert [(r.cost_nanos, r.cost_estimated) for r in logs] == [(q.cost, False) for q in requests]


class RowLock(threading.Thread):
    """Another PostgreSQL session holding the account's row (as a concurrent top-up or credit
    grant would) from when `after` ends until `until` (a `time.monotonic()`): the settlements
    that need the row wait meanwhile."""

    def __init__(self, target: Target, account: Seeded, after: Request, until: float) -> None:
        super().__init__(daemon=True)
        self.target, self.account, self.after, self.until = target, account, after, until
        self.held = (math.inf, math.inf)  # from, to

    def run(self) -> None:
        self.after.join()
        asyncio.run(self._hold())

    async def _hold(self) -> None:
        connection = await asyncpg.connect(self.target.database_url)
        try:
            async with connection.transaction():
                row = "SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE"
                await connection.execute(row, self.account.account_id)
                locked = time.monotonic()
                await asyncio.sleep(self.until - locked)
            self.held = (locked, time.monotonic())
        finally:
            await connection.close()


@ENGINES
def test_requests_longer_than_the_grace_are_cut_at_the_deadline_and_billed_by_policy(
    start: Starter, sim: Sim
) -> None:
    """Cut at the deadline: streams part way (billed as streams that broke off), and requests
    whose upstream had not answered yet, streamed or not (their holds settled at shutdown at the
    hold-time estimate, as crash recovery would: `Meter.settle_abandoned`).

    On PostgreSQL the database is also slow at the deadline (a row lock held across it): the cut
    streams' settlements wait for it, and so does the shutdown (app.py, `_let_requests_finish`)
    instead of closing the store under them."""
    grace = 2.0
    target, gateway, account = start(grace)
    with gateway.client(account) as client:
        short = Request(client, f"Finishes in time. {SHORT_STREAM}", stream=True)
        longs = [
            Request(client, f"Outlasts the grace {i}. {LONG_STREAM}", stream=True)
            for i in range(CUT)
        ]
        unanswered = [
            Request(client, f"Never answered, not streamed. {HELD_UP}", stream=False),
            Request(client, f"Never answered, streamed. {HELD_UP}", stream=True, held_up=True),
        ]
        everything = [short, *longs, *unanswered]
        for request in everything:
            request.start()
        in_flight(everything, sim)
        lock = RowLock(target, account, short, until=time.monotonic() + grace + LOCKED_PAST)
        if target.postgres:
            lock.start()
        sent, returncode, exited = stop_gracefully(gateway, everything)
        for request in everything:
            request.join(timeout=10)
        if target.postgres:
            lock.join(timeout=10)

    assert returncode in DRAINED, gateway.tail()
    assert short.error is None and isinstance(short.cost, int) and short.cost > 0
    settled_by = sent + grace  # the deadline, or once the database answers
    if target.postgres:
        locked, unlocked = lock.held
        assert locked < sent + grace < unlocked  # the lock did cover the deadline
        settled_by = unlocked
    for cut in longs:  # cut: the connection closes mid-body, [DONE] and cost unsent
        assert isinstance(cut.error, httpx2.RemoteProtocolError), cut.error
        assert b"[DONE]" not in cut.body and b"cf-aig-cost" not in cut.body
        assert settled_by <= cut.ended_at < settled_by + 2
        assert cut.ended_at <= exited < settled_by + 4
    for cut in unanswered:  # an error status instead of an answer, at the deadline
        assert isinstance(cut.error, openai.APIStatusError), cut.error
        assert cut.cost is None and sent + grace <= cut.ended_at < settled_by + 2

    assert_books_closed(target, account)
    logs = read_logs(target, account, [r.log_id or "" for r in [short, *longs]])
    assert (logs[0].cost_nanos, logs[0].cost_estimated) == (short.cost, False)
    catalog = load_catalog()
    price = catalog.lookup("openai", MODEL)
    assert price is not None
    for cut, log in zip(longs, logs[1:], strict=True):
        # The policy: the prompt estimate in, a token per 4 bytes relayed out (below the output
        # the hold covers, which would cap it), at the model's price, flagged estimated.
        assert log.cost_estimated and log.tokens_in and log.tokens_out
        assert log.tokens_out == math.ceil(len(cut.body) / 4)
        assert log.cost_nanos == catalog.cost("openai", price, Usage(log.tokens_in, log.tokens_out))
    books, _ = snapshot(target.database_url, account.account_id)
    holds = {f"hold:{hold.id}": hold for hold in books.holds}
    entries = usage_entries(target.database_url, account.account_id)
    # One usage entry per request: the completed one's as its client saw it, the cut streams'
    # as their logs say, and the unanswered ones' at their hold-time estimates.
    unanswered_entries = [e for e in entries if e.note == SHUTDOWN_NOTE]
    assert sorted((-e.amount_nanos, e.note) for e in entries if e.note != SHUTDOWN_NOTE) == sorted(
        [(short.cost, completed_note(logs[0]))]
        + [(log.cost_nanos, completed_note(log) + " (estimated)") for log in logs[1:]]
    )
    assert len(unanswered_entries) == len(unanswered)
    for entry in unanswered_entries:  # forwarded, never answered: the hold-time estimate
        hold = holds[entry.reference or ""]
        result = books.resolutions[hold.id]
        assert (result.state, result.estimated) == ("settled", True)
        assert -entry.amount_nanos == result.charged_nanos == hold.recovery_charge_nanos > 0
    for entry in entries:  # a cut stream's prompt estimate: the one its hold was priced from
        if (entry.note or "").endswith(" (estimated)"):
            prompt_tokens = int((entry.note or "").removeprefix(f"{PRICE}: ").split(" in, ")[0])
            recovery = catalog.cost("openai", price, Usage(prompt_tokens, 0))
            assert holds[entry.reference or ""].recovery_charge_nanos == recovery


def completed_note(log: LogRecord) -> str:
    return f"{PRICE}: {log.tokens_in} in, {log.tokens_out} out"
