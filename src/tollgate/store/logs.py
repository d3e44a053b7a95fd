"""Request logs: batched inserts, the log_management trims, and the Logs API's queries.

Callers hand over validated values: `LogFilter`s whose keys and operators come from
`tollgate.api.log_query` (which refuses anything else with a 400), with values already of the
key's type (nano-dollars for `cost`, aware datetimes for `created_at`).
"""

from __future__ import annotations

import dataclasses
import operator
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, delete, false, func, not_, or_, select, update

from tollgate.store._util import insert_rows
from tollgate.store.cache_events import CacheEventKind, publish
from tollgate.store.engine import Store
from tollgate.store.holds_sqlite import stamp
from tollgate.store.schema_logs import request_logs

T = request_logs.c


# Not frozen: a frozen dataclass sets each of these 35 fields through `object.__setattr__`,
# ~8 µs for every logged request; nothing changes a record once it is built.
@dataclass(slots=True)
class LogRecord:
    """One log row. The writer builds it; the API reads it (bodies only when asked for)."""

    id: str
    account_id: str
    gateway_id: str
    created_at: datetime
    provider: str
    model: str
    path: str
    request_type: str
    status_code: int | None
    success: bool
    cached: bool
    duration_ms: int
    tokens_in: int | None
    tokens_out: int | None
    cost_nanos: int | None
    cost_estimated: bool
    custom_cost: bool
    credential_source: str | None
    zdr: bool
    metadata: str | None
    event_id: str | None
    step: int | None
    user_agent: str | None
    request_content_type: str | None
    response_content_type: str | None
    request_size: int
    response_size: int
    payload_collected: bool
    request_complete: bool
    response_complete: bool
    model_type: str | None = None
    request_body: bytes | None = None
    response_body: bytes | None = None
    feedback: int | None = None
    score: float | None = None


_FIELDS = tuple(f.name for f in dataclasses.fields(LogRecord))
_BODIES = ("request_body", "response_body")
_LIST_COLUMNS = [T[name] for name in _FIELDS if name not in _BODIES]


def _record(row: Any) -> LogRecord:
    values = dict(row._mapping)
    return LogRecord(**values)


@dataclass(frozen=True, slots=True)
class LogFilter:
    """`key operator values`: eq / neq match any value (None matches NULL); contains is a
    case-insensitive substring of any value; lt / gt / lte / gte take one value."""

    key: str
    operator: str
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class LogQuery:
    filters: tuple[LogFilter, ...] = ()
    search: str | None = None  # case-insensitive substring of id, model, provider, path, metadata
    order_by: str = "created_at"
    descending: bool = True


@dataclass(frozen=True, slots=True)
class LogStats:
    """The matching logs' count and ranges (the list's `result_info`)."""

    total: int
    min_cost_nanos: int | None
    max_cost_nanos: int | None
    min_duration: int | None
    max_duration: int | None
    min_tokens_in: int | None
    max_tokens_in: int | None
    min_tokens_out: int | None
    max_tokens_out: int | None
    min_total_tokens: int | None
    max_total_tokens: int | None


_TOTAL_TOKENS = func.coalesce(T.tokens_in, 0) + func.coalesce(T.tokens_out, 0)
# Filter and order keys (Cloudflare's names) to the expressions they compare.
COLUMNS: dict[str, Any] = {
    "id": T.id,
    "created_at": T.created_at,
    "request_content_type": T.request_content_type,
    "response_content_type": T.response_content_type,
    "request_type": T.request_type,
    "success": T.success,
    "cached": T.cached,
    "provider": T.provider,
    "model": T.model,
    "model_type": T.model_type,
    "cost": T.cost_nanos,
    "tokens": _TOTAL_TOKENS,
    "tokens_in": T.tokens_in,
    "tokens_out": T.tokens_out,
    "duration": T.duration_ms,
    "feedback": T.feedback,
    "event_id": T.event_id,
    "user_agent": T.user_agent,
    "wholesale": T.credential_source == "unified",
    "compatibilityMode": T.request_type.in_(("compat", "rest")),
}
METADATA_KEYS = ("metadata.key", "metadata.value")


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _contains(column: Any, text: str) -> ColumnElement[bool]:
    return column.ilike(f"%{_like_escape(text)}%", escape="\\")  # type: ignore[no-any-return]


def _metadata_matches(key: str, value: Any) -> ColumnElement[bool]:
    """Metadata is compact JSON (`{"k":"v","n":5}`): a key is `"k":`, a value `:v,` or `:v}`."""
    if key == "metadata.key":
        pattern = _like_escape(orjson.dumps(str(value)).decode()) + ":"
        return T.metadata.like(f"%{pattern}%", escape="\\")
    encodings = {orjson.dumps(str(value)).decode()}
    if isinstance(value, bool) or str(value).lower() in ("true", "false"):
        encodings.add(str(value).lower())
    else:
        try:
            number = float(value)
            encodings.add(orjson.dumps(int(number) if number.is_integer() else number).decode())
        except (TypeError, ValueError):
            pass
    patterns = [f"%:{_like_escape(e)}{end}%" for e in encodings for end in (",", "}")]
    return or_(*(T.metadata.like(p, escape="\\") for p in patterns))


def _equals(column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    present = [v for v in values if v is not None]
    clauses: list[ColumnElement[bool]] = []
    if present:
        clauses.append(column.in_(present))
    if len(present) < len(values):
        clauses.append(column.is_(None))
    return or_(*clauses) if clauses else false()


def _condition(where: LogFilter) -> ColumnElement[bool]:
    values, op = where.values, where.operator
    if where.key in METADATA_KEYS:
        if op == "contains":
            matched = or_(*(_contains(T.metadata, str(v)) for v in values))
        else:
            matched = or_(*(_metadata_matches(where.key, v) for v in values))
        if op == "neq":
            return or_(T.metadata.is_(None), not_(matched))
        return matched
    column = COLUMNS[where.key]
    if op == "eq":
        return _equals(column, values)
    if op == "neq":
        present = [v for v in values if v is not None]
        if len(present) < len(values):  # "is not null and not any of the others"
            return and_(column.is_not(None), *([column.not_in(present)] if present else []))
        return or_(column.is_(None), column.not_in(present))
    if op == "contains":
        return or_(*(_contains(column, str(v)) for v in values))
    comparisons = {
        "lt": column.__lt__,
        "gt": column.__gt__,
        "lte": column.__le__,
        "gte": column.__ge__,
    }
    return comparisons[op](values[0])  # type: ignore[no-any-return]


def _where(account_id: str, gateway_id: str, query: LogQuery) -> ColumnElement[bool]:
    clauses = [T.account_id == account_id, T.gateway_id == gateway_id]
    clauses += [_condition(f) for f in query.filters]
    if query.search:
        text = query.search
        clauses.append(
            or_(
                *(
                    _contains(c, text)
                    for c in (T.id, T.model, T.provider, T.path, T.metadata, T.event_id)
                )
            )
        )
    return and_(*clauses)


def _order(query: LogQuery) -> list[Any]:
    column = COLUMNS[query.order_by]
    if query.descending:
        return [column.desc(), T.id.desc()]
    return [column.asc(), T.id.asc()]


# --- the writer's side ------------------------------------------------------------------------


async def insert_logs(store: Store, records: Iterable[LogRecord]) -> int:
    if store.dialect == "sqlite":
        return await _insert_on_hot_writer(store, list(records))
    rows = [{name: getattr(r, name) for name in _FIELDS} for r in records]
    if not rows:
        return 0
    async with store.write() as conn:
        await conn.execute(request_logs.insert(), rows)
    return len(rows)


# The column names are the dataclass's own fields, never input.
_INSERT_SQL = f"INSERT INTO request_logs ({', '.join(_FIELDS)})"
_ROW_SQL = f"({', '.join('?' * len(_FIELDS))})"
# Rows per operation on the hot writer: its thread runs the billing writes in turn with these, so
# a large batch is split to keep a settlement from waiting long behind it (each chunk commits).
_HOT_CHUNK = 64


# A record's values in column order, in one C call (a per-field loop cost ~11 µs a row).
_VALUES = operator.attrgetter(*_FIELDS)
_CREATED_AT = _FIELDS.index("created_at")  # the one datetime field


def _sqlite_row(record: LogRecord) -> list[object]:
    """A record as SQLAlchemy's SQLite dialect stores it: `created_at` as naive UTC text;
    booleans need nothing, sqlite3 binds them as the integers 0 and 1 already."""
    row = list(_VALUES(record))
    row[_CREATED_AT] = stamp(record.created_at)
    return row


async def _insert_on_hot_writer(store: Store, records: list[LogRecord]) -> int:
    """SQLite: one multi-row insert per chunk (`insert_rows`) in the hot writer's group commit.
    Logs then share the commit (and the one write lock) with the billing writes instead of
    contending for it from another thread; measured in bench/logs.py."""
    writer = store.hot()
    for start in range(0, len(records), _HOT_CHUNK):
        rows = [_sqlite_row(r) for r in records[start : start + _HOT_CHUNK]]

        def insert(conn: sqlite3.Connection, rows: list[list[object]] = rows) -> None:
            insert_rows(conn, _INSERT_SQL, _ROW_SQL, rows)

        await writer.run(insert)
    return len(records)


async def count_gateway_logs(store: Store, account_id: str, gateway_id: str) -> int:
    async with store.read() as conn:
        query = select(func.count()).where(T.account_id == account_id, T.gateway_id == gateway_id)
        return int((await conn.execute(query)).scalar_one())


async def delete_oldest_logs(store: Store, account_id: str, gateway_id: str, count: int) -> int:
    """Delete the gateway's `count` oldest logs (DELETE_OLDEST); returns how many went."""
    return await delete_logs(store, account_id, gateway_id, LogQuery(descending=False), limit=count)


# --- the API's side ---------------------------------------------------------------------------


async def list_logs(
    store: Store, account_id: str, gateway_id: str, query: LogQuery, *, offset: int, limit: int
) -> tuple[list[LogRecord], LogStats]:
    where = _where(account_id, gateway_id, query)
    stats_query = select(
        func.count(),
        func.min(T.cost_nanos),
        func.max(T.cost_nanos),
        func.min(T.duration_ms),
        func.max(T.duration_ms),
        func.min(T.tokens_in),
        func.max(T.tokens_in),
        func.min(T.tokens_out),
        func.max(T.tokens_out),
        func.min(_TOTAL_TOKENS),
        func.max(_TOTAL_TOKENS),
    ).where(where)
    page_query = (
        select(*_LIST_COLUMNS).where(where).order_by(*_order(query)).offset(offset).limit(limit)
    )
    async with store.read() as conn:
        stats_row = (await conn.execute(stats_query)).one()
        rows = (await conn.execute(page_query)).all()
    stats = LogStats(*(int(v) if v is not None else None for v in stats_row))  # type: ignore[arg-type]
    return [_record(row) for row in rows], stats


async def get_log(
    store: Store, account_id: str, gateway_id: str, log_id: str, *, bodies: bool = False
) -> LogRecord | None:
    columns = [*_LIST_COLUMNS, T.request_body, T.response_body] if bodies else _LIST_COLUMNS
    query = select(*columns).where(
        T.account_id == account_id, T.gateway_id == gateway_id, T.id == log_id
    )
    async with store.read() as conn:
        row = (await conn.execute(query)).first()
    return _record(row) if row is not None else None


EDITABLE = ("feedback", "score", "metadata")


async def edit_log(
    store: Store, account_id: str, gateway_id: str, log_id: str, changes: Mapping[str, Any]
) -> LogRecord | None:
    """Set `feedback`, `score` and/or `metadata` (a JSON string or None) of one log."""
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise ValueError(f"not editable log fields: {', '.join(unknown)}")
    key = (T.account_id == account_id) & (T.gateway_id == gateway_id) & (T.id == log_id)
    async with store.write() as conn:
        if changes:
            await conn.execute(update(request_logs).where(key).values(**changes))
        row = (await conn.execute(select(*_LIST_COLUMNS).where(key))).first()
    return _record(row) if row is not None else None


async def delete_logs(
    store: Store,
    account_id: str,
    gateway_id: str,
    query: LogQuery,
    *,
    limit: int | None = None,
) -> int:
    """Delete the matching logs, at most `limit` of them in `query`'s order."""
    where = _where(account_id, gateway_id, query)
    chosen = select(T.id).where(where).order_by(*_order(query))
    if limit is not None:
        chosen = chosen.limit(limit)
    statement = delete(request_logs).where(
        T.id.in_(chosen.scalar_subquery()) if limit is not None else where
    )
    async with store.write() as conn:
        result = await conn.execute(statement)
        if result.rowcount:  # every process's log_management count of the gateway is off
            await publish(store, conn, CacheEventKind.GATEWAY_LOGS, account_id, gateway_id)
    return int(result.rowcount or 0)


__all__ = [
    "COLUMNS",
    "EDITABLE",
    "METADATA_KEYS",
    "LogFilter",
    "LogQuery",
    "LogRecord",
    "LogStats",
    "count_gateway_logs",
    "delete_logs",
    "delete_oldest_logs",
    "edit_log",
    "get_log",
    "insert_logs",
    "list_logs",
]
