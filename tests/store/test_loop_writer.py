"""The SQLite hot writer: group commits on its own thread (the loop is never held), per-operation
undo, lock waits, failed commits, WAL syncing, and one writer per event loop. Real SQLite files
throughout."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tollgate.store import Store, loop_writer
from tollgate.store.loop_writer import LoopWriter, WriterBusy


def _make_table(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO parent VALUES (1)")
    conn.execute(
        "CREATE TABLE t (k TEXT PRIMARY KEY, parent INTEGER NOT NULL REFERENCES parent (id))"
    )
    conn.close()


def _keys(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return sorted(k for (k,) in conn.execute("SELECT k FROM t"))
    finally:
        conn.close()


def _insert(key: str, parent: int = 1) -> Callable[[sqlite3.Connection], str]:
    def operation(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES (?, ?)", (key, parent))
        return key

    return operation


class _Ticker:
    """Counts the loop's turns while it runs: a loop held by a write would not count."""

    def __init__(self, every: float) -> None:
        self.ticks = 0
        self._task = asyncio.create_task(self._run(every))

    async def _run(self, every: float) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(every)

    def stop(self) -> None:
        self._task.cancel()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "hot.db"
    _make_table(path)
    return path


async def test_operations_issued_together_share_one_commit(db: Path) -> None:
    writer = LoopWriter(str(db), asyncio.get_running_loop())
    try:
        keys = await asyncio.gather(*(writer.run(_insert(f"k{i:02d}")) for i in range(20)))
        assert keys == [f"k{i:02d}" for i in range(20)]
        assert writer.commits == 1
        assert _keys(db) == keys  # committed: another connection sees every row
        await writer.run(_insert("later"))
        assert writer.commits == 2
    finally:
        writer.close()


async def test_the_loop_keeps_serving_while_an_operation_runs(db: Path) -> None:
    # The writes run on the writer's thread: a slow one (a big log batch, a busy disk) must not
    # hold up the requests the loop is serving meanwhile.
    writer = LoopWriter(str(db), asyncio.get_running_loop())

    def slow(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES ('slow', 1)")
        time.sleep(0.2)
        return "slow"

    ticker = _Ticker(every=0.005)
    try:
        assert await writer.run(slow) == "slow"
        assert ticker.ticks >= 10  # about 40 in 0.2 s; one if the loop had been held
        assert _keys(db) == ["slow"]
    finally:
        ticker.stop()
        writer.close()


async def test_operations_issued_while_a_commit_runs_share_the_next_one(db: Path) -> None:
    writer = LoopWriter(str(db), asyncio.get_running_loop())
    started = threading.Event()

    def slow(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES ('first', 1)")
        started.set()
        time.sleep(0.1)
        return "first"

    try:
        first = asyncio.create_task(writer.run(slow))
        while not started.is_set():
            await asyncio.sleep(0.001)
        # Issued in three loop iterations while the thread is busy: one commit for all three.
        later = []
        for i in range(3):
            later.append(asyncio.create_task(writer.run(_insert(f"later{i}"))))
            await asyncio.sleep(0)
        assert await first == "first"
        assert await asyncio.gather(*later) == ["later0", "later1", "later2"]
        assert writer.commits == 2
        assert _keys(db) == ["first", "later0", "later1", "later2"]
    finally:
        writer.close()


async def test_a_failing_operation_is_undone_alone(db: Path) -> None:
    writer = LoopWriter(str(db), asyncio.get_running_loop())

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES ('half', 1)")
        raise RuntimeError("refused after writing")

    try:
        results = await asyncio.gather(
            writer.run(_insert("a")),
            writer.run(half_then_fail),
            writer.run(_insert("b")),
            return_exceptions=True,
        )
        assert results[0] == "a" and results[2] == "b"
        assert isinstance(results[1], RuntimeError)
        assert writer.commits == 1
        assert _keys(db) == ["a", "b"]  # the failed operation's own write is gone
    finally:
        writer.close()


async def test_close_right_after_a_refused_operation_commits_once_and_logs_nothing(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The refused operation leaves its group open, its commit scheduled on the loop; `close`
    # commits it first (a shutdown), and the scheduled commit then finds nothing to do.
    writer = LoopWriter(str(db), asyncio.get_running_loop())

    def refused(conn: sqlite3.Connection) -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await writer.run(refused)
    writer.close()
    await asyncio.sleep(0.01)  # the commit scheduled by the group runs now
    assert writer.commits == 1
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert "Traceback" not in caplog.text


async def test_a_cancelled_caller_does_not_cancel_the_groups_commit(db: Path) -> None:
    writer = LoopWriter(str(db), asyncio.get_running_loop())
    try:
        first = asyncio.create_task(writer.run(_insert("cancelled")))
        second = asyncio.create_task(writer.run(_insert("kept")))
        await asyncio.sleep(0)  # both ran their statements and wait for the commit
        first.cancel()
        assert await second == "kept"
        with pytest.raises(asyncio.CancelledError):
            await first
        # The cancelled caller stopped waiting; its write was in the group and is committed,
        # as with any request whose client went away after the gateway acted on it.
        assert _keys(db) == ["cancelled", "kept"]
        assert writer.commits == 1
    finally:
        writer.close()


async def test_a_failed_commit_fails_every_operation_of_its_group(db: Path) -> None:
    writer = LoopWriter(str(db), asyncio.get_running_loop())

    def defer_foreign_keys(conn: sqlite3.Connection) -> None:
        # Checked at COMMIT, not at the statement: the commit itself fails.
        conn.execute("PRAGMA defer_foreign_keys=ON")
        conn.execute("INSERT INTO t VALUES ('orphan', 999)")

    try:
        results = await asyncio.gather(
            writer.run(_insert("a")), writer.run(defer_foreign_keys), return_exceptions=True
        )
        assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
        assert _keys(db) == []
        assert await writer.run(_insert("after")) == "after"  # the writer recovers
        assert _keys(db) == ["after"]
    finally:
        writer.close()


async def test_a_lock_held_elsewhere_is_waited_for_without_blocking_the_loop(db: Path) -> None:
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    writer = LoopWriter(str(db), asyncio.get_running_loop())
    ticker = _Ticker(every=0.001)
    try:
        pending = asyncio.create_task(writer.run(_insert("waited")))
        await asyncio.sleep(0.05)
        assert not pending.done()
        assert ticker.ticks > 5  # the loop kept running while the write waited
        other.execute("COMMIT")
        assert await asyncio.wait_for(pending, 5) == "waited"
        assert _keys(db) == ["waited"]
    finally:
        ticker.stop()
        other.close()
        writer.close()


async def test_a_lock_that_is_never_released_gives_up_with_a_clear_error(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop_writer, "BUSY_GIVE_UP", 0.05)
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    writer = LoopWriter(str(db), asyncio.get_running_loop())
    try:
        with pytest.raises(WriterBusy, match="stayed locked by another writer"):
            await writer.run(_insert("never"))
    finally:
        other.execute("ROLLBACK")
        other.close()
        writer.close()
    assert _keys(db) == []


async def test_the_checkpointer_syncs_the_wal_into_the_database(tmp_path: Path) -> None:
    path = tmp_path / "sync.db"
    _make_table(path)
    store = Store(f"sqlite:///{path}", wal_sync_interval=0.02)
    try:
        await store.hot().run(_insert("synced"))
        probe = sqlite3.connect(path, isolation_level=None)
        try:
            for _ in range(250):  # the checkpointer runs every 20 ms; allow 5 s on a busy CI box
                await asyncio.sleep(0.02)
                # Nothing left to copy back = the checkpointer has synced every frame.
                _, frames, copied = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames == copied and frames > 0:
                    break
            assert frames == copied and frames > 0
        finally:
            probe.close()
    finally:
        await store.close()
    assert _keys(path) == ["synced"]


def test_each_event_loop_gets_its_own_writer(tmp_path: Path) -> None:
    path = tmp_path / "loops.db"
    _make_table(path)
    store = Store(f"sqlite:///{path}")
    writers: list[LoopWriter] = []

    def in_a_thread(key: str) -> None:
        async def go() -> None:
            writer = store.hot()
            writers.append(writer)
            assert store.hot() is writer  # stable within its loop
            await writer.run(_insert(key))

        asyncio.run(go())

    threads = [threading.Thread(target=in_a_thread, args=(f"t{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(w) for w in writers}) == 3
    asyncio.run(store.close())
    assert _keys(path) == ["t0", "t1", "t2"]


def test_an_in_memory_sqlite_database_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="needs a SQLite file"):
        Store("sqlite:///:memory:")
