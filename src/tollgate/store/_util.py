"""Small helpers shared by the repository modules."""

from __future__ import annotations

import functools
import random
import secrets
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def new_id(nbytes: int = 16) -> str:
    """A random lowercase-hex id (32 characters by default, the account id format)."""
    return secrets.token_hex(nbytes)


def ordered_id() -> str:
    """A 32-hex-character id that sorts by creation time: 16 hex digits of nanoseconds, then 64
    random bits. For rows written on every request (holds, usage entries): new keys land at the
    right edge of their indexes, so a commit rewrites a few pages instead of one per index per
    row scattered across the file (measured: about 3x less commit work on SQLite).

    The random half comes from `random` (seeded from the OS at start-up and again in every forked
    child), not `secrets`: these ids are unique, not secret (every row they name is reached only
    through its account's authorization), and `secrets` costs a system call per id, which was a
    seventh of the billing hot path's CPU."""
    return f"{time.time_ns():016x}{random.getrandbits(64):016x}"


# SQLite's limit on the parameters of one statement (SQLITE_MAX_VARIABLE_NUMBER, since 3.32).
_MAX_PARAMETERS = 32_766


@functools.lru_cache(maxsize=256)
def _multi_row_sql(insert: str, row: str, count: int) -> str:
    return f"{insert} VALUES {', '.join([row] * count)}"


def insert_rows(
    conn: sqlite3.Connection, insert: str, row: str, rows: Sequence[Sequence[object]]
) -> None:
    """`insert` (``INSERT INTO t (a, b)``) of every row, `row` being one row's ``VALUES`` tuple
    (``(?, ?)``, literals allowed), as few statements as SQLite's parameter limit allows.

    On the hot writer's thread, not `executemany`: that steps once per row, and `sqlite3`
    gives the GIL up and takes it back at every step, each time waiting for the busy event
    loop to let go of it. One statement steps once."""
    per_row = row.count("?")
    size = max(1, _MAX_PARAMETERS // max(1, per_row))
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        conn.execute(_multi_row_sql(insert, row, len(chunk)), [value for r in chunk for value in r])
