"""Credit leases on SQLite: the statements `tollgate.billing.leases` runs on the hot writer.

Every function here is an operation for `LoopWriter.run` (synchronous, inside the group
transaction, so `BEGIN IMMEDIATE` has already serialised it against every other writer):

- `acquire`: reserve more of an account's available credit (`balance - held - leased`) for the
  calling process's lease;
- `settle_batch`: write a batch of lease-admitted requests once they are over, and take the
  charges out of the balance and of the lease (one `UPDATE` per account, whatever the batch
  size). A request charged its measured usage (nearly all of them) is one `usage` ledger entry,
  reference `lease:{hold id}` (unique per account, like every reference): its hold lived in
  memory and in the journal, and one row per request instead of two halves the writes of the
  billing hot path. Any other outcome (released, or charged an estimate) also gets its hold
  row, resolved, and then a charge's entry is `hold:{hold id}`, exactly as on the hold path;
- `release`: give a lease's remaining credit back;
- `recover_owner`: resolve a dead process's journal: every admitted hold that never reached the
  database is written as its resolution line says (it was answered with that charge before its
  batch was committed) or, without one (it was in flight), settled at its recovery charge
  (flagged estimated); then its leases are released.

The rows are in the formats `tollgate.store.holds_sqlite` writes, so everything else (the APIs,
maintenance) reads them as any other entry and hold; the invariant checks know the `lease:`
reference (`tollgate.billing.ledger.check_invariants`).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tollgate.store._util import insert_rows, ordered_id
from tollgate.store.holds import NOTE_MAX, Hold, InsufficientFunds, Settlement
from tollgate.store.holds_sqlite import stamp_us
from tollgate.store.journal import Admitted, Resolution
from tollgate.store.ledger import AccountMissing

_AVAILABLE = "SELECT balance_nanos, held_nanos + leased_nanos FROM accounts WHERE id = ?"
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
    "resolved_at, charged_nanos, estimated, balance_after_nanos, ledger_entry_id)"
)
_HOLD_ROW = "(?, ?, ?, ?, ?, ?, ?, 1, '[]', ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_ENTRY = (
    "INSERT INTO ledger_entries (id, account_id, kind, amount_nanos, balance_after_nanos, note, "
    "reference, created_at, model)"
)
_ENTRY_ROW = "(?, ?, 'usage', ?, ?, ?, ?, ?, ?)"
_OWNER_LEASES = "SELECT id, account_id, amount_nanos FROM credit_leases WHERE owner = ?"
_KNOWN_HOLDS = "SELECT id FROM holds WHERE id IN ({})"
_KNOWN_ENTRIES = "SELECT reference FROM ledger_entries WHERE account_id = ? AND reference IN ({})"
_LEASE_ENTRY = (
    "SELECT id, amount_nanos, balance_after_nanos FROM ledger_entries "
    "WHERE account_id = ? AND reference = ?"
)
LEASE_REFERENCE = "lease:"  # + the hold id: the reference of a lease-admitted request's entry


@dataclass(slots=True)
class Resolved:
    """One lease-admitted request, over: what its ledger entry (or released hold row) says."""

    admitted: Admitted
    charge_nanos: int  # 0: released (nothing produced, or nothing to charge)
    estimated: bool
    note: str
    # Filled in by `settle_batch` (the entry id may be chosen before, when the request is
    # answered ahead of its commit):
    ledger_entry_id: str | None = None
    balance_after_nanos: int | None = None


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
) -> tuple[int, int]:
    """Lease up to `want` more (at least `at_least`) of the account's available credit; returns
    what was granted and the account's balance. Raises `InsufficientFunds(at_least, available)`
    when not even `at_least` is available, and `AccountMissing`."""
    row = conn.execute(_AVAILABLE, (account_id,)).fetchone()
    if row is None:
        raise AccountMissing(account_id)
    balance = int(row[0])
    available = balance - int(row[1])
    if available < at_least:
        raise InsufficientFunds(at_least, available)
    granted = min(want, available)
    conn.execute(_LEASE_MORE, (granted, account_id))
    conn.execute(_UPSERT_LEASE, (lease_id, owner, account_id, granted, now, expires))
    return granted, balance


def settle_batch(
    conn: sqlite3.Connection,
    lease_id: str,
    account_id: str,
    batch: Sequence[Resolved],
    cut: int,
    now: str,
) -> None:
    """Write one account's resolved requests, resolved at `now` (stored form); `cut` (at most
    the lease) comes out of the lease. Fills each item's `balance_after_nanos` and
    `ledger_entry_id`."""
    total = sum(item.charge_nanos for item in batch)
    row = conn.execute(_CHARGE, (total, cut, now, account_id)).fetchone()
    if row is None:
        raise AccountMissing(account_id)
    if cut:
        conn.execute(_CUT_LEASE, (cut, lease_id))
    running = int(row[0]) + total  # the balance before this batch; each entry after its own
    holds, entries = [], []
    for item in batch:
        a, charge = item.admitted, item.charge_nanos
        running -= charge
        item.balance_after_nanos = running
        if charge:
            item.ledger_entry_id = item.ledger_entry_id or ordered_id()
            note = item.note if len(item.note) <= NOTE_MAX else item.note[:NOTE_MAX]
            prefix = "hold:" if item.estimated else LEASE_REFERENCE
            entries.append(
                (item.ledger_entry_id, account_id, -charge, running, note, prefix + a.hold_id)
                + (now, a.model)
            )
        if item.estimated or not charge:
            holds.append(_hold_row(item, now))
    if entries:
        insert_rows(conn, _INSERT_ENTRY, _ENTRY_ROW, entries)
    if holds:
        insert_rows(conn, _INSERT_HOLD, _HOLD_ROW, holds)


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


def _hold_row(item: Resolved, now: str) -> tuple[object, ...]:
    """The resolved hold row of a request released or charged an estimate."""
    a = item.admitted
    created = stamp_us(a.created_us)
    return (
        a.hold_id,
        a.account_id,
        a.request_id,
        a.gateway_id,
        a.model,
        a.amount_nanos,
        a.recovery_charge_nanos,
        "settled" if item.charge_nanos else "released",
        created,
        now,  # expires_at: never read for a resolved hold
        created,  # forwarded at once (the journal line was written before the call)
        now,
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
    conn: sqlite3.Connection,
    owner: str,
    admitted: Sequence[Admitted],
    note: str,
    now: str,
    resolutions: Mapping[str, Resolution] | None = None,
) -> tuple[int, int]:
    """Resolve a dead owner's journal; returns (requests written, nanos charged)."""
    known = _resolved(conn, admitted)
    lost: dict[str, list[Resolved]] = defaultdict(list)
    for a in admitted:
        if a.hold_id not in known:
            known.add(a.hold_id)  # a line written twice is charged once
            answered = resolutions.get(a.hold_id) if resolutions else None
            if answered is not None:  # as the client was told
                item = Resolved(a, answered.charge_nanos, answered.estimated, answered.note)
                item.ledger_entry_id = answered.ledger_entry_id
            else:
                charge = a.recovery_charge_nanos
                item = Resolved(a, charge, charge > 0, note)
            lost[a.account_id].append(item)
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


def _resolved(conn: sqlite3.Connection, admitted: Sequence[Admitted]) -> set[str]:
    """The hold ids among `admitted` that are over: a `lease:` entry or a hold row names them."""
    known: set[str] = set()
    ids = [a.hold_id for a in admitted]
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        sql = _KNOWN_HOLDS.format(",".join("?" * len(chunk)))
        known.update(str(r[0]) for r in conn.execute(sql, chunk))
    by_account: dict[str, list[str]] = defaultdict(list)
    for a in admitted:
        by_account[a.account_id].append(LEASE_REFERENCE + a.hold_id)
    for account_id, references in by_account.items():
        for start in range(0, len(references), 500):
            chunk = references[start : start + 500]
            sql = _KNOWN_ENTRIES.format(",".join("?" * len(chunk)))
            rows = conn.execute(sql, (account_id, *chunk))
            known.update(str(r[0]).removeprefix(LEASE_REFERENCE) for r in rows)
    return known


def lease_settlement(conn: sqlite3.Connection, hold: Hold) -> Settlement | None:
    """How a lease-admitted request charged its measured usage was settled (its `lease:` entry),
    as a replay; None when there is no such entry."""
    row = conn.execute(_LEASE_ENTRY, (hold.account_id, LEASE_REFERENCE + hold.id)).fetchone()
    if row is None:
        return None
    entry_id, amount, balance = row
    charge = -int(amount)
    return Settlement(
        hold_id=hold.id,
        account_id=hold.account_id,
        state="settled",
        charged_nanos=charge,
        held_nanos=hold.amount_nanos,
        overshoot_nanos=max(0, charge - hold.amount_nanos),
        estimated=False,
        balance_after_nanos=int(balance),
        ledger_entry_id=str(entry_id),
        replayed=True,
    )


def lease_owners(conn: sqlite3.Connection) -> list[str]:
    """Every process that holds a lease."""
    return [str(r[0]) for r in conn.execute("SELECT DISTINCT owner FROM credit_leases")]
