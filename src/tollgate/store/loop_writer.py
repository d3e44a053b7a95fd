"""Group-committed SQLite writes on the event loop thread: the ledger's hot path on SQLite.

Every Unified Billing request writes twice (a hold before forwarding, a settlement after). Through
SQLAlchemy's async engine each statement is a hop to aiosqlite's thread and back, about 2 ms of
CPU per transaction. Here the hot operations run as plain `sqlite3` calls on the loop thread
instead, and every operation issued in the same loop iteration shares one transaction:

    result = await store.hot().run(operation)   # operation(conn) -> result, synchronous

- `run` opens the group transaction (`BEGIN IMMEDIATE`) if none is open and schedules its commit
  with `loop.call_soon`, so it commits once the current burst of callbacks has run. Each
  operation runs inside a `SAVEPOINT`: one that raises is undone alone and re-raises to its
  caller, the others commit. `run` returns only once the commit is done, so a caller that goes on
  to forward a request has its hold on disk (against a process crash; see durability below).
- The connection never waits for a lock on the loop: `busy_timeout` is 0. When another connection
  (the control plane's aiosqlite writer, or another process) holds the write lock, `BEGIN` fails
  at once and `run` sleeps briefly and tries again, without blocking the loop.
- **Durability.** The connection commits with `synchronous=NORMAL`: a commit is in the operating
  system's cache when `run` returns, so a killed process loses nothing, but an OS crash or power
  loss could lose the last commits. A background thread therefore checkpoints the WAL every
  `sync_interval` seconds (a checkpoint syncs the WAL first), which bounds that window. Control
  plane writes (top-ups, grants) keep `synchronous=FULL` and sync the WAL at every commit, which
  also makes earlier hot commits durable. Auto-checkpointing is off on this connection so a commit
  never stalls the loop copying pages back.

One writer per event loop (`Store.hot()` keeps them by loop): a `sqlite3` connection is used by
one thread at a time, and a test or a tool may run several loops over one store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

BUSY_RETRY_FIRST = 0.0005  # seconds; doubled up to BUSY_RETRY_MAX while the lock stays busy
BUSY_RETRY_MAX = 0.05
BUSY_GIVE_UP = 30.0  # the control plane's own busy_timeout: never wait longer than it would


class WriterBusy(Exception):
    """The database stayed locked by another writer for longer than `BUSY_GIVE_UP` seconds."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def open_connection(path: str) -> sqlite3.Connection:
    """A connection for hot writes: autocommit mode (we issue BEGIN), WAL, NORMAL, no waiting."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "busy_timeout=0",
        "foreign_keys=ON",
        "wal_autocheckpoint=0",
    ):
        conn.execute(f"PRAGMA {pragma}")
    return conn


class LoopWriter:
    """Runs synchronous write operations on one loop's thread, grouped into shared commits."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self.loop = loop
        self._conn: sqlite3.Connection | None = None
        # The open group's operations waiting for its commit (None: no group is open).
        self._waiters: list[asyncio.Future[None]] | None = None
        self.commits = 0  # group transactions committed (observability, tests)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_connection(self.path)
        return self._conn

    async def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run `operation(conn)` in the current group transaction; return after its commit.

        Raises what the operation raised (its writes undone), `WriterBusy`, or the commit's
        error (every operation of that group is then undone)."""
        waiters = await self._join_group()
        conn = self._connection()
        conn.execute("SAVEPOINT op")
        try:
            result = operation(conn)
        except BaseException:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            raise
        conn.execute("RELEASE op")
        # One future per operation, so a cancelled caller cancels only its own wait: the
        # group still commits, and the others still learn the outcome.
        done: asyncio.Future[None] = self.loop.create_future()
        waiters.append(done)
        await done
        return result

    async def _join_group(self) -> list[asyncio.Future[None]]:
        if self._waiters is not None:
            return self._waiters
        delay, waited = BUSY_RETRY_FIRST, 0.0
        while True:
            if self._waiters is not None:  # another caller opened a group while we slept
                return self._waiters
            try:
                self._connection().execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if waited >= BUSY_GIVE_UP:
                    raise WriterBusy(
                        f"the database {self.path} stayed locked by another writer for "
                        f"{BUSY_GIVE_UP:.0f} s"
                    ) from None
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, BUSY_RETRY_MAX)
                continue
            waiters: list[asyncio.Future[None]] = []
            self._waiters = waiters
            self.loop.call_soon(self._finish_group)
            return waiters

    def _finish_group(self) -> None:
        waiters, self._waiters = self._waiters, None
        if waiters is None or self._conn is None:
            return  # `close` committed this group already (and may have closed the connection)
        try:
            self._conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            log.error("a group commit failed; its operations were undone: %s", exc)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        self.commits += 1
        for waiter in waiters:
            if not waiter.done():  # a cancelled caller's future is already done
                waiter.set_result(None)

    def close(self) -> None:
        """Commit an open group (its callers are waiting for it) and close the connection."""
        if self._waiters is not None:
            self._finish_group()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Checkpointer:
    """A daemon thread that checkpoints the WAL every `interval` seconds (see durability above)."""

    def __init__(self, path: str, interval: float) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tollgate-wal-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=1000")
        try:
            while not self._stop.wait(self.interval):
                self.checkpoint(conn)
            self.checkpoint(conn)  # a last sync on the way out
        finally:
            conn.close()

    @staticmethod
    def checkpoint(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # never kill the thread: the next round retries
            log.warning("WAL checkpoint failed (will retry): %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
