"""Holds: admit a request's money, then settle or release it exactly once. One transaction each.

**Admission** (`create_hold`), one write transaction:
1. the guarded `UPDATE accounts SET held = held + a WHERE id = :id AND balance - held >= a`
   (0 rows: `InsufficientFunds`). A hold that does not use credits (BYOK) locks the account row
   with `SELECT … FOR UPDATE` instead;
2. the spend already counted for each limit (one grouped `SUM` over the buckets in range); any
   limit that the amount would pass ⇒ `LimitsRefused`, naming every one, and nothing is written;
3. the hold row (its `request_id` is unique: a repeat raises `RequestAlreadyHeld`);
4. the amount added to the current bucket of every limit (one upsert).

**Serialisation.** Every limit key belongs to one account (`tollgate.billing.limits`), and every
transaction that reads or writes an account's buckets first locks that account's row (step 1;
settle and release update it first too). On PostgreSQL (read committed) the second of two racing
admissions therefore waits at step 1 and, once the first commits, its next statement sees the
first's buckets. On SQLite `BEGIN IMMEDIATE` serialises all writers anyway. This replaces a
separate per-key lock row: it costs no extra statement, and every transaction takes the account
row first (then buckets, then its hold row), so there is no deadlock cycle.

**Resolution** (`resolve_hold`), one write transaction: the effects, then a guarded claim.
Settling updates the account (`balance -= charge, held -= amount`), appends the ledger entry of
`-charge` (kind `usage`, reference `hold:{id}`, unique per account) and corrects each bucket by
`charge − amount`; releasing only returns the held amount and empties the buckets. Last,
`UPDATE holds SET state = … WHERE id = :id AND state = 'open' AND <it matches the caller's hold>`.
If that claims nothing (already resolved), or the ledger reference already exists (a racing
settle), the whole transaction rolls back and the stored first result is returned with
`replayed=True`. Racers queue on the account row, so the loser sees the winner's commit. A charge
above the held amount is charged in full (the balance may go negative: the one bounded overshoot,
reported as `overshoot_nanos`). A zero charge writes **no** ledger entry; nor does a release.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tollgate.store._util import new_id
from tollgate.store.engine import Store
from tollgate.store.ledger import AccountMissing
from tollgate.store.limits import LimitCheck, add_to_buckets, admit_limits
from tollgate.store.schema import accounts, ledger_entries
from tollgate.store.schema_billing import holds

NOTE_MAX = 500


# Hold and Settlement are built for every billed request: plain slotted dataclasses, since a
# frozen one's constructor costs several times more. Treat them as values all the same.
@dataclass(slots=True)
class Hold:
    id: str
    account_id: str
    request_id: str
    gateway_id: str | None
    model: str | None
    amount_nanos: int
    recovery_charge_nanos: int
    uses_credits: bool
    buckets: tuple[tuple[str, int], ...]  # (limit_key, bucket_start) pairs
    state: str  # open | settled | released (when this value was read)
    created_at: datetime
    expires_at: datetime
    forwarded_at: datetime | None


@dataclass(slots=True)
class Settlement:
    """How a hold was resolved. A repeat returns the first result with `replayed=True`."""

    hold_id: str
    account_id: str
    state: str  # settled | released
    charged_nanos: int
    held_nanos: int  # the hold's amount
    overshoot_nanos: int  # charged beyond the hold (> 0 only when usage exceeded the hold)
    estimated: bool
    balance_after_nanos: int | None  # None for a hold that does not use credits
    ledger_entry_id: str | None  # None when nothing was charged
    replayed: bool


@dataclass(frozen=True, slots=True)
class NewHold:
    """What an admission asks `create_hold` for (on either engine). `checks` have distinct keys."""

    account_id: str
    request_id: str
    amount_nanos: int
    recovery_charge_nanos: int
    uses_credits: bool
    gateway_id: str | None
    model: str | None
    created_at: datetime
    expires_at: datetime
    checks: tuple[LimitCheck, ...]
    forwarded: bool = False  # mark it forwarded at once (saves `mark_forwarded`'s write)

    def hold(self, hold_id: str) -> Hold:
        """The open hold this admission creates, under `hold_id`."""
        return Hold(
            id=hold_id,
            account_id=self.account_id,
            request_id=self.request_id,
            gateway_id=self.gateway_id,
            model=self.model,
            amount_nanos=self.amount_nanos,
            recovery_charge_nanos=self.recovery_charge_nanos,
            uses_credits=self.uses_credits,
            buckets=tuple(sorted((c.key, c.bucket_start) for c in self.checks)),
            state="open",
            created_at=self.created_at,
            expires_at=self.expires_at,
            forwarded_at=self.created_at if self.forwarded else None,
        )


def first_settlement(
    hold: Hold, state: str, charge: int, estimated: bool, balance: int | None, entry: str | None
) -> Settlement:
    """The result of resolving `hold` now (not a replay)."""
    return Settlement(
        hold_id=hold.id,
        account_id=hold.account_id,
        state=state,
        charged_nanos=charge,
        held_nanos=hold.amount_nanos,
        overshoot_nanos=max(0, charge - hold.amount_nanos),
        estimated=estimated,
        balance_after_nanos=balance,
        ledger_entry_id=entry,
        replayed=False,
    )


class InsufficientFunds(Exception):
    def __init__(self, needed_nanos: int, available_nanos: int) -> None:
        super().__init__(f"needs {needed_nanos}, available {available_nanos}")
        self.needed_nanos = needed_nanos
        self.available_nanos = available_nanos


class RequestAlreadyHeld(Exception):
    def __init__(self, existing: Hold) -> None:
        super().__init__(existing.request_id)
        self.existing = existing


class HoldMissing(Exception):
    """No hold has this id."""


def _refs(text: str) -> tuple[tuple[str, int], ...]:
    return tuple((key, start) for key, start in orjson.loads(text))


def hold_of_row(row: Any) -> Hold:
    """A `holds` row as a `Hold`."""
    values = {name: row._mapping[name] for name in Hold.__dataclass_fields__}
    values.update(uses_credits=bool(row.uses_credits), buckets=_refs(row.buckets))
    return Hold(**values)


def settlement_of(row: Any, *, replayed: bool) -> Settlement:
    """The stored result of a resolved hold row."""
    charged = row.charged_nanos or 0
    return Settlement(
        hold_id=row.id,
        account_id=row.account_id,
        state=row.state,
        charged_nanos=charged,
        held_nanos=row.amount_nanos,
        overshoot_nanos=max(0, charged - row.amount_nanos),
        estimated=bool(row.estimated),
        balance_after_nanos=row.balance_after_nanos,
        ledger_entry_id=row.ledger_entry_id,
        replayed=replayed,
    )


# The hot statements are built once; bind parameter names never repeat a column name.
_ACCOUNT = accounts.c.id == bindparam("acct")
_ADMIT = (
    update(accounts)
    .where(
        _ACCOUNT,
        accounts.c.balance_nanos - accounts.c.held_nanos - accounts.c.leased_nanos
        >= bindparam("amount"),
    )
    .values(held_nanos=accounts.c.held_nanos + bindparam("amount"))
    .returning(accounts.c.id)
)
_LOCK_ACCOUNT = select(accounts.c.id).where(_ACCOUNT).with_for_update()
_AVAILABLE = select(
    accounts.c.balance_nanos - accounts.c.held_nanos - accounts.c.leased_nanos
).where(_ACCOUNT)
_CHARGE = (
    update(accounts)
    .where(_ACCOUNT)
    .values(
        balance_nanos=accounts.c.balance_nanos - bindparam("charge"),
        held_nanos=accounts.c.held_nanos - bindparam("amount"),
        modified_at=bindparam("at"),
    )
    .returning(accounts.c.balance_nanos)
)
_UNHOLD = (
    update(accounts)
    .where(_ACCOUNT)
    .values(held_nanos=accounts.c.held_nanos - bindparam("amount"))
    .returning(accounts.c.balance_nanos)
)
_CLAIM = (
    update(holds)
    .where(
        holds.c.id == bindparam("hold"),
        holds.c.state == "open",
        holds.c.account_id == bindparam("acct"),
        holds.c.amount_nanos == bindparam("amount"),
        holds.c.uses_credits == bindparam("credits"),
        holds.c.buckets == bindparam("refs"),
    )
    .values(
        state=bindparam("to_state"),
        charged_nanos=bindparam("charge"),
        estimated=bindparam("is_estimate"),
        resolved_at=bindparam("at"),
        balance_after_nanos=bindparam("balance"),
        ledger_entry_id=bindparam("entry"),
    )
    .returning(holds.c.id)
)


def _encode(refs: Sequence[tuple[str, int]]) -> str:
    return orjson.dumps([list(ref) for ref in refs]).decode()


async def _lock_account_for_hold(
    conn: AsyncConnection, account_id: str, amount: int, uses_credits: bool
) -> None:
    if not uses_credits:  # lock the row all the same: bucket writers are serialised on it
        if (await conn.execute(_LOCK_ACCOUNT, {"acct": account_id})).first() is None:
            raise AccountMissing(account_id)
        return
    if (await conn.execute(_ADMIT, {"acct": account_id, "amount": amount})).first() is not None:
        return
    current = (await conn.execute(_AVAILABLE, {"acct": account_id})).first()
    if current is None:
        raise AccountMissing(account_id)
    raise InsufficientFunds(amount, int(current[0]))


async def create_hold(store: Store, new: NewHold) -> Hold:
    """Admit a hold, or raise `InsufficientFunds`, `LimitsRefused`, `RequestAlreadyHeld` or
    `AccountMissing`, having changed nothing."""
    hold = new.hold(new_id())
    refs = hold.buckets
    try:
        async with store.write() as conn:
            amount = new.amount_nanos
            await _lock_account_for_hold(conn, new.account_id, amount, new.uses_credits)
            if new.checks:
                await admit_limits(conn, new.checks, amount)
            await conn.execute(holds.insert(), {**asdict(hold), "buckets": _encode(refs)})
            if refs:
                await add_to_buckets(conn, store.dialect, refs, amount)
    except IntegrityError:
        existing = await get_hold_by_request(store, new.request_id)
        if existing is None:
            raise
        raise RequestAlreadyHeld(existing) from None
    return hold


async def _charge_account(
    conn: AsyncConnection, hold: Hold, charge: int, note: str, at: datetime
) -> tuple[int | None, str | None]:
    """Apply a hold's charge to its account; returns (balance after, ledger entry id)."""
    if not hold.uses_credits:  # lock the account row all the same (bucket writers)
        await conn.execute(_LOCK_ACCOUNT, {"acct": hold.account_id})
        return None, None
    amounts = {"acct": hold.account_id, "amount": hold.amount_nanos}
    if not charge:
        return (await conn.execute(_UNHOLD, amounts)).scalar_one(), None
    balance = (await conn.execute(_CHARGE, {**amounts, "charge": charge, "at": at})).scalar_one()
    entry: dict[str, Any] = {
        "id": new_id(),
        "account_id": hold.account_id,
        "kind": "usage",
        "amount_nanos": -charge,
        "balance_after_nanos": balance,
        "note": note[:NOTE_MAX],
        "reference": f"hold:{hold.id}",
        "created_at": at,
    }
    if "model" in ledger_entries.c:  # the usage entry's model column (migration 0004)
        entry["model"] = hold.model
    await conn.execute(ledger_entries.insert(), entry)
    return balance, entry["id"]


class _AlreadyResolved(Exception):
    pass


async def resolve_hold(
    store: Store,
    hold: Hold,
    *,
    charge_nanos: int | None,
    estimated: bool,
    note: str,
    resolved_at: datetime,
) -> Settlement:
    """Settle (`charge_nanos` ≥ 0) or release (`None`) an open hold, exactly once.

    The effects come first and the guarded claim last, in one transaction: if the claim finds
    the hold no longer open (or a racing settle's ledger entry already exists), everything rolls
    back and the stored first result is returned. `hold` must match the stored hold.
    """
    state = "released" if charge_nanos is None else "settled"
    charge = charge_nanos or 0
    try:
        async with store.write() as conn:
            balance, entry_id = await _charge_account(conn, hold, charge, note, resolved_at)
            delta = charge - hold.amount_nanos
            if delta and hold.buckets:
                await add_to_buckets(conn, store.dialect, hold.buckets, delta)
            claim = {
                "hold": hold.id,
                "acct": hold.account_id,
                "amount": hold.amount_nanos,
                "credits": hold.uses_credits,
                "refs": _encode(hold.buckets),
                "to_state": state,
                "charge": charge,
                "is_estimate": estimated,
                "at": resolved_at,
                "balance": balance,
                "entry": entry_id,
            }
            if (await conn.execute(_CLAIM, claim)).first() is None:
                raise _AlreadyResolved
    except (_AlreadyResolved, IntegrityError):
        async with store.read() as conn:
            row = (await conn.execute(select(holds).where(holds.c.id == hold.id))).first()
        if row is None:
            raise HoldMissing(hold.id) from None
        if row.state == "open":
            raise ValueError(f"hold {hold.id} does not match the stored hold") from None
        return settlement_of(row, replayed=True)
    return first_settlement(hold, state, charge, estimated, balance, entry_id)


async def mark_forwarded(store: Store, hold_id: str, at: datetime) -> Hold:
    """Record that the request is about to go upstream (first call wins; later ones no-op)."""
    async with store.write() as conn:
        row = (
            await conn.execute(
                update(holds)
                .where(
                    holds.c.id == hold_id, holds.c.state == "open", holds.c.forwarded_at.is_(None)
                )
                .values(forwarded_at=at)
                .returning(*holds.c)
            )
        ).first()
        if row is None:
            row = (await conn.execute(select(holds).where(holds.c.id == hold_id))).first()
    if row is None:
        raise HoldMissing(hold_id)
    return hold_of_row(row)


async def extend_hold(store: Store, hold_id: str, expires_at: datetime) -> Hold:
    """Push an open hold's expiry (a heartbeat for calls longer than the TTL)."""
    async with store.write() as conn:
        await conn.execute(
            update(holds)
            .where(holds.c.id == hold_id, holds.c.state == "open")
            .values(expires_at=expires_at)
        )
        row = (await conn.execute(select(holds).where(holds.c.id == hold_id))).first()
    if row is None:
        raise HoldMissing(hold_id)
    return hold_of_row(row)


async def extend_holds(store: Store, hold_ids: Sequence[str], expires_at: datetime) -> int:
    """Push the expiry of every still-open hold among `hold_ids`; returns how many."""
    if not hold_ids:
        return 0
    async with store.write() as conn:
        result = await conn.execute(
            update(holds)
            .where(holds.c.id.in_(list(hold_ids)), holds.c.state == "open")
            .values(expires_at=expires_at)
        )
        return int(result.rowcount)


async def get_hold(store: Store, hold_id: str) -> Hold | None:
    async with store.read() as conn:
        row = (await conn.execute(select(holds).where(holds.c.id == hold_id))).first()
    return hold_of_row(row) if row else None


async def get_hold_by_request(store: Store, request_id: str) -> Hold | None:
    async with store.read() as conn:
        row = (await conn.execute(select(holds).where(holds.c.request_id == request_id))).first()
    return hold_of_row(row) if row else None


async def open_holds(store: Store, *, expired_by: datetime | None, limit: int) -> list[Hold]:
    """Open holds, oldest expiry first; only those with `expires_at <= expired_by` if given."""
    query = select(holds).where(holds.c.state == "open")
    if expired_by is not None:
        query = query.where(holds.c.expires_at <= expired_by)
    async with store.read() as conn:
        rows = await conn.execute(query.order_by(holds.c.expires_at, holds.c.id).limit(limit))
        return [hold_of_row(r) for r in rows]


async def available_nanos(store: Store, account_id: str) -> int:
    """Balance minus open holds and credit leases (negative after an overshoot)."""
    async with store.read() as conn:
        row = (
            await conn.execute(
                select(
                    accounts.c.balance_nanos - accounts.c.held_nanos - accounts.c.leased_nanos
                ).where(accounts.c.id == account_id)
            )
        ).first()
    if row is None:
        raise AccountMissing(account_id)
    return int(row[0])
