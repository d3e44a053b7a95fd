"""Usage aggregates over the ledger's `usage` entries (usage history, invoice preview)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Integer, cast, func, select

from tollgate.store.engine import Store
from tollgate.store.schema import ledger_entries


def _epoch_seconds(store: Store) -> Any:
    column = ledger_entries.c.created_at
    if store.dialect == "postgresql":
        return cast(func.floor(func.extract("epoch", column)), Integer)
    return cast(func.strftime("%s", column), Integer)


def _usage_in(account_id: str, start: datetime, end: datetime) -> tuple[Any, ...]:
    c = ledger_entries.c
    return (
        c.account_id == account_id,
        c.kind == "usage",
        c.created_at >= start,
        c.created_at < end,
    )


async def usage_buckets(
    store: Store, account_id: str, *, start: datetime, end: datetime, width_seconds: int
) -> list[tuple[int, int]]:
    """`(bucket start in epoch seconds, usage in nanos)` for usage entries in [start, end),
    bucketed by `width_seconds` from the epoch (UTC hours or days); usage is positive."""
    bucket = (_epoch_seconds(store) // width_seconds).label("bucket")
    query = (
        select(bucket, func.sum(-ledger_entries.c.amount_nanos).label("nanos"))
        .where(*_usage_in(account_id, start, end))
        .group_by(bucket)
        .order_by(bucket)
    )
    async with store.read() as conn:
        rows = await conn.execute(query)
        return [(int(r.bucket) * width_seconds, int(r.nanos)) for r in rows]


async def usage_by_model(
    store: Store, account_id: str, *, start: datetime, end: datetime
) -> list[tuple[str | None, int, int]]:
    """`(model, usage in nanos (positive), number of entries)` in [start, end), by model."""
    model = ledger_entries.c.model
    query = (
        select(
            model,
            func.sum(-ledger_entries.c.amount_nanos).label("nanos"),
            func.count().label("entries"),
        )
        .where(*_usage_in(account_id, start, end))
        .group_by(model)
        .order_by(model)
    )
    async with store.read() as conn:
        rows = await conn.execute(query)
        return [(r.model, int(r.nanos), int(r.entries)) for r in rows]
