"""`/readyz` follows the database: 503 with a reason while it cannot be reached, 200 once it can,
and never a hang.

PostgreSQL is reached through a TCP proxy the test controls, so the shared server is never
touched: the proxy cuts every connection (the database is down), then accepts connections it
never answers (the database hangs), then forwards again (it is back). On SQLite, the database
file disappearing (the open connections would go on writing to a deleted file) is not ready.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support.databases import fresh_postgres_database
from tests.support.server import serve_in_thread
from tests.support.tcp_proxy import PG_HOST, PG_PORT, TcpProxy
from tollgate.app import DatabaseReadiness, create_app
from tollgate.settings import load_settings

# A probe gives up after READY_TIMEOUT_SECONDS; allow the HTTP round trip on top.
ANSWER_WITHIN = DatabaseReadiness.READY_TIMEOUT_SECONDS + 1.5


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    running = TcpProxy()
    running.forward()
    try:
        yield running
    finally:
        running.close()


def gateway_on(database_url: str, tmp_path: Path) -> Any:
    settings = load_settings(
        env={
            "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
            "TOLLGATE_DATABASE_URL": database_url,
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "TOLLGATE_SANDBOX__ENABLED": "false",
            "TOLLGATE_BILLING__MAINTENANCE_INTERVAL_SECONDS": "0",
        }
    )
    return serve_in_thread(create_app(settings))


def readyz(url: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = httpx.get(f"{url}/readyz", timeout=30)
    return response.status_code, response.json(), time.monotonic() - started


def wait_until_ready(url: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while readyz(url)[0] != 200:
        assert time.monotonic() < deadline, "the gateway did not become ready again"
        time.sleep(0.1)


@pytest.mark.postgres
def test_readyz_on_postgresql_down_hanging_and_back(proxy: TcpProxy, tmp_path: Path) -> None:
    with fresh_postgres_database() as direct_url:
        url = direct_url.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{proxy.port}")
        with gateway_on(url, tmp_path) as gateway:
            status, body, _ = readyz(gateway)
            assert (status, body["status"], body["database"]) == (200, "ready", "ok")

            proxy.cut()
            status, body, took = readyz(gateway)
            assert status == 503 and body["status"] == "unavailable", body
            assert "database is unreachable" in body["database"], body
            assert took < ANSWER_WITHIN
            assert httpx.get(f"{gateway}/healthz").status_code == 200  # the process is up

            proxy.stall()
            status, body, took = readyz(gateway)
            assert status == 503, body
            assert body["database"] == "the database did not answer within 2 s"
            assert took < ANSWER_WITHIN
            # Probes that arrive together share one: none waits longer than one timeout.
            with httpx.Client(timeout=30) as client:
                started = time.monotonic()
                statuses = _concurrently(lambda: client.get(f"{gateway}/readyz").status_code, 5)
                assert statuses == [503] * 5 and time.monotonic() - started < ANSWER_WITHIN

            proxy.forward()
            wait_until_ready(gateway)
            status, body, _ = readyz(gateway)
            assert (status, body["database"]) == (200, "ok")


def _concurrently(call: Any, count: int) -> list[Any]:
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        results[index] = call()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_readyz_on_sqlite_while_the_database_file_is_missing(tmp_path: Path) -> None:
    database = tmp_path / "ready.db"
    with gateway_on(f"sqlite:///{database}", tmp_path) as gateway:
        assert readyz(gateway)[0] == 200
        database.rename(tmp_path / "moved.db")
        status, body, _ = readyz(gateway)
        assert status == 503 and body["database"] == (
            f"the SQLite database file {database} is missing"
        )
        (tmp_path / "moved.db").rename(database)
        status, body, _ = readyz(gateway)
        assert (status, body["status"]) == (200, "ready")
