"""Engines and transactions for SQLite (the embedded default) and PostgreSQL.

SQLite runs in WAL mode with `synchronous=FULL` (money tables survive an OS crash, not only a
process crash). Every write transaction starts with `BEGIN IMMEDIATE`, which takes the write lock
up front: a deferred transaction that reads and then writes can fail with SQLITE_BUSY despite the
busy timeout. Writes in one process also go through a one-connection pool, so they queue in
memory instead of spinning on the file lock. Reads use a separate pool and never block writers.

PostgreSQL uses one asyncpg pool for both.

On SQLite the ledger's hot writes (holds and settlements) bypass SQLAlchemy: `hot()` gives the
running loop's `LoopWriter`, which group-commits them on a writer thread of that loop
(`tollgate.store.loop_writer` explains the design and its durability).
"""

from __future__ import annotations

import asyncio
import math
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tollgate.store.loop_writer import Checkpointer, LoopWriter

# What a database that cannot be reached raises through the store: PostgreSQL down, restarting or
# refusing connections, a connection cut mid-transaction, the pool timing out, SQLite's file
# unreadable or locked past its timeout. The data plane answers these with a 503 (fail closed:
# nothing is forwarded without its hold).
UNREACHABLE: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,  # (SQLAlchemy wraps the driver's own errors in these)
    sqlite3.OperationalError,
    ConnectionError,
)

# PostgreSQL's SQLSTATEs for a server that is up but takes no work now; asyncpg raises them as
# plain `PostgresError`s, which SQLAlchemy wraps in its generic `DBAPIError`: class 08
# (connection exception), class 53 (insufficient resources: too many clients, out of memory or
# disk), and 57P01-57P03 (shutting down, restarting after a crash, starting up).
UNAVAILABLE_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03")


# What may carry one of those: the classes to catch, then ask `unreachable`.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (*UNREACHABLE, sa_exc.DBAPIError)


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot take work now (a 503, fail closed), rather than
    that the statement was wrong (a bug: a 500)."""
    if isinstance(exc, UNREACHABLE):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(UNAVAILABLE_SQLSTATES)


MAX_CONNECTIONS = 20  # PostgreSQL, per process: `database.max_connections`
WAL_SYNC_INTERVAL = 0.1  # seconds between WAL syncs for the hot writer (see loop_writer)


def async_url(url: str) -> str:
    """Map the user-facing URL (`sqlite:///…`, `postgresql://…`) to its async driver."""
    scheme, rest = url.split("://", 1)
    if scheme in {"sqlite", "sqlite+aiosqlite"}:
        return f"sqlite+aiosqlite://{rest}"
    return f"postgresql+asyncpg://{rest}"


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL (a lasting property of the file, so only its first switch counts).

    When connections race to switch a brand-new file, SQLite answers the losers SQLITE_BUSY at
    once, without waiting for busy_timeout; retry briefly instead of failing start-up.
    """
    for attempt in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver's OperationalError: "database is locked"
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.01)


def _sqlite_engine(url: str, *, begin: str, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=60)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us emit BEGIN ourselves (the driver would emit a deferred one).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _enable_wal(cursor)
        for pragma in (
            "synchronous=FULL",
            "busy_timeout=30000",
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Store:
    """Owns the database engines. Use `write()` for a transaction that changes anything."""

    def __init__(
        self,
        url: str,
        *,
        wal_sync_interval: float = WAL_SYNC_INTERVAL,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.url = url
        # Names this store in the cache events it writes, so that the process it serves skips
        # them: it has already dropped what they name (tollgate.store.cache_events).
        self.origin = secrets.token_hex(8)
        # When every cached entry over this store was last known current: the start of the
        # cache-event poller's last successful read (`tollgate.cache_events`; monotonic).
        self.caches_confirmed_at = -math.inf
        driver_url = async_url(url)
        self.dialect = "sqlite" if driver_url.startswith("sqlite") else "postgresql"
        self.wal_sync_interval = wal_sync_interval
        self._hot: dict[asyncio.AbstractEventLoop, LoopWriter] = {}
        # Awaited before every read: the credit leases' flush, so that a reader in this process
        # sees the settlements answered before their commit (tollgate.billing.leases).
        self.before_read: Callable[[], Awaitable[None]] | None = None
        self._checkpointer: Checkpointer | None = None
        self.sqlite_path = ""
        if self.dialect == "sqlite":
            database = make_url(driver_url).database
            if not database or database == ":memory:":
                # Each connection to :memory: is its own database; the hot writer needs a file.
                raise ValueError("tollgate needs a SQLite file, not an in-memory database")
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.sqlite_path = database
            self._writer = _sqlite_engine(driver_url, begin="BEGIN IMMEDIATE", pool_size=1)
            self._reader = _sqlite_engine(driver_url, begin="BEGIN", pool_size=4)
        else:
            kept = max(1, max_connections // 2)  # the rest opened under load, closed after
            self._writer = create_async_engine(
                driver_url, pool_size=kept, max_overflow=max_connections - kept
            )
            self._reader = self._writer

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed on success, rolled back on any exception."""
        async with self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self, *, sync_books: bool = True) -> AsyncIterator[AsyncConnection]:
        """A read-only connection. `sync_books=False` skips `before_read`, for background
        readers that never look at the books (the cache events' poller)."""
        if sync_books and self.before_read is not None:
            await self.before_read()
        async with self._reader.connect() as conn:
            yield conn

    def hot(self) -> LoopWriter:
        """The running loop's group-committing writer (SQLite only)."""
        loop = asyncio.get_running_loop()
        writer = self._hot.get(loop)
        if writer is None:
            if self.dialect != "sqlite":
                raise RuntimeError("the hot writer is for SQLite; PostgreSQL uses write()")
            writer = self._hot[loop] = LoopWriter(self.sqlite_path, loop)
            if self._checkpointer is None:
                self._checkpointer = Checkpointer(self.sqlite_path, self.wal_sync_interval)
                self._checkpointer.start()
        return writer

    async def close(self) -> None:
        for writer in self._hot.values():
            writer.close()
        self._hot.clear()
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()
