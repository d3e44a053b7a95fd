"""Group-committed SQLite writes on a writer thread per event loop: the hot path on SQLite.

Every Unified Billing request writes (a hold or a settlement, batched) and so does its log.
Through SQLAlchemy's async engine each statement is a hop to aiosqlite's thread and back, about
2 ms of CPU per transaction. Here the hot operations are plain `sqlite3` calls on a thread of
their own, and the operations issued in the same loop iteration share one transaction:

    result = await store.hot().run(operation)   # operation(conn) -> result, synchronous

- `run` adds the operation to the loop iteration's group, which is handed to the writer thread
  once the current burst of callbacks has run (`loop.call_soon`). The thread runs each group
  queued meanwhile in one transaction (`BEGIN IMMEDIATE` ... `COMMIT`), each operation inside a
  `SAVEPOINT`: one that raises is undone alone and its caller gets the error, the others commit.
  `run` returns only once the commit is done, so a caller that goes on to forward a request has
  its hold on disk (against a process crash; see durability below). A cancelled caller cancels
  only its wait: its operation still runs with its group.
- **Why a thread.** These writes used to run on the loop thread itself. Measured at one
  connection (bench/, 2026-11-30): a request log batch (up to 64 rows) held the loop about 1 ms
  and a settlement batch about 0.6 ms, and the request that arrived meanwhile waited; with the
  log inserts left out, the gateway's p99 fell from about 4-5 ms to about 1.3-3 ms. On the thread
  the loop goes on serving while SQLite works (`sqlite3` releases the GIL inside SQLite), and the
  loop thread only builds the rows and hands them over. `sqlite3` takes the GIL back after every
  step, and on this thread each take waits for the busy loop, so the operations insert their
  rows as one multi-row statement (`_util.insert_rows`), never `executemany` (a step per row).
  The operations run alongside the loop: they must read only what their caller built for them
  (rows, batches), never state the loop goes on changing.
- The thread never gives up on a busy lock quickly, nor blocks the loop: when another connection
  (the control plane's aiosqlite writer, or another process) holds the write lock, `BEGIN` fails
  at once (`busy_timeout` is 0) and the thread sleeps briefly and tries again, for at most
  `BUSY_GIVE_UP` seconds (then every operation of the group fails with `WriterBusy`).
- **Durability.** The connection commits with `synchronous=NORMAL`: a commit is in the operating
  system's cache when `run` returns, so a killed process loses nothing, but an OS crash or power
  loss could lose the last commits. A background thread therefore checkpoints the WAL every
  `sync_interval` seconds (a checkpoint syncs the WAL first), which bounds that window. Control
  plane writes (top-ups, grants) keep `synchronous=FULL` and sync the WAL at every commit, which
  also makes earlier hot commits durable. Auto-checkpointing is off on this connection so a commit
  never stalls copying pages back.

One writer per event loop (`Store.hot()` keeps them by loop): a test or a tool may run several
loops over one store, and each writer answers on its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

BUSY_RETRY_FIRST = 0.0005  # seconds; doubled up to BUSY_RETRY_MAX while the lock stays busy
# Short: with several processes on one file, a writer that backed off 50 ms kept losing the
# lock to the others (4 workers x 1,000 accounts: p99 0.6-0.95 s at 50 ms, 0.37-0.48 s at 2 ms).
# A refused BEGIN costs microseconds, and the thread retries it, never the loop.
BUSY_RETRY_MAX = 0.002
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


@dataclass(slots=True)
class _Operation:
    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = None


class LoopWriter:
    """Runs one loop's synchronous write operations on a writer thread, in shared commits."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self.loop = loop
        self._conn: sqlite3.Connection | None = None  # the writer thread's
        # The operations issued in this loop iteration, not yet handed to the thread.
        self._group: list[_Operation] | None = None
        self._groups: queue.SimpleQueue[list[_Operation] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.commits = 0  # group transactions committed (observability, tests)

    async def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run `operation(conn)` in a group transaction; return after its commit.

        Raises what the operation raised (its writes undone), `WriterBusy`, or the commit's
        error (every operation of that group is then undone)."""
        future: asyncio.Future[T] = self.loop.create_future()
        if self._group is None:
            self._group = []
            self.loop.call_soon(self._hand_over)
        self._group.append(_Operation(operation, future))
        return await future

    def _hand_over(self) -> None:
        group, self._group = self._group, None
        if not group:
            return
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name="tollgate-sqlite-writer", daemon=True
            )
            self._thread.start()
        self._groups.put(group)

    # --- the writer thread ----------------------------------------------------------------

    def _work(self) -> None:
        try:
            stopping = False
            while not stopping:
                group = self._groups.get()
                if group is None:
                    return
                stopping = self._take_queued(group)
                self._write(group)
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _take_queued(self, group: list[_Operation]) -> bool:
        """Add the groups queued while the last commit ran to `group` (they share the next
        commit); True when `close` asked to stop after them."""
        while True:
            try:
                more = self._groups.get_nowait()
            except queue.Empty:
                return False
            if more is None:
                return True
            group += more

    def _write(self, group: list[_Operation]) -> None:
        try:
            conn = self._conn = self._conn or open_connection(self.path)
            self._begin(conn)
        except BaseException as exc:  # the lock stayed busy, or the file cannot be opened
            for op in group:
                op.error = exc
            self._answer(group)
            return
        try:
            for op in group:
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.run(conn)
                except BaseException as exc:
                    op.error = exc
                    conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException as exc:  # the commit (or the file under a savepoint) failed
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            log.error("a group commit failed; its operations were undone: %s", exc)
            for op in group:
                op.error = op.error or exc
        else:
            self.commits += 1
        self._answer(group)  # every operation is answered, whatever happened

    def _begin(self, conn: sqlite3.Connection) -> None:
        delay, waited = BUSY_RETRY_FIRST, 0.0
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if waited >= BUSY_GIVE_UP:
                    raise WriterBusy(
                        f"the database {self.path} stayed locked by another writer for "
                        f"{BUSY_GIVE_UP:.0f} s"
                    ) from None
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, BUSY_RETRY_MAX)

    def _answer(self, group: list[_Operation]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(_settle_futures, group)

    def close(self) -> None:
        """Write what was issued (its callers are waiting), then stop the thread; the thread
        closes the connection."""
        self._hand_over()
        if self._thread is not None:
            self._groups.put(None)
            self._thread.join()
            self._thread = None


def _settle_futures(group: list[_Operation]) -> None:
    for op in group:
        if op.future.done():  # a cancelled caller's
            continue
        if op.error is not None:
            op.future.set_exception(op.error)
        else:
            op.future.set_result(op.result)


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
