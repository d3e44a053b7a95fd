"""`tollgate accounts | tokens | credits`: the operator's work, straight on the configured store.

These commands call the same functions as the admin API (`tollgate.operator`, the store
repositories) and validate input with the API's own request models, so both surfaces accept the
same values and print the same JSON objects (`--json`). A running gateway sees a disable or a
revocation made here within its token cache's lifetime (up to 10 seconds: 5 s, then served
stale while it reloads); the admin API applies it at once.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.table import Table

from tollgate import operator
from tollgate.api.admin import (
    MAX_GRANT_CENTS,
    CreateAccount,
    CreateToken,
    GrantCredits,
    account_json,
    entry_json,
    ledger_page,
    token_json,
    token_status,
)
from tollgate.cli_common import (
    ConfigOption,
    JsonOption,
    console,
    human_dollars,
    load_settings_or_exit,
    print_json,
    run_with_store,
    short_time,
    validated,
)
from tollgate.store import Account, ApiToken, LedgerEntry, Page, Store
from tollgate.store import accounts as account_repo
from tollgate.store import tokens as token_repo

accounts_app = typer.Typer(help="Create, list, show, disable and enable accounts.")
tokens_app = typer.Typer(help="Create, list and revoke an account's API tokens.")
credits_app = typer.Typer(help="Grant credits; show an account's balance and ledger.")

T = TypeVar("T")

AccountArg = Annotated[str, typer.Argument(help="The account id (32 lowercase hex characters).")]


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    for column in columns:
        if column in ("ID", "ACCOUNT"):
            table.add_column(column, no_wrap=True, min_width=16)
        else:
            table.add_column(column, overflow="fold")
    return table


def _show_account(account: Account) -> None:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(no_wrap=True)
    table.add_row("id", account.id)
    table.add_row("name", account.name)
    table.add_row("status", account.status)
    table.add_row("balance", human_dollars(account.balance_nanos))
    table.add_row("held", human_dollars(account.held_nanos))
    table.add_row("created", short_time(account.created_at))
    console().print(table)


def _run(config: Path | None, action: Callable[[Store], Awaitable[T]]) -> T:
    return run_with_store(load_settings_or_exit(config), action)


# --- accounts ----------------------------------------------------------------------------------


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Argument(help="A name for the account.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an account (it starts with a $0 balance)."""
    body = validated(CreateAccount, {"name": name}, lambda _: "NAME")

    async def act(store: Store) -> Account:
        return await account_repo.create_account(store, body.name)

    account = _run(config, act)
    if as_json:
        print_json(account_json(account))
    else:
        console().print(f"Created account {account.id} ({account.name}).")


@accounts_app.command("list")
def accounts_list(
    page: Annotated[int, typer.Option(min=1, help="Page number, from 1.")] = 1,
    per_page: Annotated[int, typer.Option(min=1, max=100, help="Accounts per page.")] = 20,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """List accounts, oldest first."""

    async def act(store: Store) -> Page[Account]:
        return await account_repo.list_accounts(store, offset=(page - 1) * per_page, limit=per_page)

    found = _run(config, act)
    pages = math.ceil(found.total / per_page)
    if as_json:
        print_json(
            {
                "accounts": [account_json(a) for a in found.items],
                "page": page,
                "per_page": per_page,
                "total": found.total,
                "total_pages": pages,
            }
        )
        return
    table = _table("ID", "NAME", "STATUS", "BALANCE", "CREATED")
    for a in found.items:
        table.add_row(
            a.id,
            a.name,
            a.status,
            human_dollars(a.balance_nanos),
            a.created_at.strftime("%Y-%m-%d"),
        )
    out = console()
    out.print(table)
    out.print(f"page {page} of {max(pages, 1)}, {found.total} account(s)")


def _account_action(
    account_id: str, config: Path | None, as_json: bool, status: str | None
) -> None:
    async def act(store: Store) -> Account:
        if status is None:
            return await operator.require_account(store, account_id)
        return await operator.set_account_status(store, account_id, status)

    account = _run(config, act)
    if as_json:
        print_json(account_json(account))
    else:
        _show_account(account)


@accounts_app.command("show")
def accounts_show(
    account_id: AccountArg, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Show an account and its balance."""
    _account_action(account_id, config, as_json, None)


@accounts_app.command("disable")
def accounts_disable(
    account_id: AccountArg, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Disable an account: its tokens stop working until it is enabled again."""
    _account_action(account_id, config, as_json, "disabled")


@accounts_app.command("enable")
def accounts_enable(
    account_id: AccountArg, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Enable a disabled account."""
    _account_action(account_id, config, as_json, "active")


# --- tokens --------------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    account_id: AccountArg,
    name: Annotated[str, typer.Option("--name", help="A name for the token.")],
    permissions: Annotated[
        str, typer.Option("--permissions", help="Comma-separated: run, read, edit.")
    ],
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires", help="Expiry, ISO 8601 (e.g. 2030-01-31T00:00:00Z; UTC if no zone)."
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API token. Its secret is printed once and never again."""
    wanted = [p.strip() for p in permissions.split(",") if p.strip()]
    body = validated(
        CreateToken,
        {"name": name, "permissions": wanted, "expires_at": expires},
        lambda f: _option("expires" if f == "expires_at" else f.split(".")[0]),
    )

    async def act(store: Store) -> tuple[ApiToken, str]:
        return await operator.issue_token(
            store,
            account_id,
            name=body.name,
            permissions=frozenset(body.permissions),
            expires_at=body.expires_at,
        )

    record, secret = _run(config, act)
    if as_json:
        print_json(token_json(record, secret))
        return
    out = console()
    out.print(f"Created token {record.id} ({record.name}) for account {account_id}.")
    out.print(f"permissions: {', '.join(token_json(record)['permissions'])}")
    out.print(f"expires: {short_time(record.expires_at) if record.expires_at else 'never'}")
    out.print("token (shown only now; store it safely):")
    out.print(secret, soft_wrap=True)


@tokens_app.command("list")
def tokens_list(
    account_id: AccountArg, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """List an account's tokens (never their secrets)."""

    async def act(store: Store) -> list[ApiToken]:
        await operator.require_account(store, account_id)
        return await token_repo.list_tokens(store, account_id)

    tokens = _run(config, act)
    if as_json:
        print_json({"tokens": [token_json(t) for t in tokens]})
        return
    table = _table("ID", "NAME", "PERMISSIONS", "STATUS", "EXPIRES")
    for t in tokens:
        permissions = ",".join(token_json(t)["permissions"])
        table.add_row(t.id, t.name, permissions, token_status(t), short_time(t.expires_at))
    console().print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    account_id: AccountArg,
    token_id: Annotated[str, typer.Argument(help="The token id (see `tollgate tokens list`).")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke a token of this account. Revoking twice is harmless."""

    async def act(store: Store) -> ApiToken:
        return await operator.revoke_token(store, account_id, token_id)

    token = _run(config, act)
    if as_json:
        print_json(token_json(token))
    else:
        console().print(f"Revoked token {token.id} ({token.name}) of account {account_id}.")


# --- credits -------------------------------------------------------------------------------------


@credits_app.command("grant")
def credits_grant(
    account_id: AccountArg,
    amount_cents: Annotated[
        int, typer.Option("--amount-cents", help=f"Cents to grant, 1 to {MAX_GRANT_CENTS}.")
    ],
    note: Annotated[str, typer.Option("--note", help="Why (kept in the ledger).")] = "",
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="Idempotency key: a repeat with it grants nothing."),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Grant credits to an account (a ledger `grant` entry)."""
    body = validated(
        GrantCredits,
        {"amount_cents": amount_cents, "note": note, "reference": reference},
        _option,
    )

    async def act(store: Store) -> tuple[LedgerEntry, bool]:
        return await operator.grant_credits(
            store,
            account_id,
            amount_cents=body.amount_cents,
            note=body.note,
            reference=body.reference,
        )

    entry, created = _run(config, act)
    if as_json:
        print_json(entry_json(entry))
    elif created:
        console().print(
            f"Granted {human_dollars(entry.amount_nanos)} to account {account_id}; "
            f"balance now {human_dollars(entry.balance_after_nanos)}."
        )
    else:
        console().print(
            f"Already granted with reference {reference!r} (entry {entry.id}, "
            f"{human_dollars(entry.amount_nanos)}); nothing changed."
        )


@credits_app.command("balance")
def credits_balance(
    account_id: AccountArg, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Show an account's credit balance."""

    async def act(store: Store) -> Account:
        return await operator.require_account(store, account_id)

    account = _run(config, act)
    body = account_json(account)
    if as_json:
        print_json({k: body[k] for k in ("id", "balance", "balance_nanos", "held", "held_nanos")})
    else:
        console().print(f"{human_dollars(account.balance_nanos)} (account {account.id})")


@credits_app.command("ledger")
def credits_ledger(
    account_id: AccountArg,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Entries to show.")] = 50,
    before: Annotated[
        int | None, typer.Option(min=1, help="Show entries older than this sequence number.")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show an account's ledger, newest first, with the balance after each entry."""

    async def act(store: Store) -> dict[str, Any]:
        account = await operator.require_account(store, account_id)
        return await ledger_page(store, account, limit=limit, before=before)

    page = _run(config, act)
    if as_json:
        print_json(page)
        return
    table = _table("SEQ", "WHEN", "KIND", "AMOUNT", "BALANCE AFTER", "NOTE")
    for e in page["entries"]:
        table.add_row(
            str(e["seq"]),
            e["created_at"][:16].replace("T", " "),
            e["kind"],
            human_dollars(e["amount_nanos"]),
            human_dollars(e["balance_after_nanos"]),
            e["note"],
        )
    out = console()
    out.print(table)
    if page["next_before"] is not None:
        out.print(f"more: tollgate credits ledger {account_id} --before {page['next_before']}")
