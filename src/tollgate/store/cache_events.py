"""The `cache_events` table (migration 0008): which cached lookups other processes must drop.

Every gateway process caches what its hot path looks up (token verifications, gateways, custom
providers, stored keys, ...). A store function that changes one of those rows also appends an
event here with `publish`, in the same transaction, so the event exists exactly when the change
does, whoever made it (the API, the dashboard, the CLI). Every running process reads the events
newer than the last one it read and drops the entries they name (`tollgate.cache_events`),
except those its own store wrote (`origin`): the code that made the change dropped them already.

Order matters: readers ask for `id > last`, so an id must never become visible after a larger
one, or it would be skipped.

- SQLite has one writer at a time: ids commit in order. The table is AUTOINCREMENT, so an id is
  never handed out twice, even after pruning has emptied the table.
- PostgreSQL hands sequence values out at insert time, and transactions commit in any order.
  `publish` first takes a transaction-level advisory lock, which serialises publishing
  transactions from their insert to their commit: whoever sees an event sees every earlier one.
  Only management writes publish (and the first request of an account, which creates its
  `default` gateway), so the lock is uncontended in practice.

A transaction that rolls back leaves a gap in the ids; readers do not care.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column, Integer, String, Table, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from tollgate.store._util import now
from tollgate.store.engine import Store
from tollgate.store.schema import UTCDateTime, metadata

# Distinct from the migrations' lock (7381004).
_PUBLISH_LOCK = 7381005


class CacheEventKind(StrEnum):
    """What changed; the event's key says which one (`key_of` joins compound keys)."""

    TOKEN = "token"  # noqa: S105 (a kind, not a secret) - a token was revoked; key: its id
    ACCOUNT = "account"  # an account was disabled or enabled; key: the account id
    GATEWAY = "gateway"  # created, updated or deleted; key: account id/gateway id
    CUSTOM_PROVIDER = "custom_provider"  # key: account id/slug
    STORED_KEYS = "stored_keys"  # a gateway's stored provider keys; key: account id/gateway id
    ACCOUNT_LIMIT = "account_limit"  # the account spending limit; key: the account id
    AUTO_TOPUP = "auto_topup"  # the account's auto top-up settings; key: the account id
    GATEWAY_LOGS = "gateway_logs"  # logs deleted through the API; key: account id/gateway id


cache_events = Table(
    "cache_events",
    metadata,
    Column(
        "id",
        Integer().with_variant(BigInteger, "postgresql"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("kind", String(32), nullable=False),
    Column("key", String(200), nullable=False),
    Column("origin", String(16), nullable=False),  # the writing `Store.origin`
    Column("created_at", UTCDateTime, nullable=False),
    sqlite_autoincrement=True,
)


@dataclass(frozen=True, slots=True)
class CacheEvent:
    id: int
    kind: str  # a `CacheEventKind` value, or one a newer version wrote (readers skip those)
    key: str
    origin: str  # the `Store.origin` of the process that wrote it


def key_of(*parts: str) -> str:
    """`account/gateway`: account ids are 32 hex characters, so the first `/` splits it."""
    return "/".join(parts)


async def publish(
    store: Store, conn: AsyncConnection, kind: CacheEventKind, *key_parts: str
) -> None:
    """Append an event inside `store`'s write transaction `conn` (call it last in the
    transaction: on PostgreSQL the lock it takes is held until the commit)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text(f"SELECT pg_advisory_xact_lock({_PUBLISH_LOCK})"))
    await conn.execute(
        cache_events.insert().values(
            kind=kind.value, key=key_of(*key_parts), origin=store.origin, created_at=now()
        )
    )


async def latest_event_id(store: Store) -> int:
    """The newest event's id (0 when there is none): a process starting now has nothing
    cached, so it needs only the events after this one."""
    async with store.read(sync_books=False) as conn:
        found = (await conn.execute(select(func.max(cache_events.c.id)))).scalar()
    return int(found or 0)


async def events_after(store: Store, last_id: int, *, limit: int = 1000) -> list[CacheEvent]:
    """The events with an id above `last_id`, oldest first, at most `limit`."""
    async with store.read(sync_books=False) as conn:
        rows = await conn.execute(
            select(
                cache_events.c.id, cache_events.c.kind, cache_events.c.key, cache_events.c.origin
            )
            .where(cache_events.c.id > last_id)
            .order_by(cache_events.c.id)
            .limit(limit)
        )
        return [CacheEvent(row.id, row.kind, row.key, row.origin) for row in rows]


async def prune_events(store: Store, created_before: datetime) -> int:
    """Delete the events older than `created_before`; returns how many went."""
    async with store.write() as conn:
        result = await conn.execute(
            delete(cache_events).where(cache_events.c.created_at < created_before)
        )
    return int(result.rowcount or 0)
