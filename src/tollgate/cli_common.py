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
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

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


def print_json(value: Any) -> None:
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


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


def settings_with(config: Path | None, **overrides: object) -> Settings:
    """Settings with command-line overrides applied as environment variables (so validated)."""
    env = dict(os.environ)
    env.update({name: str(value) for name, value in overrides.items() if value is not None})
    return load_settings_or_exit(config, env)


def validated(model: type[M], data: dict[str, Any], label: Callable[[str], str]) -> M:
    """Validate CLI input with the admin API's own request model; a failure exits 2."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fail(explain_errors(exc.errors(), label=label).message)


def redact(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


async def open_database(store: Store) -> list[str]:
    """First contact with the database: bring the schema up to date; returns revisions applied."""
    try:
        return await migrate(store)
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
