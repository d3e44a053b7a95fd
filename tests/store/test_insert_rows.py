"""`insert_rows`: the hot writer's multi-row inserts, on a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tollgate.store import _util
from tollgate.store._util import insert_rows


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "rows.db", isolation_level=None)
    conn.execute("CREATE TABLE t (a INTEGER, kind TEXT, b TEXT)")
    return conn


def test_every_row_is_inserted_with_the_row_literals(conn: sqlite3.Connection) -> None:
    insert_rows(conn, "INSERT INTO t (a, kind, b)", "(?, 'usage', ?)", [(1, "x"), (2, "y")])
    assert conn.execute("SELECT a, kind, b FROM t ORDER BY a").fetchall() == [
        (1, "usage", "x"),
        (2, "usage", "y"),
    ]


def test_rows_past_the_parameter_limit_go_in_several_statements(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_util, "_MAX_PARAMETERS", 5)  # two rows of two parameters a statement
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    insert_rows(
        conn, "INSERT INTO t (a, kind, b)", "(?, 'usage', ?)", [(i, str(i)) for i in range(5)]
    )
    assert [a for (a,) in conn.execute("SELECT a FROM t ORDER BY a")] == [0, 1, 2, 3, 4]
    assert len([s for s in statements if s.startswith("INSERT")]) == 3


def test_a_refused_row_refuses_its_whole_statement(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE UNIQUE INDEX one_a ON t (a)")
    with pytest.raises(sqlite3.IntegrityError):
        insert_rows(conn, "INSERT INTO t (a, kind, b)", "(?, 'usage', ?)", [(1, "x"), (1, "y")])
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
