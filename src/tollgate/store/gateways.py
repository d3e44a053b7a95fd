"""Gateways: one row per (account, gateway id); the gateway object's settings are JSON."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from tollgate.store._util import now
from tollgate.store.cache_events import CacheEventKind, publish
from tollgate.store.engine import Store
from tollgate.store.models import GatewayRecord, Page
from tollgate.store.schema import gateways
from tollgate.store.schema_logs import request_logs


class GatewayExists(Exception):
    """A gateway with this id already exists in the account."""


def _gateway(row: Any) -> GatewayRecord:
    return GatewayRecord(
        account_id=row.account_id,
        id=row.id,
        config=orjson.loads(row.config),
        is_default=bool(row.is_default),
        created_at=row.created_at,
        modified_at=row.modified_at,
    )


def _key(account_id: str, gateway_id: str) -> Any:
    return (gateways.c.account_id == account_id) & (gateways.c.id == gateway_id)


async def insert_gateway(
    store: Store, account_id: str, gateway_id: str, config: dict[str, Any], *, is_default: bool
) -> GatewayRecord:
    stamp = now()
    record = GatewayRecord(account_id, gateway_id, config, is_default, stamp, stamp)
    try:
        async with store.write() as conn:
            await conn.execute(
                gateways.insert().values(
                    account_id=account_id,
                    id=gateway_id,
                    config=orjson.dumps(config).decode(),
                    is_default=is_default,
                    created_at=stamp,
                    modified_at=stamp,
                )
            )
            # Other processes may have cached "no such gateway".
            await publish(store, conn, CacheEventKind.GATEWAY, account_id, gateway_id)
    except IntegrityError:
        raise GatewayExists(gateway_id) from None
    return record


async def get_gateway(store: Store, account_id: str, gateway_id: str) -> GatewayRecord | None:
    async with store.read() as conn:
        row = (await conn.execute(select(gateways).where(_key(account_id, gateway_id)))).first()
    return _gateway(row) if row else None


async def list_gateways(
    store: Store, account_id: str, *, search: str | None = None, offset: int = 0, limit: int = 20
) -> Page[GatewayRecord]:
    where = gateways.c.account_id == account_id
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where = where & gateways.c.id.like(f"%{escaped}%", escape="\\")
    async with store.read() as conn:
        total = await conn.execute(select(func.count()).select_from(gateways).where(where))
        rows = await conn.execute(
            select(gateways)
            .where(where)
            .order_by(gateways.c.created_at.desc(), gateways.c.id)
            .offset(offset)
            .limit(limit)
        )
        return Page([_gateway(r) for r in rows], total.scalar_one())


async def update_gateway(
    store: Store, account_id: str, gateway_id: str, config: dict[str, Any]
) -> GatewayRecord | None:
    async with store.write() as conn:
        result = await conn.execute(
            gateways.update()
            .where(_key(account_id, gateway_id))
            .values(config=orjson.dumps(config).decode(), modified_at=now())
            .returning(*gateways.c)
        )
        row = result.first()
        if row is not None:
            await publish(store, conn, CacheEventKind.GATEWAY, account_id, gateway_id)
    return _gateway(row) if row else None


async def delete_gateway(store: Store, account_id: str, gateway_id: str) -> GatewayRecord | None:
    """Delete the gateway and, in the same transaction, its request logs: a gateway created
    later under the same id must not show them. (Its stored keys go by ON DELETE CASCADE.)"""
    async with store.write() as conn:
        result = await conn.execute(
            gateways.delete().where(_key(account_id, gateway_id)).returning(*gateways.c)
        )
        row = result.first()
        if row is not None:
            logs = request_logs.c
            await conn.execute(
                request_logs.delete().where(
                    logs.account_id == account_id, logs.gateway_id == gateway_id
                )
            )
            await publish(store, conn, CacheEventKind.GATEWAY, account_id, gateway_id)
    return _gateway(row) if row else None


async def ensure_gateway(
    store: Store, account_id: str, gateway_id: str, config: dict[str, Any], *, is_default: bool
) -> GatewayRecord:
    """Get the gateway, creating it if absent; safe when many requests race to create it."""
    existing = await get_gateway(store, account_id, gateway_id)
    if existing is not None:
        return existing
    try:
        return await insert_gateway(store, account_id, gateway_id, config, is_default=is_default)
    except GatewayExists:
        found = await get_gateway(store, account_id, gateway_id)
        assert found is not None, "a gateway that conflicted on insert must exist"
        return found
