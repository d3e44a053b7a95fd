"""Accounts: create, read, list, enable/disable."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from tollgate.store._util import new_id, now
from tollgate.store.cache_events import CacheEventKind, publish
from tollgate.store.engine import Store
from tollgate.store.models import Account, Page
from tollgate.store.schema import accounts


def _account(row: Any) -> Account:
    return Account(
        id=row.id,
        name=row.name,
        status=row.status,
        balance_nanos=row.balance_nanos,
        held_nanos=row.held_nanos,
        created_at=row.created_at,
        modified_at=row.modified_at,
    )


async def create_account(store: Store, name: str, account_id: str | None = None) -> Account:
    stamp = now()
    values = {
        "id": account_id or new_id(),
        "name": name,
        "status": "active",
        "balance_nanos": 0,
        "held_nanos": 0,
        "created_at": stamp,
        "modified_at": stamp,
    }
    async with store.write() as conn:
        await conn.execute(accounts.insert().values(**values))
    return Account(**values)  # type: ignore[arg-type]


async def get_account(store: Store, account_id: str) -> Account | None:
    async with store.read() as conn:
        row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
    return _account(row) if row else None


async def list_accounts(store: Store, *, offset: int = 0, limit: int = 50) -> Page[Account]:
    async with store.read() as conn:
        total = (await conn.execute(select(func.count()).select_from(accounts))).scalar_one()
        rows = await conn.execute(
            select(accounts)
            .order_by(accounts.c.created_at, accounts.c.id)
            .offset(offset)
            .limit(limit)
        )
        return Page([_account(r) for r in rows], total)


async def set_account_status(store: Store, account_id: str, status: str) -> Account | None:
    async with store.write() as conn:
        result = await conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(status=status, modified_at=now())
            .returning(*accounts.c)
        )
        row = result.first()
        if row is not None:  # every process drops the account's cached tokens
            await publish(store, conn, CacheEventKind.ACCOUNT, account_id)
    return _account(row) if row else None
