"""Spending limits in the store: the account limit's config, and the spend buckets.

`spend_buckets` rows are written only inside the write transaction that admits, settles or
releases a hold (`tollgate.store.holds` calls `admit_limits` and `add_to_buckets` after locking the
account row, which is what serialises admissions). `window_spend` and `bucket_amounts` only read.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tollgate.store._util import now
from tollgate.store.cache_events import CacheEventKind, publish
from tollgate.store.engine import Store
from tollgate.store.ledger import AccountMissing
from tollgate.store.schema import accounts
from tollgate.store.schema_billing import (
    LIMIT_DURATIONS,
    LIMIT_STRATEGIES,
    account_spending_limits,
    spend_buckets,
)


def _range(key: str, count_from: int, count_until: int | None) -> Any:
    where = (spend_buckets.c.limit_key == key) & (spend_buckets.c.bucket_start >= count_from)
    if count_until is not None:
        where = where & (spend_buckets.c.bucket_start < count_until)
    return where


@dataclass(frozen=True, slots=True)
class AccountLimit:
    account_id: str
    amount_nanos: int
    duration: str  # daily | weekly | monthly
    strategy: str  # fixed | sliding
    created_at: datetime
    modified_at: datetime


def _limit(row: Any) -> AccountLimit:
    return AccountLimit(
        account_id=row.account_id,
        amount_nanos=row.amount_nanos,
        duration=row.duration,
        strategy=row.strategy,
        created_at=row.created_at,
        modified_at=row.modified_at,
    )


async def get_account_limit(store: Store, account_id: str) -> AccountLimit | None:
    async with store.read() as conn:
        row = (
            await conn.execute(
                select(account_spending_limits).where(
                    account_spending_limits.c.account_id == account_id
                )
            )
        ).first()
    return _limit(row) if row else None


async def set_account_limit(
    store: Store, account_id: str, amount_nanos: int, duration: str, strategy: str
) -> AccountLimit:
    """Create or replace the account's limit. The spend already counted keeps counting.

    Raises `ValueError` for a non-positive amount or an unknown duration/strategy (the billing API
    validates first and answers 400), and `AccountMissing` for an unknown account.
    """
    if isinstance(amount_nanos, bool) or not isinstance(amount_nanos, int) or amount_nanos <= 0:
        raise ValueError(f"amount_nanos must be a positive integer; got {amount_nanos!r}")
    if duration not in LIMIT_DURATIONS:
        raise ValueError(f"duration must be one of {LIMIT_DURATIONS}; got {duration!r}")
    if strategy not in LIMIT_STRATEGIES:
        raise ValueError(f"strategy must be one of {LIMIT_STRATEGIES}; got {strategy!r}")
    stamp = now()
    values = {"amount_nanos": amount_nanos, "duration": duration, "strategy": strategy}
    for _ in range(2):  # two first writers may race on the insert; the loser updates
        try:
            async with store.write() as conn:
                row = (
                    await conn.execute(
                        update(account_spending_limits)
                        .where(account_spending_limits.c.account_id == account_id)
                        .values(**values, modified_at=stamp)
                        .returning(*account_spending_limits.c)
                    )
                ).first()
                if row is None:
                    row = (
                        await conn.execute(
                            account_spending_limits.insert()
                            .values(
                                account_id=account_id,
                                **values,
                                created_at=stamp,
                                modified_at=stamp,
                            )
                            .returning(*account_spending_limits.c)
                        )
                    ).one()
                await publish(store, conn, CacheEventKind.ACCOUNT_LIMIT, account_id)
                return _limit(row)
        except IntegrityError:
            if not await _account_exists(store, account_id):
                raise AccountMissing(account_id) from None
    raise RuntimeError("set_account_limit lost two races in a row")  # pragma: no cover


async def _account_exists(store: Store, account_id: str) -> bool:
    async with store.read() as conn:
        found = await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id))
        return found.first() is not None


async def delete_account_limit(store: Store, account_id: str) -> bool:
    """Remove the account's limit; True if there was one. Counted spend stays (for a new one)."""
    async with store.write() as conn:
        result = await conn.execute(
            delete(account_spending_limits).where(
                account_spending_limits.c.account_id == account_id
            )
        )
        if result.rowcount:
            await publish(store, conn, CacheEventKind.ACCOUNT_LIMIT, account_id)
        return bool(result.rowcount)


async def window_spend(store: Store, key: str, count_from: int, count_until: int | None) -> int:
    """Spend counted (held or charged) under `key` in buckets starting in the range."""
    async with store.read() as conn:
        total = await conn.execute(
            select(func.coalesce(func.sum(spend_buckets.c.amount_nanos), 0)).where(
                _range(key, count_from, count_until)
            )
        )
        return int(total.scalar_one())


async def bucket_amounts(store: Store, keys: Sequence[str]) -> dict[tuple[str, int], int]:
    """Every bucket of these keys: `(key, bucket_start) -> amount` (for checks and tests)."""
    if not keys:
        return {}
    async with store.read() as conn:
        rows = await conn.execute(select(spend_buckets).where(spend_buckets.c.limit_key.in_(keys)))
        return {(r.limit_key, r.bucket_start): r.amount_nanos for r in rows}


# --- buckets, inside a hold's write transaction (see `tollgate.store.holds`) ---------------------


@dataclass(frozen=True, slots=True)
class LimitCheck:
    """One limit, at admission time: add to `bucket_start`; count buckets in the range."""

    key: str
    limit_nanos: int
    bucket_start: int
    count_from: int
    count_until: int | None  # None: no upper bound (sliding)


@dataclass(frozen=True, slots=True)
class LimitShortfall:
    key: str
    spent_nanos: int
    buckets: tuple[tuple[int, int], ...]  # counted (bucket_start, amount), for retry-after


class LimitsRefused(Exception):
    def __init__(self, shortfalls: Sequence[LimitShortfall]) -> None:
        super().__init__(", ".join(s.key for s in shortfalls))
        self.shortfalls = tuple(shortfalls)


def _upsert(insert: Any) -> Any:
    stmt = insert(spend_buckets)
    return stmt.on_conflict_do_update(
        index_elements=[spend_buckets.c.limit_key, spend_buckets.c.bucket_start],
        set_={"amount_nanos": spend_buckets.c.amount_nanos + stmt.excluded.amount_nanos},
    )


_ADD_TO_BUCKET = {"postgresql": _upsert(pg_insert), "sqlite": _upsert(sqlite_insert)}


@functools.cache
def _spend_by_key(shape: tuple[bool, ...]) -> Any:
    """`SUM(amount) GROUP BY key` over one range per check; built once per shape (which checks
    have an upper bound), with bind parameters `k{i}`, `f{i}`, `u{i}`."""
    ranges = []
    for i, bounded in enumerate(shape):
        where = (spend_buckets.c.limit_key == bindparam(f"k{i}")) & (
            spend_buckets.c.bucket_start >= bindparam(f"f{i}")
        )
        if bounded:
            where = where & (spend_buckets.c.bucket_start < bindparam(f"u{i}"))
        ranges.append(where)
    return (
        select(spend_buckets.c.limit_key, func.sum(spend_buckets.c.amount_nanos))
        .where(or_(*ranges))
        .group_by(spend_buckets.c.limit_key)
    )


async def admit_limits(conn: AsyncConnection, checks: Sequence[LimitCheck], amount: int) -> None:
    """Raise `LimitsRefused` (naming every limit short of room) unless all admit `amount`."""
    params: dict[str, Any] = {}
    for i, c in enumerate(checks):
        params.update({f"k{i}": c.key, f"f{i}": c.count_from})
        if c.count_until is not None:
            params[f"u{i}"] = c.count_until
    shape = tuple(c.count_until is not None for c in checks)
    rows = await conn.execute(_spend_by_key(shape), params)
    spent = {key: int(total) for key, total in rows}
    short = [c for c in checks if spent.get(c.key, 0) + amount > c.limit_nanos]
    if not short:
        return
    detail = await conn.execute(
        select(spend_buckets).where(
            or_(*(_range(c.key, c.count_from, c.count_until) for c in short))
        )
    )
    counted: dict[str, list[tuple[int, int]]] = {c.key: [] for c in short}
    for row in detail:
        counted[row.limit_key].append((row.bucket_start, row.amount_nanos))
    raise LimitsRefused(
        [LimitShortfall(c.key, spent.get(c.key, 0), tuple(sorted(counted[c.key]))) for c in short]
    )


async def add_to_buckets(
    conn: AsyncConnection, dialect: str, refs: Sequence[tuple[str, int]], delta: int
) -> None:
    rows = [{"limit_key": key, "bucket_start": start, "amount_nanos": delta} for key, start in refs]
    await conn.execute(_ADD_TO_BUCKET[dialect], rows if len(rows) > 1 else rows[0])
