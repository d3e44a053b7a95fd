"""Databases for tests: a fresh SQLite file, or a fresh PostgreSQL database created and dropped.

PostgreSQL at 127.0.0.1:5432 is shared between runs, so every test run creates its own database
with a random name and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _create(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create a uniquely named database; yield its URL; drop it afterwards."""
    name = f"tollgate_test_{secrets.token_hex(6)}"
    asyncio.run(_create(name))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_drop(name))
