"""Twenty SIGKILLs of a gateway at points a seeded RNG picks, each followed by a restart on the
same store (SQLite file, and PostgreSQL), with the books checked exactly after every one.

Each cycle, under concurrent traffic:

- **background clients** (another model, so their charges are told apart) send the same small
  request over and over, streamed or not, until the kill cuts one of theirs at whatever point it
  had reached: connecting, held, forwarded, streaming, settled but not yet answered;
- **main clients** complete a few requests first, each keeping the cost its client was shown
  (`cf-aig-cost`, or the stream's `: cf-aig-cost=` comment);
- then, by the cycle's draw, **requests the kill cuts in flight**: streams whose upstream has not
  answered yet (before any chunk), streams read part way (mid-stream), non-streamed requests
  waiting for their upstream; or none, the kill following the last answer by a few
  milliseconds (between requests, racing the settlement batch's commit); sometimes also a
  request whose body never fully arrives, and a hold its process never forwarded (the Ledger
  API's, as in test_billing_crash.py);
- **SIGKILL**.

After the kill the books already satisfy `check_invariants` (the ledger sums to the balance), and
every main request cut in flight has its hold (a row, or on SQLite a line of the dead process's
journal). After the restart (on PostgreSQL once those holds expired, with a 1-second hold TTL):
no hold is open and no credit leased; each hold in flight was settled once at its recovery
estimate, flagged, with the recovery note (the policy in `tollgate.billing.ledger`); the main
clients' costs appear exactly once each; a cut background request is charged at most once,
either its recovery estimate or its exact cost (it was settled and the answer lost); the
never-forwarded hold is released; the request whose body never arrived costs nothing; and the
balance is what the clients' view says it must be.

The gateways are forked from a process that imported tollgate once (`PreloadedServe`): a fresh
interpreter spends seconds importing, twenty times.
"""

from __future__ import annotations

import random
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import openai
import pytest

from tests.e2e.conftest import Sim
from tests.support.accounts import Seeded, seed_account
from tests.support.crash_books import (
    MODEL,
    InFlight,
    complete,
    hold_never_forwarded,
    in_flight,
    journal_files,
    messages,
    snapshot,
    usage_entries,
    wait_until_expired,
)
from tests.support.gateway_process import (
    GatewayProcess,
    PreloadedServe,
    Target,
    gateway_target,
    kill_leftovers,
)
from tollgate.billing.ledger import RECOVERY_NOTE
from tollgate.store.holds import Hold
from tollgate.store.ledger import LedgerEntry

SEED = 20_250_917
CYCLES = 20
PG_HOLD_TTL = 1  # seconds: PostgreSQL start-up recovers only expired holds
MAIN_PRICE = f"openai/{MODEL}"
BACKGROUND_MODEL = "gpt-4o"
BACKGROUND_PRICE = f"openai/{BACKGROUND_MODEL}"
BACKGROUND_CLIENTS = 2
MAIN_CLIENTS = 3
# Upstream behaviours of the requests the kill cuts: each lasts far longer than a cycle.
HELD_UP = "[sim latency-ms=6000 output-tokens=30 chunks=5]"  # no answer yet: before any chunk
LONG_STREAM = "[sim output-tokens=400 chunks=200 chunk-delay-ms=100]"  # 20 s of chunks
KINDS = ("between requests", "before any chunk", "mid-stream", "non-streamed in flight", "mixed")
CUT = ("before any chunk", "mid-stream", "non-streamed in flight")
# How a client learns its gateway died (the SDKs here run on `httpx2`).
CONNECTION_LOST = (openai.APIConnectionError, httpx2.TransportError)


@dataclass(frozen=True)
class Plan:
    """One cycle, drawn from the seeded RNG before it runs."""

    number: int
    kind: str
    completed: tuple[tuple[bool, ...], ...]  # per main client: stream? for each request
    cut: tuple[str, ...]  # the kinds of the main requests cut in flight
    chunks_read: tuple[int, ...]  # for each mid-stream one: chunks read before the kill
    body_never_arrives: bool
    unforwarded_hold: bool
    delay: float  # seconds from the last sync point to the kill

    @classmethod
    def draw(cls, rng: random.Random, number: int) -> Plan:
        kind = KINDS[number % len(KINDS)] if number < len(KINDS) else rng.choice(KINDS)
        completed = tuple(
            tuple(rng.random() < 0.5 for _ in range(rng.randint(0, 2))) for _ in range(MAIN_CLIENTS)
        )
        if kind == "between requests":
            cut: tuple[str, ...] = ()
            completed = ((True,), *completed[1:])  # at least one answer just before the kill
        elif kind == "mixed":
            cut = tuple(rng.choice(CUT) for _ in range(rng.randint(2, 5)))
        else:
            cut = (kind,) * rng.randint(1, 4)
        chunks = tuple(rng.randint(1, 5) for k in cut if k == "mid-stream")
        between = kind == "between requests"
        return cls(
            number,
            kind,
            completed,
            cut,
            chunks,
            body_never_arrives=rng.random() < 0.4,
            unforwarded_hold=rng.random() < 0.3,
            delay=rng.uniform(0, 0.03) if between else rng.uniform(0, 0.3),
        )


@dataclass
class Outcome:
    """What the clients saw of one cycle."""

    plan: Plan
    seen_main: list[int] = field(default_factory=list)  # costs shown, main model
    seen_background: list[int] = field(default_factory=list)
    background_cut: int = 0  # background requests whose client saw no answer
    unforwarded: Hold | None = None


@pytest.fixture(scope="module")
def preloaded() -> Iterator[PreloadedServe]:
    server = PreloadedServe()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path, sim: Sim) -> Iterator[Target]:
    with gateway_target(request.param, tmp_path, sim.url, pg_hold_ttl=PG_HOLD_TTL) as target:
        yield target


@pytest.fixture(autouse=True)
def no_gateway_outlives_its_test() -> Iterator[None]:
    yield
    kill_leftovers()


class Background(threading.Thread):
    """One client sending the same request until a failure (the kill) stops it."""

    PROMPT = "Background traffic: the same request every time."

    def __init__(self, client: openai.OpenAI, seed: int) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.rng = random.Random(seed)
        self.seen: list[int] = []
        self.cut = 0
        self.failure: BaseException | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            stream = self.rng.random() < 0.5
            try:
                cost = complete(
                    self.client,
                    stream=stream,
                    prompt=self.PROMPT,
                    model=BACKGROUND_MODEL,
                    max_tokens=16,
                )
            except CONNECTION_LOST:
                self.cut = 1  # its answer was lost: held or not, settled or not
                return
            except BaseException as exc:  # surfaced by the test
                self.failure = exc
                return
            self.seen.append(cost)
            self.stopped.wait(self.rng.uniform(0.005, 0.04))


class CutRequest(threading.Thread):
    """A main request the kill is meant to cut; `in_flight` is set once it is."""

    def __init__(self, client: openai.OpenAI, kind: str, tag: str, chunks: int) -> None:
        super().__init__(daemon=True)
        self.client, self.kind, self.tag, self.chunks = client, kind, tag, chunks
        self.in_flight = threading.Event()
        self.answered = False  # must stay False: the kill comes first
        self.failure: BaseException | None = None

    def run(self) -> None:
        chat = self.client.chat.completions
        try:
            if self.kind == "non-streamed in flight":
                chat.create(model=MODEL, messages=messages(f"{self.tag} {HELD_UP}"))
            else:
                directive = LONG_STREAM if self.kind == "mid-stream" else HELD_UP
                prompt = messages(f"{self.tag} {directive}")
                with chat.with_streaming_response.create(
                    model=MODEL, messages=prompt, stream=True
                ) as response:
                    lines = response.iter_lines()
                    read = 0
                    while read < self.chunks:
                        read += next(lines).startswith("data: {")
                    self.in_flight.set()
                    for _ in lines:  # a client reading on: the kill cuts it
                        pass
            self.answered = True
        except CONNECTION_LOST:
            pass  # the kill
        except BaseException as exc:  # surfaced by the test
            self.failure = exc


def send_body_never_finished(gateway: GatewayProcess, account: Seeded, tag: str) -> socket.socket:
    """A request whose head arrived and whose body never will: the gateway is still reading it."""
    body = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "{tag}'.encode()
    head = (
        f"POST /v1/{account.account_id}/default/openai/chat/completions HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {account.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body) + 500}\r\n\r\n"
    ).encode()
    connection = socket.create_connection(("127.0.0.1", gateway.port))
    connection.sendall(head + body)
    return connection


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def forwarded_tags(sim: Sim, tags: set[str]) -> set[str]:
    """Which of `tags` reached the simulated upstream."""
    bodies = [str(request["body"]) for request in sim.requests()]
    return {tag for tag in tags if any(tag in body for body in bodies)}


def run_until_killed(
    gateway: GatewayProcess, account: Seeded, target: Target, sim: Sim, plan: Plan
) -> Outcome:
    outcome = Outcome(plan)
    sim.clear()  # what reached it is polled below: only this cycle's requests
    http = httpx2.Client(verify=False)  # plain HTTP: no TLS context to load
    clients = [
        gateway.client(account, http=http) for _ in range(MAIN_CLIENTS + BACKGROUND_CLIENTS + 1)
    ]
    background = [
        Background(clients[MAIN_CLIENTS + i], seed=SEED + 100 * plan.number + i)
        for i in range(BACKGROUND_CLIENTS)
    ]
    for thread in background:
        thread.start()
    # First, so that a kill drawn to follow the last answer closely does.
    unsent_tag = f"kill-cycle-{plan.number}-body-never-arrives"
    unsent = None
    if plan.body_never_arrives:
        unsent = send_body_never_finished(gateway, account, unsent_tag)
    if plan.unforwarded_hold:
        outcome.unforwarded = hold_never_forwarded(
            target.database_url, account.account_id, ttl_seconds=PG_HOLD_TTL
        )

    def answered(index: int) -> list[int]:
        prompt = f"Cycle {plan.number}, client {index}: answered before the kill."
        return [
            complete(clients[index], stream=stream, prompt=prompt)
            for stream in plan.completed[index]
        ]

    seen: list[list[int]] = [[] for _ in range(MAIN_CLIENTS)]
    runners = [
        threading.Thread(target=lambda i=i: seen[i].extend(answered(i)))
        for i in range(MAIN_CLIENTS)
    ]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(timeout=60)
    outcome.seen_main = [cost for costs in seen for cost in costs]
    assert len(outcome.seen_main) == sum(map(len, plan.completed)), "a main request failed"

    chunks = iter(plan.chunks_read)
    cut = [
        CutRequest(
            clients[-1],
            kind,
            f"kill-cycle-{plan.number}-cut-{i}",
            next(chunks) if kind == "mid-stream" else 0,
        )
        for i, kind in enumerate(plan.cut)
    ]
    for request in cut:
        request.start()
    held_up = {r.tag for r in cut if r.kind != "mid-stream"}
    wait_for(lambda: forwarded_tags(sim, held_up) == held_up, "the held-up requests to reach it")
    wait_for(lambda: all(r.in_flight.is_set() for r in cut if r.kind == "mid-stream"), "chunks")
    time.sleep(plan.delay)
    gateway.kill()

    if unsent is not None:
        unsent.close()
    for thread in background:
        thread.stopped.set()
    for thread in [*background, *cut]:
        thread.join(timeout=30)
        assert not thread.is_alive()
    http.close()
    failures = [thread.failure for thread in [*background, *cut] if thread.failure is not None]
    assert not failures, failures
    assert not any(r.answered for r in cut), "a request meant to be cut was answered first"
    assert forwarded_tags(sim, {unsent_tag}) == set()
    outcome.seen_background = [cost for thread in background for cost in thread.seen]
    outcome.background_cut = sum(thread.cut for thread in background)
    return outcome


def check_after_the_kill(target: Target, account: Seeded, outcome: Outcome) -> list[InFlight]:
    """The books of the dead process's store: consistent already, with every main request cut
    in flight held. Returns the holds in flight (waits for them to expire on PostgreSQL)."""
    books, open_holds = snapshot(target.database_url, account.account_id)  # invariants hold
    flying = in_flight(target.database_url, account.account_id, books, open_holds)
    main = [hold for hold in flying if hold.model == MAIN_PRICE]
    background = [hold for hold in flying if hold.model == BACKGROUND_PRICE]
    assert len(main) + len(background) == len(flying), flying
    assert len(main) == len(outcome.plan.cut), (outcome.plan, flying)
    assert len(background) <= outcome.background_cut, (outcome, flying)
    if outcome.unforwarded is not None:
        assert outcome.unforwarded.id in {hold.id for hold in open_holds}
    if target.postgres:
        wait_until_expired(open_holds)
    return flying


def priced_as(entry: LedgerEntry, price_id: str) -> bool:
    """A usage entry's note starts with the price it was charged at (`billing/meter.py`)."""
    return (entry.note or "").startswith(f"{price_id}:")


@dataclass
class Ledgered:
    """The books as the clients' view says they must be, carried from cycle to cycle."""

    balance_nanos: int
    entry_ids: set[str] = field(default_factory=set)
    background_cost: int | None = None  # the same request each time: one cost


def check_after_the_restart(
    target: Target, account: Seeded, outcome: Outcome, flying: list[InFlight], books: Ledgered
) -> None:
    after, still_open = snapshot(target.database_url, account.account_id)  # invariants hold
    assert still_open == [] and after.held_nanos == 0, still_open
    assert after.leased_nanos == after.lease_rows_nanos == 0  # the dead process's lease is back
    entries = usage_entries(target.database_url, account.account_id)
    assert len({entry.reference for entry in entries}) == len(entries), "a request billed twice"
    new = {entry.reference: entry for entry in entries if entry.id not in books.entry_ids}
    for hold in flying:  # each settled once, at the recovery estimate it was held with
        entry = new.pop(f"hold:{hold.id}", None)
        assert entry is not None, f"the hold of a request in flight was not recovered: {hold}"
        assert (entry.amount_nanos, entry.note) == (-hold.recovery_charge_nanos, RECOVERY_NOTE)
        result = after.resolutions[hold.id]
        assert (result.state, result.estimated) == ("settled", True)
        assert result.charged_nanos == hold.recovery_charge_nanos > 0
    rest = list(new.values())
    assert all(entry.note != RECOVERY_NOTE for entry in rest), "recovered what was not in flight"
    main = [-e.amount_nanos for e in rest if (e.note or "").startswith(f"{MAIN_PRICE}:")]
    background = [
        -e.amount_nanos for e in rest if (e.note or "").startswith(f"{BACKGROUND_PRICE}:")
    ]
    assert len(main) + len(background) == len(rest), rest  # nothing else was charged
    assert sorted(main) == sorted(outcome.seen_main), outcome.plan  # exactly once each
    # A background request cut by the kill: charged its recovery estimate (in `flying`), or its
    # exact cost when it was settled and its answer lost; at most one charge per cut request.
    seen = Counter(outcome.seen_background)
    extra = Counter(background) - seen
    assert Counter(background) >= seen, "a background client's cost was not charged"
    assert len(set(seen) | set(extra)) <= 1, "one request, one cost"
    books.background_cost = books.background_cost or next(iter(seen | extra), None)
    assert set(extra) <= {books.background_cost}
    recovered_background = [hold for hold in flying if hold.model == BACKGROUND_PRICE]
    assert extra.total() + len(recovered_background) <= outcome.background_cut
    if outcome.unforwarded is not None:  # never forwarded: released, nothing charged
        released = after.resolutions[outcome.unforwarded.id]
        assert (released.state, released.charged_nanos) == ("released", 0)
    charged = sum(outcome.seen_main) + sum(outcome.seen_background)
    charged += sum(hold.recovery_charge_nanos for hold in flying)
    charged += extra.total() * (books.background_cost or 0)
    assert after.balance_nanos == books.balance_nanos - charged
    books.balance_nanos = after.balance_nanos
    books.entry_ids = {entry.id for entry in entries}


@pytest.mark.timeout(900)
def test_twenty_sigkills_at_random_points_lose_and_double_nothing(
    target: Target, tmp_path: Path, sim: Sim, preloaded: PreloadedServe
) -> None:
    account = seed_account(target.database_url, credits_cents=100_000, name="kill cycles")
    rng = random.Random(SEED)
    plans = [Plan.draw(rng, number) for number in range(CYCLES)]
    assert {plan.kind for plan in plans} == set(KINDS)  # the draw covers every kill point
    assert any(p.body_never_arrives for p in plans) and any(p.unforwarded_hold for p in plans)
    books = Ledgered(snapshot(target.database_url, account.account_id)[0].balance_nanos)
    log = tmp_path / "gateway.log"
    started = time.monotonic()
    gateway = GatewayProcess(target, log, launcher=preloaded)
    restarts: list[float] = []
    cut = 0
    for plan in plans:
        outcome = run_until_killed(gateway, account, target, sim, plan)
        flying = check_after_the_kill(target, account, outcome)
        gateway = GatewayProcess(target, log, launcher=preloaded)
        restarts.append(gateway.start_seconds)
        check_after_the_restart(target, account, outcome, flying, books)
        cut += len(flying)

    gateway.stop()  # a clean stop after all that: nothing left behind
    final, still_open = snapshot(target.database_url, account.account_id)
    assert still_open == [] and final.leased_nanos == 0
    assert final.balance_nanos == books.balance_nanos
    if not target.postgres:
        assert journal_files(target.database_url) == []
    assert cut >= CYCLES  # the kills did cut requests in flight (about two a cycle)
    print(
        f"{CYCLES} kills, {2 * CYCLES + 1} invariant checks, {cut} holds recovered; restarts "
        f"{min(restarts):.2f}/{statistics.median(restarts):.2f}/{max(restarts):.2f} s "
        f"(min/median/max); {time.monotonic() - started:.1f} s in all"
    )
