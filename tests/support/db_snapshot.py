"""Every row of every table of a tollgate database, as bytes, to prove that nothing changed.

The tables are read from the live database (reflected), not from tollgate's schema modules, so
a table added by a later migration is included without this file knowing about it.
"""

from __future__ import annotations

import asyncio
import difflib

from sqlalchemy import MetaData, select
from sqlalchemy.engine import Connection

from tollgate.store import Store


def _dump(conn: Connection) -> dict[str, list[str]]:
    tables = MetaData()
    tables.reflect(conn)
    dump: dict[str, list[str]] = {}
    for table in tables.sorted_tables:
        order = list(table.primary_key.columns) or list(table.columns)
        rows = conn.execute(select(table).order_by(*order)).all()
        dump[table.name] = [repr(tuple(row)) for row in rows]
    return dump


async def _snapshot(database_url: str) -> dict[str, list[str]]:
    store = Store(database_url)
    try:
        async with store.read() as conn:
            return await conn.run_sync(_dump)
    finally:
        await store.close()


def database_snapshot(database_url: str) -> dict[str, list[str]]:
    """table -> its rows (repr), in primary-key order."""
    return asyncio.run(_snapshot(database_url))


def as_bytes(snapshot: dict[str, list[str]]) -> bytes:
    return "\n".join(f"{t}: {row}" for t, rows in snapshot.items() for row in rows).encode()


def describe_change(before: dict[str, list[str]], after: dict[str, list[str]]) -> str:
    """The rows that differ, table by table, as a unified diff."""
    lines: list[str] = []
    for table in sorted(set(before) | set(after)):
        old, new = before.get(table, []), after.get(table, [])
        if old != new:
            lines.append(f"table {table}:")
            lines.extend(difflib.unified_diff(old, new, lineterm="", n=0))
    return "\n".join(lines)
