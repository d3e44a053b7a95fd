"""Credit leases on SQLite: the statements `tollgate.billing.leases` runs on the hot writer.

Every function here is an operation for `LoopWriter.run` (synchronous, inside the group
transaction, so `BEGIN IMMEDIATE` has already serialised it against every other writer):

- `acquire`: reserve more of an account's available credit (`balance - held - leased`) for the
  calling process's lease;
- `settle_batch`: write a batch of lease-admitted requests once they are over: each hold row
  (already settled or released) and each charge's ledger entry, and take the charges out of the
  balance and of the lease (one `UPDATE` per account, whatever the batch size);
- `release`: give a lease's remaining credit back;
- `recover_owner`: resolve a dead process's journal: every admitted hold that never reached the
  database is settled at its recovery charge (flagged estimated), then its leases are released.

The rows are in the formats `tollgate.store.holds_sqlite` writes, so everything else (the
invariant checks, the APIs, maintenance) reads them as any other hold and entry.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from tollgate.store._util import ordered_id
from tollgate.store.holds import NOTE_MAX, InsufficientFunds
from tollgate.store.journal import Admitted
from tollgate.store.ledger import AccountMissing

_AVAILABLE = "SELECT balance_nanos - held_nanos - leased_nanos FROM accounts WHERE id = ?"
_LEASE_MORE = "UPDATE accounts SET leased_nanos = leased_nanos + ? WHERE id = ?"
_UPSERT_LEASE = (
    "INSERT INTO credit_leases (id, owner, account_id, amount_nanos, created_at, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
    "amount_nanos = amount_nanos + excluded.amount_nanos, expires_at = excluded.expires_at"
)
_CHARGE = (
    "UPDATE accounts SET balance_nanos = balance_nanos - ?, leased_nanos = leased_nanos - ?, "
    "modified_at = ? WHERE id = ? RETURNING balance_nanos"
)
_CUT_LEASE = "UPDATE credit_leases SET amount_nanos = amount_nanos - ? WHERE id = ?"
_UNLEASE = "UPDATE accounts SET leased_nanos = leased_nanos - ? WHERE id = ?"
_DROP_LEASE = "DELETE FROM credit_leases WHERE id = ?"
_EXTEND = "UPDATE credit_leases SET expires_at = ? WHERE owner = ?"
_INSERT_HOLD = (
    "INSERT INTO holds (id, account_id, request_id, gateway_id, model, amount_nanos, "
    "recovery_charge_nanos, uses_credits, buckets, state, created_at, expires_at, forwarded_at, "
    "resolved_at, charged_nanos, estimated, balance_after_nanos, ledger_entry_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 1, '[]', ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ENTRY = (
    "INSERT INTO ledger_entries (id, account_id, kind, amount_nanos, balance_after_nanos, note, "
    "reference, created_at, model) VALUES (?, ?, 'usage', ?, ?, ?, ?, ?, ?)"
)
_OWNER_LEASES = "SELECT id, account_id, amount_nanos FROM credit_leases WHERE owner = ?"
_KNOWN_HOLDS = "SELECT id FROM holds WHERE id IN ({})"


@dataclass(slots=True)
class Resolved:
    """One lease-admitted request, over: what its hold row and ledger entry say."""

    admitted: Admitted
    charge_nanos: int  # 0: released (nothing produced, or nothing to charge)
    estimated: bool
    note: str
    resolved_at: str  # stored form
    # Filled in by `settle_batch`:
    balance_after_nanos: int | None = None
    ledger_entry_id: str | None = None


def acquire(
    conn: sqlite3.Connection,
    lease_id: str,
    owner: str,
    account_id: str,
    *,
    want: int,
    at_least: int,
    now: str,
    expires: str,
) -> int:
    """Lease up to `want` more (at least `at_least`) of the account's available credit; returns
    what was granted. Raises `InsufficientFunds(at_least, available)` when not even `at_least`
    is available, and `AccountMissing`."""
    row = conn.execute(_AVAILABLE, (account_id,)).fetchone()
    if row is None:
        raise AccountMissing(account_id)
    available = int(row[0])
    if available < at_least:
        raise InsufficientFunds(at_least, available)
    granted = min(want, available)
    conn.execute(_LEASE_MORE, (granted, account_id))
    conn.execute(_UPSERT_LEASE, (lease_id, owner, account_id, granted, now, expires))
    return granted


def settle_batch(
    conn: sqlite3.Connection,
    lease_id: str,
    account_id: str,
    batch: Sequence[Resolved],
    cut: int,
    now: str,
) -> None:
    """Write one account's resolved requests; `cut` (at most the lease) comes out of the lease.
    Fills each item's `balance_after_nanos` and `ledger_entry_id`."""
    total = sum(item.charge_nanos for item in batch)
    row = conn.execute(_CHARGE, (total, cut, now, account_id)).fetchone()
    if row is None:
        raise AccountMissing(account_id)
    if cut:
        conn.execute(_CUT_LEASE, (cut, lease_id))
    running = int(row[0]) + total  # the balance before this batch; each entry after its own
    holds, entries = [], []
    for item in batch:
        running -= item.charge_nanos
        item.balance_after_nanos = running
        a = item.admitted
        if item.charge_nanos:
            item.ledger_entry_id = ordered_id()
            entries.append(
                (
                    item.ledger_entry_id,
                    account_id,
                    -item.charge_nanos,
                    running,
                    item.note[:NOTE_MAX],
                    f"hold:{a.hold_id}",
                    item.resolved_at,
                    a.model,
                )
            )
        holds.append(_hold_row(item))
    conn.executemany(_INSERT_HOLD, holds)
    if entries:
        conn.executemany(_INSERT_ENTRY, entries)


class RowRefused(Exception):
    """A constraint refused a row of the batch (a request id used before); nothing was written."""


def settle_groups(
    conn: sqlite3.Connection, groups: Sequence[tuple[str, str, Sequence[Resolved], int]], now: str
) -> None:
    """`settle_batch` for each (lease id, account id, resolved requests, cut) in one batch."""
    try:
        for lease_id, account_id, batch, cut in groups:
            settle_batch(conn, lease_id, account_id, batch, cut, now)
    except sqlite3.IntegrityError as exc:
        raise RowRefused(str(exc)) from None


def _hold_row(item: Resolved) -> tuple[object, ...]:
    a = item.admitted
    return (
        a.hold_id,
        a.account_id,
        a.request_id,
        a.gateway_id,
        a.model,
        a.amount_nanos,
        a.recovery_charge_nanos,
        "settled" if item.charge_nanos else "released",
        a.created_at,
        a.expires_at,
        a.created_at,  # forwarded at once (the journal line was written before the call)
        item.resolved_at,
        item.charge_nanos,
        int(item.estimated),
        item.balance_after_nanos,
        item.ledger_entry_id,
    )


def release(conn: sqlite3.Connection, lease_id: str, account_id: str, amount: int) -> None:
    """Give the lease's remaining `amount` back to the account and drop the lease."""
    conn.execute(_UNLEASE, (amount, account_id))
    conn.execute(_DROP_LEASE, (lease_id,))


def extend(conn: sqlite3.Connection, owner: str, expires: str) -> None:
    conn.execute(_EXTEND, (expires, owner))


def recover_owner(
    conn: sqlite3.Connection, owner: str, admitted: Sequence[Admitted], note: str, now: str
) -> tuple[int, int]:
    """Resolve a dead owner's journal; returns (requests settled, nanos charged)."""
    known: set[str] = set()
    ids = [a.hold_id for a in admitted]
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        sql = _KNOWN_HOLDS.format(",".join("?" * len(chunk)))
        known.update(str(r[0]) for r in conn.execute(sql, chunk))
    lost: dict[str, list[Resolved]] = defaultdict(list)
    for a in admitted:
        if a.hold_id not in known:
            known.add(a.hold_id)  # a line written twice is charged once
            lost[a.account_id].append(Resolved(a, a.recovery_charge_nanos, True, note, now))
    leases = {str(r[1]): (str(r[0]), int(r[2])) for r in conn.execute(_OWNER_LEASES, (owner,))}
    settled = charged = 0
    for account_id in sorted(set(lost) | set(leases)):
        lease_id, amount = leases.get(account_id, (f"{owner}:{account_id}", 0))
        batch = lost.get(account_id, [])
        if batch:
            settle_batch(conn, lease_id, account_id, batch, 0, now)
            settled += len(batch)
            charged += sum(item.charge_nanos for item in batch)
        if account_id in leases:
            release(conn, lease_id, account_id, amount)
    return settled, charged


def lease_owners(conn: sqlite3.Connection) -> list[str]:
    """Every process that holds a lease."""
    return [str(r[0]) for r in conn.execute("SELECT DISTINCT owner FROM credit_leases")]
