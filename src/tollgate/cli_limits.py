"""`tollgate limits show | set | remove`: the account's spending limit.

The same store functions and bounds as the billing API's `spending-limit` (`tollgate.api.billing`,
`tollgate.store.limits`). The amount is in dollars (`--amount 50`); `--json` prints the API's
`{config: {amount (cents), duration, strategy}, enabled}` with the account id, the amount in
dollars and what the current window has counted so far (`spent`, held or charged).

A running gateway caches an account's spending limit for 5 seconds and may serve it up to twice
that old while refreshing it (`Meter`, `tollgate.cache`), so it applies a limit changed here
within 10 seconds. (The billing API applies it at once in the process that serves it.)
"""

from __future__ import annotations

from enum import StrEnum
from fractions import Fraction
from typing import Annotated, Any

import typer

from tollgate import money, operator
from tollgate.api.admin import dollars
from tollgate.api.billing_fields import MAX_LIMIT_CENTS, MIN_LIMIT_CENTS
from tollgate.billing import limits as limit_rules
from tollgate.billing import windows
from tollgate.cli_common import (
    ConfigOption,
    JsonOption,
    console,
    human_dollars,
    key_value_table,
    load_settings_or_exit,
    parse_dollars,
    print_json,
    run_with_store,
)
from tollgate.store import Store
from tollgate.store import limits as limit_repo

LIMIT_NOTE = (
    "A running server applies a change within 10 seconds (it caches the limit for 5 s and may "
    "serve it up to twice that old while refreshing)."
)
limits_app = typer.Typer(
    help="Show, set or remove an account's spending limit (Unified Billing spend per day, week "
    "or month, across all its gateways). " + LIMIT_NOTE
)

AccountArg = Annotated[str, typer.Argument(help="The account id (32 lowercase hex characters).")]


class Period(StrEnum):
    daily = "daily"
    weekly = "weekly"
    monthly = "monthly"


class WindowKind(StrEnum):
    fixed = "fixed"
    sliding = "sliding"


async def limit_json(store: Store, account_id: str) -> dict[str, Any]:
    """The billing API's `{config, enabled}` (config.amount in cents), with the account id and
    what the current window has counted (held or charged) so far."""
    limit = await limit_repo.get_account_limit(store, account_id)
    if limit is None:
        return {"account_id": account_id, "enabled": False, "config": {}}
    spec = limit_rules.account_limit(account_id, limit)
    span = windows.span(spec.window, windows.utc_now())
    spent = await limit_repo.window_spend(store, spec.key, span.count_from, span.count_until)
    return {
        "account_id": account_id,
        "enabled": True,
        "config": {
            "amount": money.round_half_up(Fraction(limit.amount_nanos, money.NANOS_PER_CENT)),
            "duration": limit.duration,
            "strategy": limit.strategy,
        },
        "amount": dollars(limit.amount_nanos),
        "spent": dollars(spent),
        "spent_nanos": spent,
    }


_WINDOW_WORDS = {
    ("daily", "fixed"): "per UTC calendar day",
    ("weekly", "fixed"): "per ISO week (from Monday, UTC)",
    ("monthly", "fixed"): "per UTC calendar month",
    ("daily", "sliding"): "in any 24 hours",
    ("weekly", "sliding"): "in any 7 days",
    ("monthly", "sliding"): "in any 30 days",
}


def _print_limit(body: dict[str, Any]) -> None:
    if not body["enabled"]:
        console().print(f"No spending limit on account {body['account_id']}.")
        return
    config = body["config"]
    table = key_value_table()
    table.add_row("account", body["account_id"])
    table.add_row("limit", f"${body['amount']}")
    table.add_row("period", config["duration"])
    table.add_row(
        "window", f"{config['strategy']} ({_WINDOW_WORDS[config['duration'], config['strategy']]})"
    )
    table.add_row("spent", f"${body['spent']} in the current window")
    console().print(table)


@limits_app.command("show")
def limits_show(
    account_id: AccountArg, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """Show the account's spending limit and what its current window has counted."""

    async def act(store: Store) -> dict[str, Any]:
        await operator.require_account(store, account_id)
        return await limit_json(store, account_id)

    body = run_with_store(load_settings_or_exit(config), act)
    if as_json:
        print_json(body)
    else:
        _print_limit(body)


@limits_app.command("set", help="Set (or replace) the account's spending limit. " + LIMIT_NOTE)
def limits_set(
    account_id: AccountArg,
    amount: Annotated[
        str,
        typer.Option(
            "--amount",
            help=f"The most Unified Billing spend per period, in dollars, "
            f"{human_dollars(money.from_cents(MIN_LIMIT_CENTS))} or more (e.g. 50).",
            show_default=False,
        ),
    ],
    period: Annotated[
        Period, typer.Option("--period", help="daily, weekly or monthly.", show_default=False)
    ],
    window: Annotated[
        WindowKind,
        typer.Option(
            "--window",
            help="fixed: UTC calendar day/ISO week/month; sliding: the last 24 h / 7 d / 30 d.",
        ),
    ] = WindowKind.fixed,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    cents = parse_dollars(
        amount, "--amount", minimum_cents=MIN_LIMIT_CENTS, maximum_cents=MAX_LIMIT_CENTS
    )

    async def act(store: Store) -> dict[str, Any]:
        await operator.require_account(store, account_id)
        await limit_repo.set_account_limit(
            store, account_id, money.from_cents(cents), period.value, window.value
        )
        return await limit_json(store, account_id)

    body = run_with_store(load_settings_or_exit(config), act)
    if as_json:
        print_json(body)
    else:
        _print_limit(body)


@limits_app.command("remove", help="Remove the account's spending limit. " + LIMIT_NOTE)
def limits_remove(
    account_id: AccountArg, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    async def act(store: Store) -> bool:
        await operator.require_account(store, account_id)
        return await limit_repo.delete_account_limit(store, account_id)

    deleted = run_with_store(load_settings_or_exit(config), act)
    if as_json:
        print_json({"account_id": account_id, "deleted": deleted})
    elif deleted:
        console().print(f"Removed the spending limit of account {account_id}.")
    else:
        console().print(f"Account {account_id} had no spending limit; nothing changed.")
