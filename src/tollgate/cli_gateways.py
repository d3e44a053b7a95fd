"""`tollgate gateways list | create | show | update | delete`: an account's gateways.

The same store functions and the same validation as the gateways management API
(`tollgate.api.management`, `tollgate.gateway_config`): a value the API refuses, the CLI refuses
with the same words, and `--json` prints the API's gateway object. Settings are given as
`--set key=value`; each value is typed by the setting's own validator (`zdr=true` is a boolean,
`cache_ttl=300` an integer, `store_id=123` a string, `cache_ttl=null` null, and object settings
such as `spend_limits` take JSON).

A running gateway caches each gateway for 5 seconds (`GatewayCache`'s TTL) and may serve an
entry up to twice that old while refreshing it (`tollgate.cache`), so it sees a change made here
within 10 seconds. (The management API applies changes at once in the process that serves it.)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import orjson
import typer

from tollgate import operator
from tollgate.api.management import gateway_object
from tollgate.cli_common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    ConfigOption,
    JsonOption,
    console,
    fail,
    key_value_table,
    list_table,
    load_settings_or_exit,
    print_json,
    run_with_store,
)
from tollgate.errors import Conflict, GatewayError, NotFound
from tollgate.gateway_cache import DEFAULT_GATEWAY_ID
from tollgate.gateway_config import (
    GATEWAY_ID_MAX_LENGTH,
    READ_ONLY_FIELDS,
    SETTINGS,
    default_gateway_config,
    parse_gateway_create,
    parse_gateway_update,
)
from tollgate.ids import GATEWAY_ID
from tollgate.store import GatewayRecord, Page, Store
from tollgate.store import gateways as gateway_repo

T = TypeVar("T")

CACHE_NOTE = (
    "A running server sees the change within 10 seconds (it caches a gateway for 5 s and may "
    "serve it up to twice that old while refreshing)."
)

gateways_app = typer.Typer(
    help="List, create, show, update and delete an account's gateways. " + CACHE_NOTE
)

AccountArg = Annotated[str, typer.Argument(help="The account id (32 lowercase hex characters).")]
GatewayArg = Annotated[
    str,
    typer.Argument(
        help=f"The gateway id: 1 to {GATEWAY_ID_MAX_LENGTH} of a-z, 0-9, '-' and '_'.",
        show_default=False,
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="A setting as key=value, repeatable: --set zdr=true --set cache_ttl=300. Values "
        "are typed by the setting (true/false, integers, null; JSON for spend_limits, dlp...).",
        show_default=False,
    ),
]


def _run(config: Path | None, action: Callable[[Store], Awaitable[T]]) -> T:
    return run_with_store(load_settings_or_exit(config), action)


def check_gateway_id(gateway_id: str) -> str:
    """Exit 2 for an id no gateway can have (before the database is opened)."""
    if not GATEWAY_ID.fullmatch(gateway_id):
        fail(
            f"'{gateway_id[:80]}' is not a gateway id: ids are 1 to {GATEWAY_ID_MAX_LENGTH} "
            "characters of lowercase letters, digits, '-' and '_'."
        )
    return gateway_id


def gateway_not_found(account_id: str, gateway_id: str) -> NotFound:
    return NotFound(
        f"Gateway '{gateway_id}' does not exist in account {account_id}; "
        f"list them with `tollgate gateways list {account_id}`.",
        code="gateway_not_found",
    )


# --- --set key=value ------------------------------------------------------------------------------


def _typed(name: str, raw: str) -> object:
    """`raw` as the value the setting's validator accepts: the JSON reading first (true, 300,
    null, {...}), then the plain string; when neither fits, the validator's own error."""
    validate = SETTINGS[name]
    try:
        decoded: object = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw  # not JSON: only a string can be meant; the full parse judges it
    try:
        validate(decoded, name)
        return decoded
    except GatewayError:
        pass
    try:
        validate(raw, name)
        return raw
    except GatewayError:
        return decoded  # report the error for what the user most likely meant


def parse_sets(pairs: list[str] | None) -> dict[str, object]:
    """`--set key=value` pairs as typed settings; a malformed pair or unknown key exits 2."""
    changes: dict[str, object] = {}
    for pair in pairs or []:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            fail(f"--set takes key=value (e.g. --set cache_ttl=300); got {pair[:80]!r}")
        if name == "id" or name in READ_ONLY_FIELDS:
            fail(f"--set {name}: '{name}' cannot be set; it is read-only (ids cannot change)")
        if name not in SETTINGS:
            fail(f"--set {name}: a gateway has no such setting; settings: {', '.join(SETTINGS)}")
        if name in changes:
            fail(f"--set {name} is given twice; give each setting once")
        changes[name] = _typed(name, raw)
    return changes


def _explained(action: Callable[[], T]) -> T:
    """Run a gateway_config parse; its 400 becomes exit 2 with `--set ` before the field name."""
    try:
        return action()
    except GatewayError as exc:
        if exc.status != 400:
            raise
        fail(f"--set {exc.message}" if exc.param else exc.message, EXIT_USAGE)


# --- output ---------------------------------------------------------------------------------------


def _shown(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def _print_gateway(body: dict[str, object]) -> None:
    table = key_value_table()
    for name, value in body.items():
        table.add_row(name, _shown(value))
    console().print(table)


def _rate_limit(config: dict[str, Any]) -> str:
    limit, interval = config.get("rate_limiting_limit"), config.get("rate_limiting_interval")
    if not limit or not interval:
        return "off"
    return f"{limit}/{interval}s"


def _print_gateways(records: list[GatewayRecord]) -> None:
    table = list_table("ID", "DEFAULT", "LOGS", "CACHE TTL", "RATE LIMIT", "ZDR", "CREATED")
    for record in records:
        body = gateway_object(record)
        table.add_row(
            record.id,
            "yes" if record.is_default else "",
            "on" if body.get("collect_logs") else "off",
            f"{body['cache_ttl']}s" if body.get("cache_ttl") else "off",
            _rate_limit(body),
            "on" if body.get("zdr") else "off",
            record.created_at.strftime("%Y-%m-%d"),
        )
    console().print(table)


# --- commands -------------------------------------------------------------------------------------


@gateways_app.command("list")
def gateways_list(
    account_id: AccountArg,
    search: Annotated[
        str | None, typer.Option(help="Only gateways whose id contains this text.")
    ] = None,
    page: Annotated[int, typer.Option(min=1, help="Page number, from 1.")] = 1,
    per_page: Annotated[int, typer.Option(min=1, max=50, help="Gateways per page.")] = 20,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List an account's gateways, newest first."""

    async def act(store: Store) -> Page[GatewayRecord]:
        await operator.require_account(store, account_id)
        return await gateway_repo.list_gateways(
            store,
            account_id,
            search=search.lower() if search else None,
            offset=(page - 1) * per_page,
            limit=per_page,
        )

    found = _run(config, act)
    pages = math.ceil(found.total / per_page)
    if as_json:
        print_json(
            {
                "gateways": [gateway_object(r) for r in found.items],
                "page": page,
                "per_page": per_page,
                "total": found.total,
                "total_pages": pages,
            }
        )
        return
    _print_gateways(found.items)
    console().print(f"page {page} of {max(pages, 1)}, {found.total} gateway(s)")


@gateways_app.command("create")
def gateways_create(
    account_id: AccountArg,
    gateway_id: GatewayArg,
    settings: SetOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a gateway: the defaults of Cloudflare's `default` gateway, changed by --set."""
    check_gateway_id(gateway_id)
    body = {"id": gateway_id, **default_gateway_config(), **parse_sets(settings)}
    _, parsed = _explained(lambda: parse_gateway_create(body))

    async def act(store: Store) -> GatewayRecord:
        await operator.require_account(store, account_id)
        try:
            return await gateway_repo.insert_gateway(
                store, account_id, gateway_id, parsed, is_default=gateway_id == DEFAULT_GATEWAY_ID
            )
        except gateway_repo.GatewayExists:
            raise Conflict(
                f"A gateway named '{gateway_id}' already exists in account {account_id}; "
                f"change it with `tollgate gateways update {account_id} {gateway_id} --set ...`.",
                code="already_exists",
            ) from None

    record = _run(config, act)
    if as_json:
        print_json(gateway_object(record))
    else:
        console().print(f"Created gateway {record.id} in account {account_id}.")


@gateways_app.command("show")
def gateways_show(
    account_id: AccountArg,
    gateway_id: GatewayArg,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a gateway and every setting."""
    check_gateway_id(gateway_id)

    async def act(store: Store) -> GatewayRecord:
        await operator.require_account(store, account_id)
        record = await gateway_repo.get_gateway(store, account_id, gateway_id)
        if record is None:
            raise gateway_not_found(account_id, gateway_id)
        return record

    body = gateway_object(_run(config, act))
    if as_json:
        print_json(body)
    else:
        _print_gateway(body)


@gateways_app.command("update", help="Change settings of a gateway. " + CACHE_NOTE)
def gateways_update(
    account_id: AccountArg,
    gateway_id: GatewayArg,
    settings: SetOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    check_gateway_id(gateway_id)
    changes = parse_sets(settings)
    if not changes:
        fail("nothing to change: give at least one --set key=value (e.g. --set zdr=true)")

    async def act(store: Store) -> GatewayRecord:
        await operator.require_account(store, account_id)
        current = await gateway_repo.get_gateway(store, account_id, gateway_id)
        if current is None:
            raise gateway_not_found(account_id, gateway_id)
        # The API's PUT replaces every setting; the CLI sends the current ones with the changes.
        body = {**default_gateway_config(), **current.config, **changes}
        parsed = _explained(lambda: parse_gateway_update(body, gateway_id))
        record = await gateway_repo.update_gateway(store, account_id, gateway_id, parsed)
        if record is None:  # deleted in between
            raise gateway_not_found(account_id, gateway_id)
        return record

    record = _run(config, act)
    if as_json:
        print_json(gateway_object(record))
    else:
        shown = ", ".join(f"{k}={_shown(record.config.get(k))}" for k in changes)
        console().print(f"Updated gateway {record.id}: {shown}.")


def _interactive() -> bool:
    return sys.stdin.isatty()


@gateways_app.command("delete", help="Delete a gateway and its request logs. " + CACHE_NOTE)
def gateways_delete(
    account_id: AccountArg,
    gateway_id: GatewayArg,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask; needed when not on a terminal.")
    ] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    check_gateway_id(gateway_id)
    if not yes:
        if not _interactive():
            fail("deleting a gateway also deletes its logs; add --yes to confirm")
        question = f"Delete gateway '{gateway_id}' of account {account_id} and its logs?"
        if not click.confirm(question, err=True):
            fail("nothing deleted (you answered no)", EXIT_FAILURE)

    async def act(store: Store) -> GatewayRecord:
        await operator.require_account(store, account_id)
        record = await gateway_repo.delete_gateway(store, account_id, gateway_id)
        if record is None:
            raise gateway_not_found(account_id, gateway_id)
        return record

    record = _run(config, act)
    if as_json:
        print_json(gateway_object(record))
    else:
        console().print(f"Deleted gateway {record.id} of account {account_id}.")
