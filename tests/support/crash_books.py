"""Reading an account's books around a gateway crash, from the test's own process.

What the tests compare: the books after `check_invariants` passed on them, the account's usage
entries, and the holds of requests in flight wherever the dead process recorded them (an open
hold row, or on SQLite a line in its credit-lease journal, `tollgate.store.journal`). Also the
client side: one request to its end, returning the cost its client was shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai

from tests.e2e.test_billing_cost import cost_comment, header_nanos, run_store
from tollgate.billing.ledger import Ledger, check_invariants
from tollgate.store import Store
from tollgate.store import holds as holds_repo
from tollgate.store import ledger as ledger_repo
from tollgate.store.holds import Hold
from tollgate.store.journal import Lines, journal_dir, read_segment
from tollgate.store.ledger import LedgerEntry
from tollgate.store.snapshot import AccountSnapshot

MODEL = "gpt-4o-mini"


def messages(text: str) -> Any:
    return [{"role": "user", "content": text}]


def complete(
    client: openai.OpenAI, *, stream: bool, prompt: str, model: str = MODEL, max_tokens: int = 40
) -> int:
    """One request to its end; returns the cost its client was shown, in nano-dollars."""
    chat = client.chat.completions
    if not stream:
        raw = chat.with_raw_response.create(
            model=model, messages=messages(prompt), max_completion_tokens=max_tokens
        )
        assert raw.parse().choices[0].message.content
        return header_nanos(raw.headers, "cf-aig-cost")
    with chat.with_streaming_response.create(
        model=model, messages=messages(prompt), max_completion_tokens=max_tokens, stream=True
    ) as response:
        body = b"".join(response.iter_bytes())
    cost, _remaining, estimated = cost_comment(body)
    assert not estimated and b"data: [DONE]" in body
    return cost


def snapshot(database_url: str, account_id: str) -> tuple[AccountSnapshot, list[Hold]]:
    """The account's books after `check_invariants` passed on them, and every open hold."""

    async def read(store: Store) -> tuple[AccountSnapshot, list[Hold]]:
        books = await check_invariants(store, account_id)
        return books, await holds_repo.open_holds(store, expired_by=None, limit=10_000)

    return run_store(database_url, read)


def usage_entries(database_url: str, account_id: str) -> list[LedgerEntry]:
    async def read(store: Store) -> list[LedgerEntry]:
        entries = await ledger_repo.list_entries(store, account_id, limit=100_000)
        return [entry for entry in entries if entry.kind == "usage"]

    return run_store(database_url, read)


def hold_never_forwarded(database_url: str, account_id: str, *, ttl_seconds: int) -> Hold:
    """A hold whose request never reached the upstream, as the same Ledger API leaves it when a
    process dies between holding and forwarding. (The gateway's meter holds and marks forwarded
    in one write, so its own requests never are in that state; this covers the other branch of
    the recovery policy in the same crash.)"""

    async def hold(store: Store) -> Hold:
        ledger = Ledger(store, hold_ttl=timedelta(seconds=ttl_seconds))
        request = f"crash-before-forwarding-{time.time_ns()}"
        return await ledger.hold(account_id, request, 1_000_000, model=f"openai/{MODEL}")

    return run_store(database_url, hold)


@dataclass(frozen=True)
class InFlight:
    """A forwarded request's hold, wherever it was recorded (a row, or a journal line)."""

    id: str
    amount_nanos: int
    recovery_charge_nanos: int
    model: str | None  # the price id, e.g. "openai/gpt-4o-mini"


def journal_lines(database_url: str) -> Lines:
    """Every line of every journal next to a SQLite database."""
    lines = Lines()
    directory = journal_dir(database_url.removeprefix("sqlite:///"))
    for path in sorted(directory.glob("*.jsonl")):
        read_segment(path, lines)
    return lines


def in_flight(
    database_url: str, account_id: str, books: AccountSnapshot, open_holds: list[Hold]
) -> list[InFlight]:
    """The forwarded holds of requests in flight: open rows on PostgreSQL; on SQLite also the
    journal lines of lease-admitted requests with no hold row, no `lease:` entry and no
    resolution line (a request answered before its batch was committed has one: it is over)."""
    rows = [
        InFlight(h.id, h.amount_nanos, h.recovery_charge_nanos, h.model)
        for h in open_holds
        if h.forwarded_at is not None and h.account_id == account_id
    ]
    if database_url.startswith("postgresql"):
        return rows
    lines = journal_lines(database_url)
    stored = {hold.id for hold in books.holds}  # over: a hold row, or a `lease:` entry
    stored |= {(e.reference or "").removeprefix("lease:") for e in books.entries}
    journaled = [
        InFlight(a.hold_id, a.amount_nanos, a.recovery_charge_nanos, a.model)
        for a in lines.admitted
        if a.account_id == account_id
        and a.hold_id not in stored
        and a.hold_id not in lines.resolutions
    ]
    return rows + journaled


def wait_until_expired(holds: list[Hold]) -> None:
    if not holds:
        return
    last = max(hold.expires_at for hold in holds)
    while (left := (last - datetime.now(UTC)).total_seconds()) >= 0:
        time.sleep(left + 0.05)


def journal_files(database_url: str) -> list[Path]:
    """What is left in the journal directory of a SQLite database (locks and segments)."""
    directory = journal_dir(database_url.removeprefix("sqlite:///"))
    return sorted(directory.iterdir()) if directory.is_dir() else []
