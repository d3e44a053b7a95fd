"""`database.max_connections`: the most PostgreSQL connections one process opens."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from tollgate.services import Services
from tollgate.settings import load_settings
from tollgate.store import Store


@pytest.mark.postgres
async def test_a_process_opens_no_more_than_max_connections(postgres_url: str) -> None:
    store = Store(postgres_url, max_connections=4)
    release = asyncio.Event()
    opened = 0

    async def hold_one() -> None:
        nonlocal opened
        async with store.read() as conn:
            await conn.execute(text("select 1"))
            opened += 1
            await release.wait()

    holders = [asyncio.create_task(hold_one()) for _ in range(6)]
    try:
        for _ in range(200):  # up to 10 s for the first four
            if opened == 4:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert opened == 4  # the other two wait for a connection
        release.set()
        await asyncio.gather(*holders)
        assert opened == 6
    finally:
        release.set()
        await store.close()


def test_the_setting_reaches_the_store(tmp_path: Path) -> None:
    settings = load_settings(
        env={
            "TOLLGATE_DATA_DIR": str(tmp_path),
            "TOLLGATE_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/unused",
            "TOLLGATE_DATABASE__MAX_CONNECTIONS": "6",
        }
    )
    pool = Services.build(settings).store._writer.sync_engine.pool
    assert (pool.size(), pool._max_overflow) == (3, 3)  # type: ignore[attr-defined]
