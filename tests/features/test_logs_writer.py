"""The log writer against a real store (SQLite and PostgreSQL): batches, order, the pending
bound, retries when the database fails, and the shutdown flush."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from tests.api.test_logs_api import record
from tollgate.features.logs import LogWriter, native_model
from tollgate.gateway_cache import GatewayCache
from tollgate.settings import LogSettings
from tollgate.store import Store
from tollgate.store import accounts as account_repo
from tollgate.store import logs as log_repo
from tollgate.store.logs import LogQuery, LogRecord
from tollgate.store.migrate import migrate


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await migrate(store)
    yield store
    await store.close()


async def stored_ids(store: Store, account_id: str) -> list[int]:
    records, _ = await log_repo.list_logs(
        store, account_id, "default", LogQuery(descending=False), offset=0, limit=1000
    )
    return [int(r.id, 16) for r in records]


def writer_for(store: Store, **settings: int) -> LogWriter:
    return LogWriter(store, GatewayCache(store), LogSettings(**settings))  # type: ignore[arg-type]


def queue(writer: LogWriter, records: list[LogRecord]) -> None:
    writer._pending.extend(records)  # what submit() appends, without building a request


async def test_flush_writes_everything_in_batches_in_order(store: Store) -> None:
    account = await account_repo.create_account(store, "logs")
    writer = writer_for(store, batch_size=3)
    queue(writer, [record(n, account.id) for n in range(1, 9)])

    assert await writer.flush() == 8

    assert await stored_ids(store, account.id) == list(range(1, 9))
    assert writer.written == 8 and writer.dropped == 0


async def test_a_failed_insert_keeps_the_batch_for_the_next_flush(store: Store) -> None:
    account = await account_repo.create_account(store, "logs")
    writer = writer_for(store, batch_size=10)
    good = [record(n, account.id) for n in (1, 2)]
    # a model name longer than its column: PostgreSQL refuses it, so the insert fails
    poison = dataclasses.replace(record(3, account.id), model="m" * 300)
    queue(writer, [*good, poison])
    if store.dialect == "sqlite":
        pytest.skip("SQLite does not enforce VARCHAR lengths, so nothing fails to insert here")

    with pytest.raises(Exception):  # noqa: B017  (the driver's DataError)
        await writer.flush()

    assert len(writer._pending) == 3 and await stored_ids(store, account.id) == []
    writer._pending.pop()
    assert await writer.flush() == 2


async def test_submit_sheds_the_oldest_beyond_max_pending(store: Store) -> None:
    writer = writer_for(store, max_pending=2)
    account = await account_repo.create_account(store, "logs")
    # submit() itself: through a capture of a request whose gateway is known
    from tests.features.test_logs_capture import finished_capture

    for n in range(3):
        writer.submit(await finished_capture(account.id, log_id=f"{n:032x}"))

    assert [r.id for r in writer._pending] == [f"{1:032x}", f"{2:032x}"]
    assert writer.dropped == 1


async def test_start_and_aclose_flush_what_is_waiting(store: Store) -> None:
    account = await account_repo.create_account(store, "logs")
    writer = writer_for(store, flush_interval_ms=60_000)
    writer.start()
    queue(writer, [record(n, account.id) for n in (1, 2)])

    await writer.aclose()

    assert await stored_ids(store, account.id) == [1, 2]


@pytest.mark.parametrize(
    ("path", "body", "model"),
    [
        ("chat/completions", {"model": "gpt-4o"}, "gpt-4o"),
        ("v1beta/models/gemini-2.5-flash:generateContent", None, "gemini-2.5-flash"),
        ("v1/models/gemini-2.5-pro:streamGenerateContent", {}, "gemini-2.5-pro"),
        ("files", None, None),
    ],
)
def test_native_model(path: str, body: dict[str, object] | None, model: str | None) -> None:
    assert native_model(path, body) == model


async def test_the_migration_creates_the_table_the_schema_describes(store: Store) -> None:
    from sqlalchemy import inspect

    from tollgate.store.schema_logs import request_logs

    async with store.read() as conn:
        columns = await conn.run_sync(
            lambda sync: {c["name"] for c in inspect(sync).get_columns("request_logs")}
        )
        indexes = await conn.run_sync(
            lambda sync: {i["name"] for i in inspect(sync).get_indexes("request_logs")}
        )
    assert columns == {c.name for c in request_logs.columns}
    assert indexes == {i.name for i in request_logs.indexes}
