"""`tollgate credits top-up` and `tollgate limits`, in-process against a temporary SQLite database.

Top-ups run through the sandbox payment provider (Stripe's test cards; no money moves).
Exit codes: 0 success, 1 declined / needs authentication, 2 bad input or unknown account.
"""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import Cli
from tests.cli.test_cli import UNKNOWN, one_error_line

VISA = "4242424242424242"
DECLINED = "4000000000000002"
NO_FUNDS = "4000000000009995"
NEEDS_3DS = "4000002760003184"


# --- credits top-up -------------------------------------------------------------------------------


def test_topup_with_a_test_card_credits_the_account(cli: Cli) -> None:
    account_id = cli.account()
    result = cli.json("credits", "top-up", account_id, "--amount", "25.50", "--card", VISA)
    assert (result["status"], result["amount"], result["amount_cents"]) == (
        "succeeded",
        "25.50",
        2550,
    )
    assert (result["brand"], result["last4"], result["sandbox"]) == ("visa", "4242", True)
    assert (result["balance"], result["balance_nanos"]) == ("25.50", 25_500_000_000)
    assert result["replayed"] is False and result["payment_intent_id"].startswith("pi_sandbox_")
    assert cli.json("credits", "balance", account_id)["balance"] == "25.50"
    [entry] = cli.json("credits", "ledger", account_id)["entries"]
    assert (entry["kind"], entry["amount"]) == ("topup", "25.50")

    # The card is saved: the next top-up needs no card.
    table = cli("credits", "top-up", account_id, "--amount", "$1,000")
    assert table.exit_code == 0, table.stderr
    assert "Top-up succeeded" in table.stdout and "visa ending 4242" in table.stdout
    assert "Balance: $1025.50" in table.stdout and "no money moved" in table.stdout


def test_topup_with_a_payment_method_id(cli: Cli) -> None:
    account_id = cli.account()
    result = cli.json(
        "credits", "top-up", account_id, "--amount", "10", "--payment-method", "pm_card_visa"
    )
    assert (result["status"], result["balance"]) == ("succeeded", "10.00")


def test_topup_with_an_idempotency_key_credits_once(cli: Cli) -> None:
    account_id = cli.account()
    args = ("credits", "top-up", account_id, "--amount", "20", "--card", VISA)
    first = cli.json(*args, "--idempotency-key", "order-1")
    again = cli.json(*args, "--idempotency-key", "order-1")
    assert again["id"] == first["id"] and again["replayed"] is True
    assert again["balance"] == "20.00"
    replay = cli(*args, "--idempotency-key", "order-1")
    assert replay.exit_code == 0 and "nothing was charged or credited again" in replay.stdout
    other = cli("credits", "top-up", account_id, "--amount", "30", "--idempotency-key", "order-1")
    assert other.exit_code == 2
    assert "--idempotency-key order-1 was already used" in one_error_line(other.stderr)
    assert cli.json("credits", "balance", account_id)["balance"] == "20.00"


@pytest.mark.parametrize(
    ("card", "code", "words"),
    [(DECLINED, "generic_decline", "declined"), (NO_FUNDS, "insufficient_funds", "insufficient")],
)
def test_declined_card_exits_1_and_credits_nothing(
    cli: Cli, card: str, code: str, words: str
) -> None:
    account_id = cli.account()
    result = cli("credits", "top-up", account_id, "--amount", "25", "--card", card, "--json")
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert (body["status"], body["error_code"], body["balance"]) == ("failed", code, "0.00")
    assert words in body["error_message"]
    assert "declined" in one_error_line(result.stderr)
    table = cli("credits", "top-up", account_id, "--amount", "25", "--card", card)
    assert table.exit_code == 1 and "declined" in table.stdout and "Balance: $0.00" in table.stdout
    assert cli.json("credits", "ledger", account_id)["entries"] == []


def test_card_needing_authentication_exits_1(cli: Cli) -> None:
    account_id = cli.account()
    result = cli("credits", "top-up", account_id, "--amount", "25", "--card", NEEDS_3DS, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "requires_action"
    assert "3-D Secure" in one_error_line(result.stderr)
    assert cli.json("credits", "balance", account_id)["balance"] == "0.00"


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("5", "must be from $10.00 to $10000.00"),
        ("10000.01", "must be from $10.00 to $10000.00"),
        ("-25", "must be from $10.00 to $10000.00"),
        ("0", "must be from $10.00 to $10000.00"),
        ("25.001", "at most two decimal places"),
        ("ten", "must be a number of dollars"),
        ("1e999999", "must be from"),
        ("nan", "must be a number of dollars"),
    ],
)
def test_bad_topup_amount_exits_2(cli: Cli, amount: str, message: str) -> None:
    account_id = cli.account()
    result = cli("credits", "top-up", account_id, "--amount", amount, "--card", VISA)
    assert result.exit_code == 2, result.output
    line = one_error_line(result.stderr)
    assert "--amount" in line and message in line
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([], "has no payment method"),
        (["--card", "4111111111111111"], "only Stripe's test card numbers"),
        (["--card", "1234"], "not a valid card number"),
        (["--payment-method", "pm_bogus"], "not a sandbox payment method"),
        (["--card", VISA, "--payment-method", "pm_card_visa"], "not both"),
        (["--idempotency-key", ""], "--idempotency-key"),
    ],
)
def test_bad_payment_options_exit_2(cli: Cli, options: list[str], message: str) -> None:
    account_id = cli.account()
    result = cli("credits", "top-up", account_id, "--amount", "25", *options)
    assert result.exit_code == 2, result.output
    assert message in one_error_line(result.stderr)
    assert cli.json("credits", "balance", account_id)["balance"] == "0.00"


def test_topup_fee_from_the_configuration(cli: Cli) -> None:
    account_id = cli.account()
    result = cli.json(
        "credits",
        "top-up",
        account_id,
        "--amount",
        "100",
        "--card",
        VISA,
        TOLLGATE_BILLING__PURCHASE_FEE_PERCENT="2.5",
    )
    assert (result["amount_cents"], result["fee_cents"], result["charged_cents"]) == (
        10000,
        250,
        10250,
    )
    assert result["balance"] == "100.00"


# --- limits ---------------------------------------------------------------------------------------


def test_limits_set_show_remove(cli: Cli) -> None:
    account_id = cli.account()
    assert cli.json("limits", "show", account_id) == {
        "account_id": account_id,
        "enabled": False,
        "config": {},
    }
    assert "No spending limit" in cli("limits", "show", account_id).stdout
    body = cli.json(
        "limits", "set", account_id, "--amount", "50", "--period", "weekly", "--window", "sliding"
    )
    assert body == {
        "account_id": account_id,
        "enabled": True,
        "config": {"amount": 5000, "duration": "weekly", "strategy": "sliding"},
        "amount": "50.00",
        "spent": "0.00",
        "spent_nanos": 0,
    }
    assert cli.json("limits", "show", account_id) == body
    table = cli("limits", "show", account_id).stdout
    assert "$50.00" in table and "in any 7 days" in table
    daily = cli.json("limits", "set", account_id, "--amount", "1.5", "--period", "daily")
    assert daily["config"] == {"amount": 150, "duration": "daily", "strategy": "fixed"}
    assert cli.json("limits", "remove", account_id) == {"account_id": account_id, "deleted": True}
    assert cli.json("limits", "remove", account_id)["deleted"] is False
    assert "nothing changed" in cli("limits", "remove", account_id).stdout
    assert cli.json("limits", "show", account_id)["enabled"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--amount", "0.99", "--period", "daily"], "--amount must be from $1.00"),
        (["--amount", "abc", "--period", "daily"], "--amount"),
        (["--amount", "10", "--period", "hourly"], "--period"),
        (["--amount", "10", "--period", "daily", "--window", "rolling"], "--window"),
        (["--amount", "10"], "--period"),
    ],
)
def test_bad_limit_options_exit_2(cli: Cli, args: list[str], message: str) -> None:
    account_id = cli.account()
    result = cli("limits", "set", account_id, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert cli.json("limits", "show", account_id)["enabled"] is False


@pytest.mark.parametrize(
    "args",
    [
        ["credits", "top-up", UNKNOWN, "--amount", "25", "--card", VISA],
        ["credits", "top-up", "not-an-id", "--amount", "25", "--card", VISA],
        ["limits", "show", UNKNOWN],
        ["limits", "set", UNKNOWN, "--amount", "10", "--period", "daily"],
        ["limits", "remove", UNKNOWN],
    ],
)
def test_unknown_account_exits_2(cli: Cli, args: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert "account" in one_error_line(result.stderr).lower()
    assert result.stdout == ""
