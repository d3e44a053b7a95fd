"""What every `tollgate` command shares: options, output, exit codes and the store session.

Exit codes mean one thing each:

    0  success
    1  operational failure: the database is unreachable, the server could not start, ...
    2  usage error: bad arguments, an unknown account or token, an invalid configuration

An error prints one line, `error: <what happened and what to do>`, on stderr. (Argument errors
caught by Typer itself, such as a missing argument, keep Typer's usage box and also exit 2.)
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import typer
from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from tollgate import money
from tollgate.api.admin import dollars, explain_errors
from tollgate.errors import GatewayError
from tollgate.settings import Settings, SettingsError, load_settings
from tollgate.store import Store
from tollgate.store.migrate import migrate

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="The tollgate.toml to read (default: $TOLLGATE_CONFIG, else ./tollgate.toml).",
        dir_okay=False,
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class DatabaseUnavailable(Exception):
    """The configured database could not be opened, reached or migrated."""


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line on stderr and exit with `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def console() -> Console:
    # Built per call, so output goes to whatever sys.stdout is now (CliRunner swaps it).
    # No markup: names and notes are user data and print exactly as given.
    return Console(highlight=False, soft_wrap=True, markup=False)


def error_console() -> Console:
    """Like `console()`, on stderr: progress bars and hints, never data."""
    return Console(highlight=False, soft_wrap=True, markup=False, stderr=True)


def print_json(value: Any) -> None:
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


class StepProgress:
    """A Rich progress bar over named steps, on stderr and only on a terminal (so a pipe, a log
    file or `--json` output never receives its escape codes). Each finished step is also printed
    as a line above the bar: `{verb} {name}`."""

    def __init__(self, description: str, verb: str) -> None:
        out = error_console()
        self._verb = verb
        self._description = description
        self._task: TaskID | None = None
        self._progress = (
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=out,
            )
            if out.is_terminal
            else None
        )

    def __enter__(self) -> StepProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, steps: Sequence[str]) -> None:
        if self._progress is not None and steps:
            self._task = self._progress.add_task(self._description, total=len(steps))

    def step(self, name: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.console.print(f"{self._verb} {name}")
            self._progress.advance(self._task)


def list_table(*columns: str, keep_whole: tuple[str, ...] = ("ID", "ACCOUNT")) -> Table:
    """A table of rows that fits the terminal: the `keep_whole` columns never wrap (ids stay
    copyable), the others fold onto further lines when the terminal is narrow."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    for column in columns:
        if column in keep_whole:
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, overflow="fold")
    return table


def key_value_table() -> Table:
    """Two columns, no header: a setting's name and its value (which folds when long)."""
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


def parse_dollars(raw: str, option: str, *, minimum_cents: int, maximum_cents: int) -> int:
    """A dollar amount typed on the command line (`25`, `25.50`, `$1,000`) as whole cents, in
    [minimum_cents, maximum_cents]; anything else exits 2 with a message naming `option`."""
    text = raw.strip().replace(",", "").removeprefix("$").strip()
    low = human_dollars(money.from_cents(minimum_cents))
    high = human_dollars(money.from_cents(maximum_cents))
    try:
        amount = Decimal(text)
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite():
        fail(f"{option} must be a number of dollars such as 25 or 25.50; got {raw!r}")
    # The range first: it also keeps "1e999999" away from arithmetic that would overflow.
    if not Decimal(minimum_cents).scaleb(-2) <= amount <= Decimal(maximum_cents).scaleb(-2):
        fail(f"{option} must be from {low} to {high}; got {raw!r}")
    cents = amount.scaleb(2)
    if cents != cents.to_integral_value():
        fail(f"{option} can have at most two decimal places (whole cents); got {raw!r}")
    return int(cents)


def human_dollars(nanos: int) -> str:
    """`$12.50`, `-$0.000123`: exact, for tables."""
    return f"{'-' if nanos < 0 else ''}${dollars(abs(nanos))}"


def short_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def load_settings_or_exit(config: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    try:
        return load_settings(config, env)
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)


def environment_with(overrides: Mapping[str, object | None]) -> dict[str, str]:
    """This process's environment plus the command-line overrides that were given."""
    env = dict(os.environ)
    env.update({name: str(value) for name, value in overrides.items() if value is not None})
    return env


def settings_with(config: Path | None, **overrides: object) -> Settings:
    """Settings with command-line overrides applied as environment variables (so validated)."""
    return load_settings_or_exit(config, environment_with(overrides))


def validated(model: type[M], data: dict[str, Any], label: Callable[[str], str]) -> M:
    """Validate CLI input with the admin API's own request model; a failure exits 2."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fail(explain_errors(exc.errors(), label=label).message)


_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")  # a password may hold a "/"
_QUERY_SECRET = re.compile(
    r"([?&][^=&#]*(?:key|token|secret|password|passwd|pwd|sig)[^=&#]*=)[^&#]*", re.IGNORECASE
)


def redact(url: str) -> str:
    """A URL with its password (`user:***@`, also `:***@` for Redis) and secret-looking query
    values (`?password=***`, `?key=***`) masked."""
    return _QUERY_SECRET.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", url))


async def open_database(
    store: Store, upgrade: Callable[[Store], Awaitable[list[str]]] = migrate
) -> list[str]:
    """First contact with the database: bring the schema up to date (with `upgrade`, by default
    `tollgate.store.migrate.migrate`); returns the revisions applied."""
    try:
        return await upgrade(store)
    except Exception as exc:  # whatever the driver raises, the database is not usable
        raise DatabaseUnavailable(f"cannot use the database {redact(store.url)}: {exc}") from exc


def run_with_store(
    settings: Settings,
    action: Callable[[Store], Awaitable[T]],
    *,
    migrate_first: bool = True,
) -> T:
    """Open the configured store (migrated, unless told not to), run `action`, close the store.

    A GatewayError the action raises becomes exit 2 for a client-side problem (4xx: unknown
    account, bad value) and exit 1 otherwise; an unusable database is exit 1.
    """

    async def session() -> T:
        try:
            store = Store(settings.database.url)
        except Exception as exc:  # e.g. the SQLite file's directory cannot be created
            raise DatabaseUnavailable(
                f"cannot open the database {redact(settings.database.url)}: {exc}"
            ) from exc
        try:
            if migrate_first:
                await open_database(store)
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(session())
    except GatewayError as exc:
        fail(exc.message, EXIT_USAGE if exc.status < 500 else EXIT_FAILURE)
    except DatabaseUnavailable as exc:
        fail(str(exc), EXIT_FAILURE)
