"""The `tollgate` CLI in-process (typer's CliRunner) against a temporary SQLite database.

Exit codes: 0 success, 1 operational failure, 2 usage error. Errors are one line on stderr.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import Cli
from tests.conftest import ADMIN_TOKEN
from tests.support.server import serve_in_thread
from tollgate.app import create_app
from tollgate.cli import app
from tollgate.settings import load_settings
from tollgate.store.migrate import all_revisions

ACCOUNT_FIELDS = {
    "id",
    "name",
    "status",
    "balance",
    "balance_nanos",
    "held",
    "held_nanos",
    "created_at",
    "modified_at",
}
UNKNOWN = "0123456789abcdef0123456789abcdef"


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# --- accounts -------------------------------------------------------------------------------------


def test_accounts_create_show_list_as_json(cli: Cli) -> None:
    created = cli.json("accounts", "create", "Acme Corp")
    assert set(created) == ACCOUNT_FIELDS
    assert re.fullmatch(r"[0-9a-f]{32}", created["id"])
    assert (created["name"], created["status"], created["balance"]) == (
        "Acme Corp",
        "active",
        "0.00",
    )
    assert cli.json("accounts", "show", created["id"]) == created
    listed = cli.json("accounts", "list")
    assert listed["accounts"] == [created]
    assert (listed["page"], listed["per_page"], listed["total"]) == (1, 20, 1)


def test_accounts_list_pages(cli: Cli) -> None:
    made = [cli.account(f"a{i}") for i in range(3)]
    first = cli.json("accounts", "list", "--per-page", "2")
    second = cli.json("accounts", "list", "--per-page", "2", "--page", "2")
    assert [a["id"] for a in first["accounts"] + second["accounts"]] == made
    assert first["total_pages"] == 2


def test_account_tables_fit_a_terminal_and_keep_ids_whole(cli: Cli) -> None:
    account_id = cli.account("A rather long account name that keeps going and going")
    cli("credits", "grant", account_id, "--amount-cents", "123456")
    for args in (
        ["accounts", "list"],
        ["accounts", "show", account_id],
        ["credits", "ledger", account_id],
    ):
        result = cli(*args)
        assert result.exit_code == 0, result.stderr
        assert all(len(line) <= 80 for line in result.stdout.splitlines()), result.stdout
        if args[1] != "ledger":
            assert account_id in result.stdout
    assert "$1234.56" in cli("accounts", "show", account_id).stdout


def test_accounts_create_prints_the_id(cli: Cli) -> None:
    result = cli("accounts", "create", "Plain")
    assert result.exit_code == 0
    [account_id] = re.findall(r"[0-9a-f]{32}", result.stdout)
    assert cli.json("accounts", "show", account_id)["name"] == "Plain"


def test_disable_and_enable(cli: Cli) -> None:
    account_id = cli.account()
    assert cli.json("accounts", "disable", account_id)["status"] == "disabled"
    assert cli.json("accounts", "show", account_id)["status"] == "disabled"
    assert cli.json("accounts", "enable", account_id)["status"] == "active"
    assert "disabled" in cli("accounts", "disable", account_id).stdout


# --- tokens ---------------------------------------------------------------------------------------


def test_tokens_create_list_revoke(cli: Cli) -> None:
    account_id = cli.account()
    created = cli.json("tokens", "create", account_id, "--name", "ci", "--permissions", "read, run")
    assert created["token"].startswith("tg_" + created["id"])
    assert created["permissions"] == ["run", "read"]
    listed = cli("tokens", "list", account_id, "--json")
    assert created["token"] not in listed.stdout
    [token] = json.loads(listed.stdout)["tokens"]
    assert token == {k: v for k, v in created.items() if k != "token"}
    table = cli("tokens", "list", account_id).stdout
    assert created["id"] in table and "active" in table

    revoked = cli.json("tokens", "revoke", account_id, created["id"])
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    assert cli.json("tokens", "revoke", account_id, created["id"]) == revoked
    assert "revoked" in cli("tokens", "list", account_id).stdout


def test_token_secret_is_printed_once_in_the_table_output(cli: Cli) -> None:
    account_id = cli.account()
    result = cli("tokens", "create", account_id, "--name", "n", "--permissions", "run")
    assert result.exit_code == 0
    assert len(re.findall(r"tg_[0-9a-f]{16}[A-Za-z0-9_-]{43}", result.stdout)) == 1
    assert "shown only now" in result.stdout


def test_token_of_another_account_is_not_revoked(cli: Cli) -> None:
    mine, theirs = cli.account("mine"), cli.account("theirs")
    token = cli.json("tokens", "create", theirs, "--name", "t", "--permissions", "run")
    result = cli("tokens", "revoke", mine, token["id"])
    assert result.exit_code == 2
    assert "does not exist in account" in one_error_line(result.stderr)
    assert cli.json("tokens", "list", theirs)["tokens"][0]["status"] == "active"


def test_token_expiry(cli: Cli) -> None:
    account_id = cli.account()
    later = cli.json(
        "tokens",
        "create",
        account_id,
        "--name",
        "t",
        "--permissions",
        "run",
        "--expires",
        "2099-06-01T12:00:00+02:00",
    )
    assert later["expires_at"] == "2099-06-01T10:00:00Z"
    naive = cli.json(
        "tokens",
        "create",
        account_id,
        "--name",
        "t",
        "--permissions",
        "run",
        "--expires",
        "2099-06-01",
    )
    assert naive["expires_at"] == "2099-06-01T00:00:00Z"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--permissions", "run,fly"], "unknown permission 'fly'"),
        (["--permissions", ","], "--permissions"),
        (["--permissions", "run", "--expires", "2001-01-01"], "in the past"),
        (["--permissions", "run", "--expires", "next tuesday"], "--expires"),
    ],
)
def test_bad_token_options_exit_2_and_create_nothing(
    cli: Cli, args: list[str], message: str
) -> None:
    account_id = cli.account()
    result = cli("tokens", "create", account_id, "--name", "t", *args)
    assert result.exit_code == 2
    assert message in one_error_line(result.stderr)
    assert cli.json("tokens", "list", account_id)["tokens"] == []


# --- credits --------------------------------------------------------------------------------------


def test_credits_grant_balance_and_ledger(cli: Cli) -> None:
    account_id = cli.account()
    entry = cli.json("credits", "grant", account_id, "--amount-cents", "1050", "--note", "hi")
    assert (entry["kind"], entry["amount"], entry["balance_after"], entry["note"]) == (
        "grant",
        "10.50",
        "10.50",
        "hi",
    )
    table = cli("credits", "grant", account_id, "--amount-cents", "5")
    assert table.exit_code == 0 and "$0.05" in table.stdout and "$10.55" in table.stdout
    balance = cli.json("credits", "balance", account_id)
    assert (balance["balance"], balance["balance_nanos"]) == ("10.55", 10_550_000_000)
    assert "$10.55" in cli("credits", "balance", account_id).stdout
    ledger = cli.json("credits", "ledger", account_id)
    assert [(e["amount"], e["balance_after"]) for e in ledger["entries"]] == [
        ("0.05", "10.55"),
        ("10.50", "10.50"),
    ]
    older = cli.json("credits", "ledger", account_id, "--limit", "1")
    assert older["next_before"] == ledger["entries"][0]["seq"]
    rest = cli.json("credits", "ledger", account_id, "--before", str(older["next_before"]))
    assert [e["amount"] for e in rest["entries"]] == ["10.50"]


def test_credits_grant_with_a_reference_applies_once(cli: Cli) -> None:
    account_id = cli.account()
    args = ("credits", "grant", account_id, "--amount-cents", "700", "--reference", "inv-1")
    first = cli.json(*args)
    again = cli(*args)
    assert again.exit_code == 0 and "nothing changed" in again.stdout
    assert cli.json(*args) == first
    assert cli.json("credits", "balance", account_id)["balance"] == "7.00"


@pytest.mark.parametrize(
    ("amount", "message"),
    [("0", "greater than 0"), ("-5", "greater than 0"), ("10000000001", "less than or equal")],
)
def test_bad_amounts_exit_2_and_grant_nothing(cli: Cli, amount: str, message: str) -> None:
    account_id = cli.account()
    result = cli("credits", "grant", account_id, "--amount-cents", amount)
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert "--amount-cents" in line and message in line
    assert cli.json("credits", "ledger", account_id)["entries"] == []


# --- exit codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["accounts", "show", UNKNOWN],
        ["accounts", "show", "not-an-id"],
        ["accounts", "disable", UNKNOWN],
        ["accounts", "enable", UNKNOWN],
        ["tokens", "create", UNKNOWN, "--name", "t", "--permissions", "run"],
        ["tokens", "list", UNKNOWN],
        ["tokens", "revoke", UNKNOWN, "0123456789abcdef"],
        ["credits", "grant", UNKNOWN, "--amount-cents", "100"],
        ["credits", "balance", UNKNOWN],
        ["credits", "ledger", UNKNOWN],
    ],
)
def test_unknown_account_exits_2_with_one_line(cli: Cli, args: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert "account" in one_error_line(result.stderr).lower()
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["accounts", "create"],
        ["accounts", "frobnicate"],
        ["nonsense"],
        ["tokens", "create", UNKNOWN, "--name", "t"],
        ["credits", "grant", UNKNOWN, "--amount-cents", "ten"],
        ["credits", "grant", UNKNOWN, "--amount-cents", "1.5"],
        ["accounts", "list", "--per-page", "101"],
        ["credits", "ledger", UNKNOWN, "--limit", "0"],
        ["serve", "--port", "70000"],
    ],
)
def test_bad_arguments_exit_2(cli: Cli, args: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""


def test_invalid_config_exits_2(cli: Cli, write_config: Callable[[str], Path]) -> None:
    bad = write_config('[server]\nport = "eighty"\n')
    for args in (["accounts", "list"], ["migrate"], ["serve"]):
        result = cli(*args, "--config", str(bad))
        assert result.exit_code == 2
        assert "server.port" in result.stderr
    missing = cli("accounts", "list", "--config", "/nonexistent/tollgate.toml")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    env_bad = cli("accounts", "list", TOLLGATE_DATABASE_URL="mysql://x/y")
    assert env_bad.exit_code == 2 and "database.url" in env_bad.stderr


def test_config_file_chooses_the_database(
    cli: Cli, tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    other_db = tmp_path / "other.db"
    config = write_config(f'[database]\nurl = "sqlite:///{other_db}"\n')
    env = {k: v for k, v in cli.env.items() if k != "TOLLGATE_DATABASE_URL"}
    result = cli.runner.invoke(
        app,
        ["accounts", "create", "via-config", "--config", str(config), "--json"],
        env={**env, "TOLLGATE_DATABASE_URL": None},
    )
    assert result.exit_code == 0, result.stderr
    assert other_db.exists()


def test_unreachable_database_exits_1_without_leaking_the_password(cli: Cli) -> None:
    url = "postgresql://tollgate:s3cret-pw@127.0.0.1:1/tollgate"
    for args in (["accounts", "list"], ["migrate"], ["credits", "balance", UNKNOWN]):
        result = cli(*args, TOLLGATE_DATABASE_URL=url)
        assert result.exit_code == 1, result.output
        line = one_error_line(result.stderr)
        assert "cannot use the database" in line
        assert "s3cret-pw" not in result.output and "***" in line


def test_sqlite_path_that_cannot_be_created_exits_1(cli: Cli, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = cli("accounts", "list", TOLLGATE_DATABASE_URL=f"sqlite:///{blocker}/sub/x.db")
    assert result.exit_code == 1
    assert "database" in one_error_line(result.stderr)


# --- migrate --------------------------------------------------------------------------------------


def test_migrate_applies_then_reports_up_to_date(cli: Cli) -> None:
    first = cli("migrate")
    assert first.exit_code == 0 and f"applied: {', '.join(all_revisions())}" in first.stdout
    second = cli("migrate")
    assert second.exit_code == 0 and "already up to date" in second.stdout
    assert cli.json("migrate") == {"applied": [], "current": all_revisions()[-1]}


# --- the CLI and the admin API agree --------------------------------------------------------------


def test_cli_and_admin_api_print_the_same_objects(cli: Cli, tmp_path: Path) -> None:
    account_id = cli.account("shared")
    cli("credits", "grant", account_id, "--amount-cents", "250", "--note", "n")
    settings = load_settings(
        env={
            "TOLLGATE_DATABASE_URL": cli.env["TOLLGATE_DATABASE_URL"],
            "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "TOLLGATE_SANDBOX__ENABLED": "false",
        }
    )
    with serve_in_thread(create_app(settings)) as url:
        api = httpx.Client(
            base_url=f"{url}/admin/v1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert api.get(f"/accounts/{account_id}").json() == cli.json("accounts", "show", account_id)
        assert api.get(f"/accounts/{account_id}/ledger").json() == cli.json(
            "credits", "ledger", account_id
        )
        made = api.post(
            f"/accounts/{account_id}/tokens", json={"name": "api", "permissions": ["run"]}
        ).json()
        assert cli.json("tokens", "list", account_id)["tokens"] == [
            {k: v for k, v in made.items() if k != "token"}
        ]
        api.close()


def test_every_command_has_help(cli: Cli) -> None:
    for args in (
        [],
        ["serve"],
        ["migrate"],
        ["sim"],
        ["accounts"],
        ["accounts", "create"],
        ["accounts", "list"],
        ["accounts", "show"],
        ["accounts", "disable"],
        ["accounts", "enable"],
        ["tokens"],
        ["tokens", "create"],
        ["tokens", "list"],
        ["tokens", "revoke"],
        ["credits"],
        ["credits", "grant"],
        ["credits", "balance"],
        ["credits", "ledger"],
    ):
        result = cli(*args, "--help")
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.stdout


def test_expires_option_is_documented_with_an_example(cli: Cli) -> None:
    assert "ISO 8601" in cli("tokens", "create", "--help").stdout


def test_user_text_prints_literally_not_as_markup(cli: Cli) -> None:
    name = "[/] Evil [red]Corp[/red] [link=x]"
    result = cli("accounts", "create", name)
    assert result.exit_code == 0, result.output
    assert name in result.stdout
    account_id = re.findall(r"[0-9a-f]{32}", result.stdout)[0]
    cli("credits", "grant", account_id, "--amount-cents", "1", "--note", "[bold]n[/]")
    assert name in cli("accounts", "show", account_id).stdout
    assert "[bold]n[/]" in cli("credits", "ledger", account_id).stdout
    token = cli("tokens", "create", account_id, "--name", "[/]", "--permissions", "run")
    assert token.exit_code == 0 and "([/])" in token.stdout
