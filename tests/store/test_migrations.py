"""Migrations apply on both engines, and a second run applies nothing."""

from __future__ import annotations

import asyncio

from sqlalchemy import inspect

from tollgate.store import Store
from tollgate.store.migrate import all_revisions, current_revision, migrate

TABLES = {"accounts", "api_tokens", "operator_tokens", "gateways", "ledger_entries"}


async def _tables(store: Store) -> set[str]:
    async with store.read() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_migrations_apply_then_are_idempotent(database_url: str) -> None:
    store = Store(database_url)
    try:
        assert await current_revision(store) is None
        applied = await migrate(store)
        assert applied == all_revisions() and applied[0] == "0001"
        assert await current_revision(store) == all_revisions()[-1]
        assert await _tables(store) >= TABLES
        assert await migrate(store) == []
        assert await current_revision(store) == all_revisions()[-1]
    finally:
        await store.close()


async def test_a_second_store_on_a_migrated_database_finds_nothing_to_do(database_url: str) -> None:
    first = Store(database_url)
    try:
        await migrate(first)
    finally:
        await first.close()
    second = Store(database_url)
    try:
        assert await migrate(second) == []
    finally:
        await second.close()


async def test_concurrent_migrations_apply_once(database_url: str) -> None:
    """Several processes may start at once; exactly one applies each revision."""
    stores = [Store(database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(s) for s in stores))
        assert sorted(results) == [[], [], all_revisions()]
    finally:
        for s in stores:
            await s.close()
