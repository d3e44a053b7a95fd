"""`tollgate gateways`, in-process against a temporary SQLite database.

The CLI validates with the management API's own functions (`tollgate.gateway_config`) and prints
its gateway object, so these tests check the CLI's part: `--set` typing, output and exit codes.
"""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import Cli
from tests.cli.test_cli import UNKNOWN, one_error_line
from tollgate.cli import app
from tollgate.gateway_config import default_gateway_config

GATEWAY_FIELDS = {"id", *default_gateway_config(), "created_at", "modified_at", "is_default"}


def test_create_show_list_update_delete(cli: Cli) -> None:
    account_id = cli.account()
    created = cli.json("gateways", "create", account_id, "prod", "--set", "zdr=true")
    assert set(created) == GATEWAY_FIELDS
    assert (created["id"], created["zdr"], created["is_default"]) == ("prod", True, False)
    assert {k: created[k] for k in default_gateway_config() if k != "zdr"} == {
        k: v for k, v in default_gateway_config().items() if k != "zdr"
    }
    assert cli.json("gateways", "show", account_id, "prod") == created

    updated = cli.json(
        "gateways", "update", account_id, "prod", "--set", "cache_ttl=300", "-s", "zdr=false"
    )
    assert (updated["cache_ttl"], updated["zdr"], updated["collect_logs"]) == (300, False, True)
    assert updated["created_at"] == created["created_at"]
    assert cli.json("gateways", "show", account_id, "prod") == updated

    cli.json("gateways", "create", account_id, "staging")
    listed = cli.json("gateways", "list", account_id)
    assert [g["id"] for g in listed["gateways"]] == ["staging", "prod"]  # newest first
    assert (listed["total"], listed["page"], listed["per_page"]) == (2, 1, 20)
    assert cli.json("gateways", "list", account_id, "--search", "PRO")["gateways"] == [updated]
    paged = cli.json("gateways", "list", account_id, "--per-page", "1", "--page", "2")
    assert [g["id"] for g in paged["gateways"]] == ["prod"] and paged["total_pages"] == 2

    deleted = cli.json("gateways", "delete", account_id, "prod", "--yes")
    assert deleted == updated
    assert [g["id"] for g in cli.json("gateways", "list", account_id)["gateways"]] == ["staging"]


def test_set_values_are_typed_by_the_setting(cli: Cli) -> None:
    account_id = cli.account()
    rules = '{"enabled": true, "rules": [{"limit": 5, "limitType": "cost", "window": 3600}]}'
    created = cli.json(
        "gateways",
        "create",
        account_id,
        "typed",
        "--set",
        "store_id=123",
        "--set",
        "rate_limiting_technique=sliding",
        "--set",
        "log_management=null",
        "--set",
        "retry_max_attempts=3",
        "--set",
        f"spend_limits={rules}",
    )
    assert created["store_id"] == "123"  # a text setting keeps "123" a string
    assert created["rate_limiting_technique"] == "sliding"
    assert created["log_management"] is None and created["retry_max_attempts"] == 3
    assert created["spend_limits"]["rules"][0]["id"] == "rule-1"
    updated = cli.json("gateways", "update", account_id, "typed", "--set", "store_id=null")
    assert updated["store_id"] is None and updated["spend_limits"] == created["spend_limits"]


def test_tables(cli: Cli) -> None:
    account_id = cli.account()
    cli("gateways", "create", account_id, "a-rather-long-gateway-name-0123456789", "-s", "zdr=true")
    listed = cli("gateways", "list", account_id)
    assert listed.exit_code == 0
    assert "a-rather-long-gateway-name-0123456789" in listed.stdout
    assert all(len(line) <= 80 for line in listed.stdout.splitlines()), listed.stdout
    shown = cli("gateways", "show", account_id, "a-rather-long-gateway-name-0123456789")
    assert "zdr" in shown.stdout and "true" in shown.stdout
    name = "a-rather-long-gateway-name-0123456789"
    updated = cli("gateways", "update", account_id, name, "--set", "cache_ttl=60")
    assert "cache_ttl=60" in updated.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "{a}", "Bad!"], "'Bad!' is not a gateway id"),
        (["create", "{a}", "x" * 65], "is not a gateway id"),
        (["create", "{a}", "x", "--set", "zdr=yes"], 'zdr must be true or false; got "yes"'),
        (["create", "{a}", "x", "--set", "zdr=1"], "zdr must be true or false; got 1"),
        (["create", "{a}", "x", "--set", "cache_ttl=-1"], "cache_ttl must be an integer"),
        (["create", "{a}", "x", "--set", "cache_ttl=abc"], "cache_ttl must be an integer"),
        (["create", "{a}", "x", "--set", "nope=1"], "--set nope: a gateway has no such setting"),
        (["create", "{a}", "x", "--set", "zdr"], "--set takes key=value"),
        (["create", "{a}", "x", "--set", "id=y"], "read-only"),
        (["create", "{a}", "x", "-s", "zdr=true", "-s", "zdr=false"], "given twice"),
        (["create", "{a}", "x", "--set", "spend_limits={"], "spend_limits must be"),
        (["update", "{a}", "x"], "nothing to change"),
        (["update", "{a}", "missing", "--set", "zdr=true"], "does not exist"),
        (["show", "{a}", "missing"], "Gateway 'missing' does not exist"),
        (["delete", "{a}", "missing", "--yes"], "does not exist"),
        (["delete", "{a}", "prod"], "add --yes"),
        (["show", "{a}", "UPPER"], "is not a gateway id"),
    ],
)
def test_bad_input_exits_2_with_one_line(cli: Cli, args: list[str], message: str) -> None:
    account_id = cli.account()
    cli.json("gateways", "create", account_id, "prod")
    result = cli("gateways", *[a.replace("{a}", account_id) for a in args])
    assert result.exit_code == 2, result.output
    assert message in one_error_line(result.stderr)
    assert result.stdout == ""
    assert [g["id"] for g in cli.json("gateways", "list", account_id)["gateways"]] == ["prod"]


def test_create_twice_exits_2(cli: Cli) -> None:
    account_id = cli.account()
    cli.json("gateways", "create", account_id, "prod")
    result = cli("gateways", "create", account_id, "prod")
    assert result.exit_code == 2
    assert "already exists" in one_error_line(result.stderr)


def test_delete_asks_on_a_terminal(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tollgate.cli_gateways._interactive", lambda: True)
    account_id = cli.account()
    cli.json("gateways", "create", account_id, "prod")
    kept = cli.runner.invoke(
        app,
        ["gateways", "delete", account_id, "prod"],
        input="n\n",
        env=cli.env,
    )
    assert kept.exit_code == 1 and "Delete gateway 'prod'" in kept.stderr
    assert "nothing deleted" in kept.stderr
    assert cli.json("gateways", "show", account_id, "prod")["id"] == "prod"
    gone = cli.runner.invoke(
        app,
        ["gateways", "delete", account_id, "prod", "--json"],
        input="y\n",
        env=cli.env,
    )
    assert gone.exit_code == 0, gone.output
    assert json.loads(gone.stdout)["id"] == "prod"
    assert cli("gateways", "show", account_id, "prod").exit_code == 2


def test_the_default_gateway_is_the_default(cli: Cli) -> None:
    account_id = cli.account()
    assert cli.json("gateways", "create", account_id, "default")["is_default"] is True


@pytest.mark.parametrize(
    "args",
    [
        ["list", UNKNOWN],
        ["create", UNKNOWN, "prod"],
        ["show", UNKNOWN, "prod"],
        ["update", UNKNOWN, "prod", "--set", "zdr=true"],
        ["delete", UNKNOWN, "prod", "--yes"],
        ["list", "not-an-id"],
    ],
)
def test_unknown_account_exits_2(cli: Cli, args: list[str]) -> None:
    result = cli("gateways", *args)
    assert result.exit_code == 2
    assert "account" in one_error_line(result.stderr).lower()
    assert result.stdout == ""


def test_help_says_when_a_running_server_sees_changes(cli: Cli) -> None:
    for command in ("update", "delete"):
        text = " ".join(cli("gateways", command, "--help").stdout.split())
        assert "within 10 seconds" in text
