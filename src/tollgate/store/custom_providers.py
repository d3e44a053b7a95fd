"""Custom providers: one row per (account, id), with a slug unique in the account.

Fields are stored as validated by `tollgate.custom_provider_config`; this module does not
validate them again. `headers` is the JSON object string the API echoes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from tollgate.store._util import new_id, now
from tollgate.store.cache_events import CacheEventKind, publish
from tollgate.store.engine import Store
from tollgate.store.models import Page
from tollgate.store.schema import custom_providers

# The fields a caller sets; `account_id`, `id` and the timestamps are the store's.
FIELDS = (
    "slug",
    "name",
    "base_url",
    "description",
    "link",
    "enable",
    "beta",
    "curl_example",
    "js_example",
    "headers",
    "position",
)
# Orders a list may ask for. `name` ignores case; providers without a position come last.
ORDER_COLUMNS = ("name", "slug", "position", "created_at", "modified_at")


class SlugTaken(Exception):
    """Another custom provider of the account already has this slug."""


@dataclass(frozen=True, slots=True)
class CustomProviderRecord:
    account_id: str
    id: str
    slug: str
    name: str
    base_url: str
    description: str | None
    link: str | None
    enable: bool
    beta: bool
    curl_example: str | None
    js_example: str | None
    headers: str | None
    position: int | None
    created_at: datetime
    modified_at: datetime


def _record(row: Any) -> CustomProviderRecord:
    return CustomProviderRecord(
        account_id=row.account_id,
        id=row.id,
        slug=row.slug,
        name=row.name,
        base_url=row.base_url,
        description=row.description,
        link=row.link,
        enable=bool(row.enable),
        beta=bool(row.beta),
        curl_example=row.curl_example,
        js_example=row.js_example,
        headers=row.headers,
        position=row.position,
        created_at=row.created_at,
        modified_at=row.modified_at,
    )


def _key(account_id: str, provider_id: str) -> Any:
    return (custom_providers.c.account_id == account_id) & (custom_providers.c.id == provider_id)


def _values(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"not custom provider fields: {', '.join(unknown)}")
    return dict(fields)


async def insert_custom_provider(
    store: Store, account_id: str, fields: Mapping[str, Any]
) -> CustomProviderRecord:
    """Insert a provider with a new random id; `fields` needs at least slug, name, base_url."""
    stamp = now()
    values = {"enable": False, "beta": False, **_values(fields)}
    try:
        async with store.write() as conn:
            result = await conn.execute(
                custom_providers.insert()
                .values(account_id=account_id, id=new_id(), created_at=stamp, modified_at=stamp)
                .values(**values)
                .returning(*custom_providers.c)
            )
            row = result.one()
            # Other processes may have cached "no such provider" for the slug.
            await publish(store, conn, CacheEventKind.CUSTOM_PROVIDER, account_id, row.slug)
    except IntegrityError:
        raise SlugTaken(values["slug"]) from None
    return _record(row)


async def get_custom_provider(
    store: Store, account_id: str, provider_id: str
) -> CustomProviderRecord | None:
    async with store.read() as conn:
        query = select(custom_providers).where(_key(account_id, provider_id))
        row = (await conn.execute(query)).first()
    return _record(row) if row else None


async def get_custom_provider_by_slug(
    store: Store, account_id: str, slug: str
) -> CustomProviderRecord | None:
    where = (custom_providers.c.account_id == account_id) & (custom_providers.c.slug == slug)
    async with store.read() as conn:
        row = (await conn.execute(select(custom_providers).where(where))).first()
    return _record(row) if row else None


def _like(term: str) -> str:
    escaped = term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _order(order_by: str, descending: bool) -> list[Any]:
    if order_by not in ORDER_COLUMNS:
        raise ValueError(f"cannot order custom providers by {order_by!r}")
    column: Any = custom_providers.c[order_by]
    if order_by == "name":
        column = func.lower(column)
    ordered = column.desc() if descending else column.asc()
    if order_by == "position":
        ordered = ordered.nulls_last()
    return [ordered, custom_providers.c.id]


async def list_custom_providers(
    store: Store,
    account_id: str,
    *,
    enable: bool | None = None,
    beta: bool | None = None,
    search: str | None = None,
    order_by: str = "name",
    descending: bool = False,
    offset: int = 0,
    limit: int = 20,
) -> Page[CustomProviderRecord]:
    """A page of the account's providers; `search` matches id, slug or name, ignoring case."""
    table = custom_providers.c
    where = table.account_id == account_id
    if enable is not None:
        where = where & (table.enable == enable)
    if beta is not None:
        where = where & (table.beta == beta)
    if search:
        pattern = _like(search)
        where = where & (
            func.lower(table.id).like(pattern, escape="\\")
            | func.lower(table.slug).like(pattern, escape="\\")
            | func.lower(table.name).like(pattern, escape="\\")
        )
    async with store.read() as conn:
        total = await conn.execute(select(func.count()).select_from(custom_providers).where(where))
        rows = await conn.execute(
            select(custom_providers)
            .where(where)
            .order_by(*_order(order_by, descending))
            .offset(offset)
            .limit(limit)
        )
        return Page([_record(r) for r in rows], total.scalar_one())


async def update_custom_provider(
    store: Store, account_id: str, provider_id: str, changes: Mapping[str, Any]
) -> tuple[CustomProviderRecord, CustomProviderRecord] | None:
    """Apply `changes` in one transaction; returns (before, after), or None if there is no such
    provider. `before` lets the caller drop cache entries under the old slug."""
    values = _values(changes)
    try:
        async with store.write() as conn:
            query = select(custom_providers).where(_key(account_id, provider_id))
            before = (await conn.execute(query.with_for_update())).first()
            if before is None:
                return None
            if not values:
                return _record(before), _record(before)
            result = await conn.execute(
                custom_providers.update()
                .where(_key(account_id, provider_id))
                .values(**values, modified_at=now())
                .returning(*custom_providers.c)
            )
            after = result.one()
            await publish(store, conn, CacheEventKind.CUSTOM_PROVIDER, account_id, before.slug)
            if after.slug != before.slug:
                await publish(store, conn, CacheEventKind.CUSTOM_PROVIDER, account_id, after.slug)
    except IntegrityError:
        raise SlugTaken(values.get("slug", "")) from None
    return _record(before), _record(after)


async def delete_custom_provider(
    store: Store, account_id: str, provider_id: str
) -> CustomProviderRecord | None:
    async with store.write() as conn:
        result = await conn.execute(
            custom_providers.delete()
            .where(_key(account_id, provider_id))
            .returning(*custom_providers.c)
        )
        row = result.first()
        if row is not None:
            await publish(store, conn, CacheEventKind.CUSTOM_PROVIDER, account_id, row.slug)
    return _record(row) if row else None
