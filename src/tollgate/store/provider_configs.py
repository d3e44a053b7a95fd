"""Stored provider keys (BYOK `provider_configs`): one row per (account, gateway, provider, alias).

Fields arrive validated (`tollgate.api.provider_configs`) and the key arrives sealed
(`tollgate.features.stored_keys`): this module never sees a plaintext key. At most one config
per (account, gateway, provider) has `default_config`; marking one clears the others in the
same transaction, so the data plane's choice of the default key is never ambiguous.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tollgate.store._util import now
from tollgate.store.cache_events import CacheEventKind, publish
from tollgate.store.engine import Store
from tollgate.store.models import Page
from tollgate.store.schema_provider_configs import provider_configs

# What an update may change; the sealed key always changes with its `secret_id` and preview.
UPDATABLE = frozenset(
    {
        "alias",
        "default_config",
        "rate_limit",
        "rate_limit_period",
        "secret_id",
        "secret_preview",
        "ciphertext",
        "key_id",
    }
)


class AliasTaken(Exception):
    """The gateway already has a key under this alias for this provider."""


@dataclass(frozen=True, slots=True)
class ProviderConfigRecord:
    id: str
    account_id: str
    gateway_id: str
    provider_slug: str
    alias: str
    default_config: bool
    secret_id: str
    secret_preview: str
    ciphertext: str  # sealed; never shown (the API renders `secret_preview`)
    key_id: str
    rate_limit: float | None
    rate_limit_period: float | None
    created_at: datetime
    modified_at: datetime


def _record(row: Any) -> ProviderConfigRecord:
    return ProviderConfigRecord(
        id=row.id,
        account_id=row.account_id,
        gateway_id=row.gateway_id,
        provider_slug=row.provider_slug,
        alias=row.alias,
        default_config=bool(row.default_config),
        secret_id=row.secret_id,
        secret_preview=row.secret_preview,
        ciphertext=row.ciphertext,
        key_id=row.key_id,
        rate_limit=row.rate_limit,
        rate_limit_period=row.rate_limit_period,
        created_at=row.created_at,
        modified_at=row.modified_at,
    )


def _of_gateway(account_id: str, gateway_id: str) -> Any:
    table = provider_configs.c
    return (table.account_id == account_id) & (table.gateway_id == gateway_id)


def _key(account_id: str, gateway_id: str, config_id: str) -> Any:
    return _of_gateway(account_id, gateway_id) & (provider_configs.c.id == config_id)


async def _clear_other_defaults(
    conn: AsyncConnection, account_id: str, gateway_id: str, provider_slug: str, keep_id: str
) -> None:
    table = provider_configs.c
    await conn.execute(
        provider_configs.update()
        .where(_of_gateway(account_id, gateway_id))
        .where((table.provider_slug == provider_slug) & (table.id != keep_id))
        .where(table.default_config == True)  # noqa: E712 (SQL, not Python)
        .values(default_config=False)
    )


async def insert_provider_config(
    store: Store, account_id: str, gateway_id: str, config_id: str, fields: Mapping[str, Any]
) -> ProviderConfigRecord:
    """Insert a config under `config_id` (the id its key was sealed for)."""
    stamp = now()
    try:
        async with store.write() as conn:
            result = await conn.execute(
                provider_configs.insert()
                .values(
                    id=config_id,
                    account_id=account_id,
                    gateway_id=gateway_id,
                    created_at=stamp,
                    modified_at=stamp,
                    **fields,
                )
                .returning(*provider_configs.c)
            )
            row = result.one()
            if row.default_config:
                await _clear_other_defaults(
                    conn, account_id, gateway_id, row.provider_slug, config_id
                )
            await publish(store, conn, CacheEventKind.STORED_KEYS, account_id, gateway_id)
    except IntegrityError:
        raise AliasTaken(fields.get("alias", "")) from None
    return _record(row)


async def get_provider_config(
    store: Store, account_id: str, gateway_id: str, config_id: str
) -> ProviderConfigRecord | None:
    async with store.read() as conn:
        query = select(provider_configs).where(_key(account_id, gateway_id, config_id))
        row = (await conn.execute(query)).first()
    return _record(row) if row else None


async def list_provider_configs(
    store: Store, account_id: str, gateway_id: str, *, offset: int = 0, limit: int = 20
) -> Page[ProviderConfigRecord]:
    """A page of the gateway's configs, by provider then alias."""
    where = _of_gateway(account_id, gateway_id)
    table = provider_configs.c
    async with store.read() as conn:
        total = await conn.execute(select(func.count()).select_from(provider_configs).where(where))
        rows = await conn.execute(
            select(provider_configs)
            .where(where)
            .order_by(table.provider_slug, table.alias, table.id)
            .offset(offset)
            .limit(limit)
        )
        return Page([_record(r) for r in rows], total.scalar_one())


async def gateway_configs(
    store: Store, account_id: str, gateway_id: str
) -> list[ProviderConfigRecord]:
    """Every config of the gateway: what the data plane's cache loads (one indexed query)."""
    async with store.read() as conn:
        rows = await conn.execute(
            select(provider_configs).where(_of_gateway(account_id, gateway_id))
        )
        return [_record(r) for r in rows]


async def update_provider_config(
    store: Store, account_id: str, gateway_id: str, config_id: str, changes: Mapping[str, Any]
) -> ProviderConfigRecord | None:
    """Apply `changes` (a subset of UPDATABLE); None if there is no such config."""
    unknown = sorted(set(changes) - UPDATABLE)
    if unknown:
        raise ValueError(f"not updatable provider config fields: {', '.join(unknown)}")
    try:
        async with store.write() as conn:
            result = await conn.execute(
                provider_configs.update()
                .where(_key(account_id, gateway_id, config_id))
                .values(**changes, modified_at=now())
                .returning(*provider_configs.c)
            )
            row = result.first()
            if row is None:
                return None
            if row.default_config:
                await _clear_other_defaults(
                    conn, account_id, gateway_id, row.provider_slug, config_id
                )
            await publish(store, conn, CacheEventKind.STORED_KEYS, account_id, gateway_id)
    except IntegrityError:
        raise AliasTaken(changes.get("alias", "")) from None
    return _record(row)


async def delete_provider_config(
    store: Store, account_id: str, gateway_id: str, config_id: str
) -> ProviderConfigRecord | None:
    async with store.write() as conn:
        result = await conn.execute(
            provider_configs.delete()
            .where(_key(account_id, gateway_id, config_id))
            .returning(*provider_configs.c)
        )
        row = result.first()
        if row is not None:
            await publish(store, conn, CacheEventKind.STORED_KEYS, account_id, gateway_id)
    return _record(row) if row else None
