"""Holds on SQLite: the same admission and resolution as `tollgate.store.holds`, as plain SQL on
the event loop's group-committing writer thread (`tollgate.store.loop_writer`).

The statements, their order and their guarantees are those `tollgate.store.holds` documents;
only the execution differs. Each operation runs inside the writer's savepoint, so one that raises
(insufficient funds, a limit, a repeated request id) leaves nothing behind. SQLite has one writer
at a time (the group transaction holds the write lock), which is what serialises admissions.
The rows are written in SQLAlchemy's SQLite formats (datetimes as `YYYY-MM-DD HH:MM:SS.ffffff`
in UTC, booleans as 0/1), so everything else reads them through the usual tables.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from tollgate.store._util import ordered_id
from tollgate.store.engine import Store
from tollgate.store.holds import (
    NOTE_MAX,
    Hold,
    HoldMissing,
    InsufficientFunds,
    NewHold,
    RequestAlreadyHeld,
    Settlement,
    first_settlement,
)
from tollgate.store.ledger import AccountMissing
from tollgate.store.limits import LimitCheck, LimitShortfall, LimitsRefused

_ADMIT = (
    "UPDATE accounts SET held_nanos = held_nanos + ? "
    "WHERE id = ? AND balance_nanos - held_nanos - leased_nanos >= ? RETURNING id"
)
_AVAILABLE = "SELECT balance_nanos - held_nanos - leased_nanos FROM accounts WHERE id = ?"
_EXISTS = "SELECT 1 FROM accounts WHERE id = ?"
_INSERT_HOLD = (
    "INSERT INTO holds (id, account_id, request_id, gateway_id, model, amount_nanos, "
    "recovery_charge_nanos, uses_credits, buckets, state, created_at, expires_at, forwarded_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)"
)
_HOLD_BY_REQUEST = (
    "SELECT id, account_id, request_id, gateway_id, model, amount_nanos, recovery_charge_nanos, "
    "uses_credits, buckets, state, created_at, expires_at, forwarded_at "
    "FROM holds WHERE request_id = ?"
)
_SETTLED_HOLD = (
    "SELECT id, account_id, state, charged_nanos, amount_nanos, estimated, balance_after_nanos, "
    "ledger_entry_id FROM holds WHERE id = ?"
)
_ADD_TO_BUCKET = (
    "INSERT INTO spend_buckets (limit_key, bucket_start, amount_nanos) VALUES (?, ?, ?) "
    "ON CONFLICT (limit_key, bucket_start) "
    "DO UPDATE SET amount_nanos = amount_nanos + excluded.amount_nanos"
)
_CHARGE = (
    "UPDATE accounts SET balance_nanos = balance_nanos - ?, held_nanos = held_nanos - ?, "
    "modified_at = ? WHERE id = ? RETURNING balance_nanos"
)
_UNHOLD = "UPDATE accounts SET held_nanos = held_nanos - ? WHERE id = ? RETURNING balance_nanos"
_INSERT_ENTRY = (
    "INSERT INTO ledger_entries (id, account_id, kind, amount_nanos, balance_after_nanos, note, "
    "reference, created_at, model) VALUES (?, ?, 'usage', ?, ?, ?, ?, ?, ?)"
)
_CLAIM = (
    "UPDATE holds SET state = ?, charged_nanos = ?, estimated = ?, resolved_at = ?, "
    "balance_after_nanos = ?, ledger_entry_id = ? "
    "WHERE id = ? AND state = 'open' AND account_id = ? AND amount_nanos = ? "
    "AND uses_credits = ? AND buckets = ? RETURNING id"
)


def stamp(moment: datetime) -> str:
    """A datetime as SQLAlchemy's SQLite dialect stores it (naive UTC text)."""
    if moment.tzinfo is not UTC:  # the hot path's datetimes are UTC already: skip converting
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")


def stamp_us(micros: int) -> str:
    """`stamp` of a moment given in microseconds since the Unix epoch."""
    return stamp(datetime.fromtimestamp(micros / 1_000_000, UTC))


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


def encode_refs(refs: Sequence[tuple[str, int]]) -> str:
    """The `buckets` column: the same JSON `tollgate.store.holds` writes."""
    return orjson.dumps([list(ref) for ref in refs]).decode()


_IN_RANGE = "FROM spend_buckets WHERE limit_key = ? AND bucket_start >= ?"
_SPENT = "SELECT COALESCE(SUM(amount_nanos), 0) " + _IN_RANGE
_COUNTED = "SELECT bucket_start, amount_nanos " + _IN_RANGE
_BEFORE = " AND bucket_start < ?"


def _spend_query(check: LimitCheck, select: str) -> tuple[str, tuple[object, ...]]:
    """`select` (one of the constants above) over the check's range of buckets."""
    if check.count_until is None:
        return select, (check.key, check.count_from)
    return select + _BEFORE, (check.key, check.count_from, check.count_until)


def _admit_limits(conn: sqlite3.Connection, checks: Sequence[LimitCheck], amount: int) -> None:
    shortfalls = []
    for check in checks:
        sql, args = _spend_query(check, _SPENT)
        spent = int(conn.execute(sql, args).fetchone()[0])
        if spent + amount > check.limit_nanos:
            sql, args = _spend_query(check, _COUNTED)
            counted = tuple(sorted((int(s), int(a)) for s, a in conn.execute(sql, args)))
            shortfalls.append(LimitShortfall(check.key, spent, counted))
    if shortfalls:
        raise LimitsRefused(shortfalls)


def _add_to_buckets(conn: sqlite3.Connection, refs: Sequence[tuple[str, int]], delta: int) -> None:
    conn.executemany(_ADD_TO_BUCKET, [(key, start, delta) for key, start in refs])


def _hold_row(row: tuple[object, ...]) -> Hold:
    (id_, account, request, gateway, model, amount, recovery, credits, refs, state) = row[:10]
    created, expires, forwarded = row[10:]
    return Hold(
        id=str(id_),
        account_id=str(account),
        request_id=str(request),
        gateway_id=None if gateway is None else str(gateway),
        model=None if model is None else str(model),
        amount_nanos=int(amount),  # type: ignore[call-overload]
        recovery_charge_nanos=int(recovery),  # type: ignore[call-overload]
        uses_credits=bool(credits),
        buckets=tuple((str(k), int(s)) for k, s in orjson.loads(str(refs))),
        state=str(state),
        created_at=_moment(str(created)) or datetime.now(UTC),
        expires_at=_moment(str(expires)) or datetime.now(UTC),
        forwarded_at=_moment(None if forwarded is None else str(forwarded)),
    )


async def create_hold(store: Store, new: NewHold) -> Hold:
    """`tollgate.store.holds.create_hold`, on SQLite's hot writer."""
    hold = new.hold(ordered_id())
    account_id, amount_nanos, checks = new.account_id, new.amount_nanos, new.checks
    created = stamp(new.created_at)
    row = (
        hold.id,
        account_id,
        new.request_id,
        new.gateway_id,
        new.model,
        amount_nanos,
        new.recovery_charge_nanos,
        int(new.uses_credits),
        encode_refs(hold.buckets),
        created,
        stamp(new.expires_at),
        created if new.forwarded else None,
    )

    def admit(conn: sqlite3.Connection) -> None:
        if new.uses_credits:
            admitted = conn.execute(_ADMIT, (amount_nanos, account_id, amount_nanos)).fetchone()
            if admitted is None:
                current = conn.execute(_AVAILABLE, (account_id,)).fetchone()
                if current is None:
                    raise AccountMissing(account_id)
                raise InsufficientFunds(amount_nanos, int(current[0]))
        elif conn.execute(_EXISTS, (account_id,)).fetchone() is None:
            raise AccountMissing(account_id)
        if checks:
            _admit_limits(conn, checks, amount_nanos)
        try:
            conn.execute(_INSERT_HOLD, row)
        except sqlite3.IntegrityError:
            existing = conn.execute(_HOLD_BY_REQUEST, (new.request_id,)).fetchone()
            if existing is None:
                raise
            raise RequestAlreadyHeld(_hold_row(existing)) from None
        if hold.buckets:
            _add_to_buckets(conn, hold.buckets, amount_nanos)

    await store.hot().run(admit)
    return hold


class _AlreadyResolved(Exception):
    pass


def _stored_settlement(conn: sqlite3.Connection, hold_id: str) -> Settlement | None:
    row = conn.execute(_SETTLED_HOLD, (hold_id,)).fetchone()
    if row is None:
        return None
    id_, account, state, charged, amount, estimated, balance, entry = row
    if state == "open":
        raise ValueError(f"hold {hold_id} does not match the stored hold")
    charged = charged or 0
    return Settlement(
        hold_id=id_,
        account_id=account,
        state=state,
        charged_nanos=charged,
        held_nanos=amount,
        overshoot_nanos=max(0, charged - amount),
        estimated=bool(estimated),
        balance_after_nanos=balance,
        ledger_entry_id=entry,
        replayed=True,
    )


async def resolve_hold(
    store: Store,
    hold: Hold,
    *,
    charge_nanos: int | None,
    estimated: bool,
    note: str,
    resolved_at: datetime,
) -> Settlement:
    """`tollgate.store.holds.resolve_hold`, on SQLite's hot writer."""
    state = "released" if charge_nanos is None else "settled"
    charge = charge_nanos or 0
    at = stamp(resolved_at)
    account = hold.account_id

    def effects(conn: sqlite3.Connection) -> tuple[int | None, str | None]:
        balance: int | None = None
        entry_id: str | None = None
        if not hold.uses_credits:
            conn.execute(_EXISTS, (account,))
        elif not charge:
            balance = conn.execute(_UNHOLD, (hold.amount_nanos, account)).fetchone()[0]
        else:
            charged = conn.execute(_CHARGE, (charge, hold.amount_nanos, at, account)).fetchone()
            balance = int(charged[0])
            entry_id = ordered_id()
            entry = (entry_id, account, -charge, balance, note[:NOTE_MAX], f"hold:{hold.id}")
            conn.execute(_INSERT_ENTRY, (*entry, at, hold.model))
        delta = charge - hold.amount_nanos
        if delta and hold.buckets:
            _add_to_buckets(conn, hold.buckets, delta)
        claim = (state, charge, int(estimated), at, balance, entry_id, hold.id, account)
        guard = (hold.amount_nanos, int(hold.uses_credits), encode_refs(hold.buckets))
        if conn.execute(_CLAIM, (*claim, *guard)).fetchone() is None:
            raise _AlreadyResolved
        return balance, entry_id

    def resolve(conn: sqlite3.Connection) -> tuple[int | None, str | None]:
        # A constraint failing (held below zero, the hold's ledger reference already taken) means
        # a racing settle got there first, exactly as an unclaimable hold does.
        try:
            return effects(conn)
        except sqlite3.IntegrityError:
            raise _AlreadyResolved from None

    writer = store.hot()
    try:
        balance, entry_id = await writer.run(resolve)
    except _AlreadyResolved:
        stored = await writer.run(lambda conn: _stored_settlement(conn, hold.id))
        if stored is None:
            raise HoldMissing(hold.id) from None
        return stored
    return first_settlement(hold, state, charge, estimated, balance, entry_id)
