"""The ledger: append-only entries, and the account balance they sum to.

Invariant (checked in tests, after every step): for every account,
`accounts.balance_nanos == sum(ledger_entries.amount_nanos)`, and each entry's
`balance_after_nanos` is the running sum up to and including it. Both are written in the same
transaction, by one guarded UPDATE ... RETURNING, so no reader ever sees one without the other.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from tollgate.store._util import new_id, now
from tollgate.store.engine import Store
from tollgate.store.models import LedgerEntry
from tollgate.store.schema import accounts, ledger_entries


class AccountMissing(Exception):
    """The account named in a ledger operation does not exist."""


def _entry(row: Any) -> LedgerEntry:
    return LedgerEntry(
        seq=row.seq,
        id=row.id,
        account_id=row.account_id,
        kind=row.kind,
        amount_nanos=row.amount_nanos,
        balance_after_nanos=row.balance_after_nanos,
        note=row.note,
        reference=row.reference,
        created_at=row.created_at,
    )


async def append_entry(
    store: Store,
    account_id: str,
    *,
    kind: str,
    amount_nanos: int,
    note: str = "",
    reference: str | None = None,
    model: str | None = None,
) -> tuple[LedgerEntry, bool]:
    """Credit (or debit, if negative) an account and record the entry, atomically.

    With a `reference`, the same (account, reference) is applied at most once: a repeat returns
    the first entry and `False`. `model` names what a `usage` entry was billed for.
    """
    try:
        async with store.write() as conn:
            balance = (
                await conn.execute(
                    update(accounts)
                    .where(accounts.c.id == account_id)
                    .values(
                        balance_nanos=accounts.c.balance_nanos + amount_nanos, modified_at=now()
                    )
                    .returning(accounts.c.balance_nanos)
                )
            ).scalar_one_or_none()
            if balance is None:
                raise AccountMissing(account_id)
            result = await conn.execute(
                ledger_entries.insert()
                .values(
                    id=new_id(),
                    account_id=account_id,
                    kind=kind,
                    amount_nanos=amount_nanos,
                    balance_after_nanos=balance,
                    note=note,
                    reference=reference,
                    created_at=now(),
                    model=model,
                )
                .returning(*ledger_entries.c)
            )
            return _entry(result.one()), True
    except IntegrityError:
        if reference is None:
            raise
        existing = await find_by_reference(store, account_id, reference)
        if existing is None:
            raise
        return existing, False


async def find_by_reference(store: Store, account_id: str, reference: str) -> LedgerEntry | None:
    async with store.read() as conn:
        row = (
            await conn.execute(
                select(ledger_entries).where(
                    ledger_entries.c.account_id == account_id,
                    ledger_entries.c.reference == reference,
                )
            )
        ).first()
    return _entry(row) if row else None


async def list_entries(
    store: Store, account_id: str, *, limit: int = 50, before_seq: int | None = None
) -> list[LedgerEntry]:
    """The account's entries, newest first."""
    query = select(ledger_entries).where(ledger_entries.c.account_id == account_id)
    if before_seq is not None:
        query = query.where(ledger_entries.c.seq < before_seq)
    async with store.read() as conn:
        rows = await conn.execute(query.order_by(ledger_entries.c.seq.desc()).limit(limit))
        return [_entry(r) for r in rows]


async def ledger_sum(store: Store, account_id: str) -> int:
    async with store.read() as conn:
        total = await conn.execute(
            select(func.coalesce(func.sum(ledger_entries.c.amount_nanos), 0)).where(
                ledger_entries.c.account_id == account_id
            )
        )
        return int(total.scalar_one())
