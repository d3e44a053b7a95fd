"""`tollgate config show` never prints a secret; `tollgate migrate` shows its progress; every new
command has `--help`."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from tollgate.store.migrate import all_revisions

MASTER_KEY = base64.b64encode(b"k" * 32).decode()
SECRETS = {
    "TOLLGATE_ADMIN_TOKEN": "admin-s3cret-token",
    "TOLLGATE_OPERATOR__MASTER_KEY": MASTER_KEY,
    "OPENAI_API_KEY": "sk-openai-s3cret",
    "TOLLGATE_PROVIDERS__OPENAI__ZDR_API_KEY": "sk-zdr-s3cret",
    "TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL": "https://proxy.example/v1?api_key=q-s3cret",
    "TOLLGATE_BILLING__STRIPE_SECRET_KEY": "sk_test_stripe_s3cret",
    "TOLLGATE_BILLING__STRIPE_WEBHOOK_SECRET": "whsec_s3cret",
    "TOLLGATE_DATABASE_URL": "postgresql://tollgate:db-s3cret@db.example:5432/tollgate",
    "TOLLGATE_REDIS__URL": "redis://:redis-s3cret@cache.example:6379/0",
}
SECRET_TEXTS = ("s3cret", MASTER_KEY)


def test_config_show_masks_every_secret(cli: Cli) -> None:
    for args in (["config", "show"], ["config", "show", "--json"]):
        result = cli(*args, **SECRETS)
        assert result.exit_code == 0, result.output
        for text in SECRET_TEXTS:
            assert text not in result.output, (text, result.output)
    body = cli.json("config", "show", **SECRETS)
    settings = body["settings"]
    assert settings["operator"]["admin_token"] == "********"
    assert settings["operator"]["master_key"] == "********"
    assert settings["providers"]["openai"]["api_key"] == "********"
    assert settings["providers"]["openai"]["zdr_api_key"] == "********"
    assert settings["providers"]["anthropic"]["api_key"] is None  # unset stays null
    assert settings["providers"]["anthropic"]["base_url"] == "https://proxy.example/v1?api_key=***"
    assert settings["billing"]["stripe_secret_key"] == "********"
    assert settings["database"]["url"] == "postgresql://tollgate:***@db.example:5432/tollgate"
    assert settings["redis"]["url"] == "redis://:***@cache.example:6379/0"
    assert settings["redis"]["key_prefix"] == "tollgate:"  # a "key" name that is no secret
    assert (body["sandbox_mode"], body["config_file"]) == (False, None)
    table = cli("config", "show", **SECRETS).stdout
    assert "providers.openai.api_key" in table and "********" in table


def test_config_show_reads_the_file_and_secrets_in_it(
    cli: Cli, write_config: Callable[[str], Path]
) -> None:
    path = write_config(
        '[server]\nport = 9999\n[operator]\nadmin_token = "file-s3cret"\n'
        '[providers.openai]\napi_key = "sk-file-s3cret"\n'
    )
    result = cli("config", "show", "--config", str(path), "--json")
    assert result.exit_code == 0 and "s3cret" not in result.output
    body = json.loads(result.stdout)
    assert body["config_file"] == str(path) and body["settings"]["server"]["port"] == 9999
    assert body["sandbox_mode"] is False


def test_config_show_of_an_invalid_configuration_exits_2(
    cli: Cli, write_config: Callable[[str], Path]
) -> None:
    result = cli("config", "show", "--config", str(write_config('[server]\nport = "x"\n')))
    assert result.exit_code == 2 and "server.port" in result.stderr


def test_migrate_shows_each_step_on_a_terminal(cli: Cli) -> None:
    result = cli("migrate", "--json", TTY_COMPATIBLE="1")
    assert result.exit_code == 0, result.output
    for revision in all_revisions():
        assert f"applied {revision}" in result.stderr
    assert json.loads(result.stdout)["applied"] == all_revisions()  # stdout stays pure JSON
    quiet = cli("migrate", TTY_COMPATIBLE="0")  # not a terminal: no progress output at all
    assert quiet.exit_code == 0 and quiet.stderr == "" and "already up to date" in quiet.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["credits", "top-up"],
        ["limits"],
        ["limits", "show"],
        ["limits", "set"],
        ["limits", "remove"],
        ["gateways"],
        ["gateways", "list"],
        ["gateways", "create"],
        ["gateways", "show"],
        ["gateways", "update"],
        ["gateways", "delete"],
        ["models"],
        ["logs"],
        ["logs", "list"],
        ["config"],
        ["config", "show"],
    ],
)
def test_every_new_command_has_help(cli: Cli, args: list[str]) -> None:
    result = cli(*args, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout
