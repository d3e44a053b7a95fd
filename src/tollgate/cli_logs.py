"""`tollgate logs list ACCOUNT GATEWAY [--follow]`: a gateway's request logs, and a live tail.

The same query functions as the Logs API (`tollgate.api.logs`): the filters are parsed by
`tollgate.api.log_query.parse_list_query` and run by `tollgate.store.logs.list_logs`, and `--json`
prints the API's log objects.

`--follow` prints the newest `--limit` logs oldest first, then polls every `--interval` seconds
and prints each new log as it is written, until Ctrl+C (exit 0). A log is stamped with the time
its request started and written when it ended, so each poll looks back `FOLLOW_LOOKBACK` and
skips the logs already printed: a request that ran longer than that is not shown by `--follow`
(`logs list` shows it). With `--json`, `--follow` prints one JSON object per line (JSON Lines).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated

import orjson
import typer
from rich.table import Table

from tollgate import money, operator
from tollgate.api.log_query import parse_list_query
from tollgate.api.logs import log_object
from tollgate.cli_common import (
    ConfigOption,
    JsonOption,
    console,
    fail,
    load_settings_or_exit,
    print_json,
    run_with_store,
)
from tollgate.cli_gateways import check_gateway_id
from tollgate.errors import InvalidRequest, NotFound
from tollgate.gateway_cache import DEFAULT_GATEWAY_ID
from tollgate.store import Store
from tollgate.store import gateways as gateway_repo
from tollgate.store import logs as log_repo
from tollgate.store.logs import LogQuery, LogRecord

FOLLOW_LOOKBACK = timedelta(minutes=15)
FOLLOW_PAGE = 1000  # logs read per poll, newest first, within the lookback
MAX_LIMIT = 500
WIDE = 120  # terminals at least this wide also show each log's id

logs_app = typer.Typer(help="List a gateway's request logs, or follow them as they arrive.")

# Waits between polls; tests replace it (see tests/cli/test_cli_logs.py).
_sleep = asyncio.sleep


class Status(StrEnum):
    success = "success"
    error = "error"


def query_pairs(
    model: str | None, provider: str | None, status: Status | None
) -> list[tuple[str, str]]:
    """The Logs API's query parameters for these options (exact matches, as the API's)."""
    pairs: list[tuple[str, str]] = []
    if model is not None:
        pairs.append(("model", model))
    if provider is not None:
        pairs.append(("provider", provider))
    if status is not None:
        pairs.append(("success", "true" if status is Status.success else "false"))
    return pairs


def _parsed(pairs: list[tuple[str, str]]) -> LogQuery:
    try:
        return parse_list_query(pairs)
    except InvalidRequest as exc:
        fail(exc.message)


async def _check(store: Store, account_id: str, gateway_id: str) -> None:
    """As the Logs API: the account must exist; the gateway too, except `default` (which has
    no logs until its first request creates it)."""
    await operator.require_account(store, account_id)
    if gateway_id == DEFAULT_GATEWAY_ID:
        return
    if await gateway_repo.get_gateway(store, account_id, gateway_id) is None:
        raise NotFound(
            f"Gateway '{gateway_id}' does not exist in account {account_id}; "
            f"list them with `tollgate gateways list {account_id}`.",
            code="gateway_not_found",
        )


# --- the table ------------------------------------------------------------------------------------

# Name, width, and whether the column gives way on a narrow terminal (the last of those first).
_FIXED = (
    ("TIME (UTC)", 14, False),
    ("STATUS", 7, False),
    ("TOKENS", 11, True),
    ("COST", 10, False),
    ("MS", 6, True),
)
_MIN_MODEL = 16


class LogTable:
    """Rows of logs in fixed-width columns, so batches printed one after another line up. The
    MODEL column takes what the terminal has left (folding long names); on a narrow terminal
    MS, then TOKENS, give way to keep it at least `_MIN_MODEL` wide."""

    def __init__(self) -> None:
        width = console().width
        self.header_shown = False
        self.wide = width >= WIDE
        self.columns = list(_FIXED)
        while self._model_width(width) < _MIN_MODEL and any(c[2] for c in self.columns):
            last = max(i for i, c in enumerate(self.columns) if c[2])
            del self.columns[last]
        self.model_width = max(_MIN_MODEL, self._model_width(width))

    def _model_width(self, width: int) -> int:
        fixed = sum(c[1] for c in self.columns) + (32 if self.wide else 0)
        count = len(self.columns) + 1 + (1 if self.wide else 0)
        return width - fixed - 2 * (count - 1)

    def _table(self) -> Table:
        table = Table(
            box=None, pad_edge=False, show_header=not self.header_shown, header_style="bold"
        )
        for index, (name, width, _) in enumerate(self.columns):
            if index == 2:
                table.add_column("MODEL", width=self.model_width, overflow="fold")
            right = name in ("TOKENS", "COST", "MS")
            table.add_column(name, width=width, no_wrap=True, justify="right" if right else "left")
        if self.wide:
            table.add_column("ID", width=32, no_wrap=True)
        return table

    def _cells(self, r: LogRecord) -> dict[str, str]:
        status = str(r.status_code) if r.status_code is not None else "-"
        if r.cached:
            status += " hit"
        return {
            "TIME (UTC)": r.created_at.astimezone(UTC).strftime("%m-%d %H:%M:%S"),
            "STATUS": status if r.success else f"{status} !",
            "TOKENS": f"{_count(r.tokens_in)}/{_count(r.tokens_out)}",
            "COST": _cost(r.cost_nanos),
            "MS": str(r.duration_ms),
        }

    def print(self, records: list[LogRecord]) -> None:
        table = self._table()
        for r in records:
            cells = self._cells(r)
            row = [cells[name] for name, _, _ in self.columns]
            row.insert(2, f"{r.provider}/{r.model}")
            table.add_row(*row, *([r.id] if self.wide else []))
        console().print(table)
        self.header_shown = True
        sys.stdout.flush()


def _cost(nanos: int | None) -> str:
    """To the millionth of a dollar, at least two decimals: `$0.000015`, `$0.12`; `--json` has
    the exact figure."""
    if nanos is None:
        return "-"
    if 0 < nanos < 500:
        return "<$0.000001"
    whole, _, fraction = money.format_dollars(nanos, places=6).partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _print_json_lines(records: list[LogRecord]) -> None:
    for record in records:
        sys.stdout.write(orjson.dumps(log_object(record)).decode() + "\n")
    sys.stdout.flush()


# --- following ------------------------------------------------------------------------------------


class LogFollower:
    """Finds the logs not printed yet: each poll reads the newest `FOLLOW_PAGE` logs stamped
    within `FOLLOW_LOOKBACK` and keeps those whose id it has not seen."""

    def __init__(
        self,
        store: Store,
        account_id: str,
        gateway_id: str,
        pairs: list[tuple[str, str]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.account_id = account_id
        self.gateway_id = gateway_id
        self.pairs = pairs
        self.clock = clock
        self.seen: dict[str, datetime] = {}

    async def _read(self, query: LogQuery, limit: int) -> list[LogRecord]:
        records, _ = await log_repo.list_logs(
            self.store, self.account_id, self.gateway_id, query, offset=0, limit=limit
        )
        fresh = [r for r in records if r.id not in self.seen]
        self.seen.update((r.id, r.created_at) for r in fresh)
        return sorted(fresh, key=lambda r: (r.created_at, r.id))

    async def first(self, limit: int) -> list[LogRecord]:
        """The newest `limit` logs, oldest first. Every log there is now counts as seen (up to
        `FOLLOW_PAGE` of them), so a poll never prints an old one as new."""
        newest = await self._read(parse_list_query(self.pairs), max(limit, FOLLOW_PAGE))
        return newest[-limit:]

    async def poll(self) -> list[LogRecord]:
        """Logs written since the last call, oldest first."""
        since = self.clock() - FOLLOW_LOOKBACK
        query = parse_list_query([*self.pairs, ("start_date", since.isoformat())])
        found = await self._read(query, FOLLOW_PAGE)
        self.seen = {i: t for i, t in self.seen.items() if t >= since}
        return found


async def follow(
    follower: LogFollower,
    emit: Callable[[list[LogRecord]], None],
    *,
    limit: int,
    interval: float,
    max_polls: int | None,
) -> None:
    emit(await follower.first(limit))
    polls = 0
    while max_polls is None or polls < max_polls:
        await _sleep(interval)
        polls += 1
        found = await follower.poll()
        if found:
            emit(found)


# --- the command ----------------------------------------------------------------------------------


@logs_app.command("list")
def logs_list(
    account_id: Annotated[str, typer.Argument(help="The account id.")],
    gateway_id: Annotated[str, typer.Argument(help="The gateway id (e.g. default).")],
    model: Annotated[
        str | None, typer.Option(help="Only this model (exact, e.g. gpt-4o-mini).")
    ] = None,
    provider: Annotated[
        str | None, typer.Option(help="Only this provider (exact, e.g. openai).")
    ] = None,
    status: Annotated[
        Status | None, typer.Option(help="Only successful requests, or only errors.")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_LIMIT, help="How many logs (the newest).")
    ] = 20,
    follow_logs: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing new logs as they arrive (Ctrl+C stops)."
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="With --follow: seconds between polls.")
    ] = 1.0,
    max_polls: Annotated[
        int | None, typer.Option(hidden=True, min=0, help="With --follow: stop after N polls.")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a gateway's request logs, newest first (with --follow: oldest first, then live).

    Columns: when the request started (UTC), its status ('!' marks a failure, 'hit' a cache
    hit), provider/model, tokens, cost and duration; a terminal at least 120 columns wide also
    shows each log's id. `--json` has every field, as the Logs API returns it.
    """
    check_gateway_id(gateway_id)
    pairs = query_pairs(model, provider, status)
    query = _parsed(pairs)
    settings = load_settings_or_exit(config)
    if follow_logs:
        table = LogTable()
        emit = _print_json_lines if as_json else table.print

        async def tail(store: Store) -> None:
            await _check(store, account_id, gateway_id)
            follower = LogFollower(store, account_id, gateway_id, pairs)
            await follow(follower, emit, limit=limit, interval=interval, max_polls=max_polls)

        try:
            run_with_store(settings, tail)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
        return

    async def act(store: Store) -> tuple[list[LogRecord], int]:
        await _check(store, account_id, gateway_id)
        records, stats = await log_repo.list_logs(
            store, account_id, gateway_id, query, offset=0, limit=limit
        )
        return records, stats.total

    records, total = run_with_store(settings, act)
    if as_json:
        print_json({"logs": [log_object(r) for r in records], "total": total})
        return
    if not records:
        console().print(f"No logs match in gateway {gateway_id}.")
        return
    LogTable().print(records)
    console().print(f"{len(records)} of {total} matching log(s), newest first")
