"""`tollgate logs list [--follow]`, in-process against a temporary SQLite database.

Logs are written straight into the store (as the log writer does). `--follow` is driven by
replacing its wait between polls (`tollgate.cli_logs._sleep`): the fake writes new logs, or
raises KeyboardInterrupt as Ctrl+C would, so no test sleeps.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api.test_logs_api import record as api_record
from tests.cli.conftest import Cli
from tests.cli.test_cli import UNKNOWN, one_error_line
from tollgate.store import Store
from tollgate.store import logs as log_repo
from tollgate.store.logs import LogRecord


def now() -> datetime:
    """Read at each use, not at import: the suite may reach a test many minutes after collecting
    it, and `--follow` looks back only `FOLLOW_LOOKBACK` (15 min) from the real clock."""
    return datetime.now(UTC).replace(microsecond=0)


def record(n: int, account_id: str, gateway_id: str = "default", **fields: Any) -> LogRecord:
    """The Logs API tests' log `n`, written minutes ago (so `--follow`'s look-back sees it)."""
    created_at = now() - timedelta(minutes=10) + timedelta(seconds=n)
    return api_record(n, account_id, gateway_id, **{"created_at": created_at, **fields})


async def insert(url: str, records: list[LogRecord]) -> None:
    store = Store(url)
    try:
        await log_repo.insert_logs(store, records)
    finally:
        await store.close()


def write_logs(cli: Cli, records: list[LogRecord]) -> None:
    asyncio.run(insert(cli.env["TOLLGATE_DATABASE_URL"], records))


@pytest.fixture
def logged(cli: Cli) -> str:
    """An account whose `default` gateway has four logs: 1 and 2 openai successes, 3 an
    anthropic success, 4 an openai error."""
    account_id = cli.account()
    write_logs(
        cli,
        [
            record(1, account_id),
            record(2, account_id, model="gpt-4o"),
            record(3, account_id, provider="anthropic", model="claude-haiku-4-5"),
            record(4, account_id, status_code=502, success=False, cost_nanos=None),
        ],
    )
    return account_id


def ids(body: dict[str, Any]) -> list[int]:
    return [int(log["id"], 16) for log in body["logs"]]


def test_list_newest_first_with_the_api_fields(cli: Cli, logged: str) -> None:
    body = cli.json("logs", "list", logged, "default")
    assert ids(body) == [4, 3, 2, 1] and body["total"] == 4
    first = body["logs"][3]
    assert (first["model"], first["provider"], first["cost"], first["duration"]) == (
        "gpt-4o-mini",
        "openai",
        0.01,
        100,
    )
    assert (first["tokens_in"], first["tokens_out"], first["success"]) == (10, 1, True)
    limited = cli.json("logs", "list", logged, "default", "--limit", "2")
    assert ids(limited) == [4, 3] and limited["total"] == 4


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--model", "gpt-4o"], [2]),
        (["--provider", "anthropic"], [3]),
        (["--status", "error"], [4]),
        (["--status", "success", "--provider", "openai"], [2, 1]),
        (["--model", "no-such-model"], []),
    ],
)
def test_filters(cli: Cli, logged: str, options: list[str], expected: list[int]) -> None:
    assert ids(cli.json("logs", "list", logged, "default", *options)) == expected


def test_table_fits_the_terminal(cli: Cli, logged: str) -> None:
    for width, shows_ids in ((80, False), (60, False), (140, True)):
        result = cli("logs", "list", logged, "default", COLUMNS=str(width))
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert all(len(line) <= width for line in lines), result.stdout
        assert "openai/gpt-4o-mini" in result.stdout.replace("\n", "") or width < 80
        assert ("0" * 31 + "1" in result.stdout) is shows_ids
        assert "502 !" in result.stdout and "$0.01" in result.stdout
        assert "4 of 4 matching log(s)" in result.stdout
    empty = cli("logs", "list", logged, "default", "--model", "nope")
    assert empty.exit_code == 0 and "No logs match" in empty.stdout


def test_other_gateways_logs_are_not_listed(cli: Cli, logged: str) -> None:
    cli.json("gateways", "create", logged, "prod")
    write_logs(cli, [record(9, logged, gateway_id="prod")])
    assert ids(cli.json("logs", "list", logged, "prod")) == [9]
    assert 9 not in ids(cli.json("logs", "list", logged, "default"))


FakeSleep = Callable[[float], Awaitable[None]]


def fake_sleep(
    monkeypatch: pytest.MonkeyPatch, steps: list[Callable[[], Awaitable[None]]]
) -> list[float]:
    """Replace the wait between polls: the n-th wait runs steps[n] (if any); returns the
    intervals asked for."""
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)
        if len(asked) <= len(steps):
            await steps[len(asked) - 1]()

    monkeypatch.setattr("tollgate.cli_logs._sleep", sleep)
    return asked


def test_follow_prints_new_logs_as_they_arrive(
    cli: Cli, logged: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = cli.env["TOLLGATE_DATABASE_URL"]
    later = now() + timedelta(seconds=1)

    async def two_arrive() -> None:
        await insert(url, [record(6, logged, created_at=later), record(5, logged)])

    async def one_more_and_another_gateway() -> None:
        await insert(url, [record(7, logged, created_at=later, model="gpt-4.1")])

    async def nothing() -> None:
        return None

    asked = fake_sleep(monkeypatch, [two_arrive, nothing, one_more_and_another_gateway])
    args = ("logs", "list", logged, "default", "--follow", "--limit", "3", "--interval", "0.5")
    result = cli(*args, "--max-polls", "4", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    # The newest 3 oldest first, then each batch oldest first, each log once.
    assert [int(log["id"], 16) for log in lines] == [2, 3, 4, 5, 6, 7]
    assert lines[-1]["model"] == "gpt-4.1"
    assert asked == [0.5] * 4


def test_follow_table_prints_the_header_once(
    cli: Cli, logged: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = cli.env["TOLLGATE_DATABASE_URL"]

    async def arrives() -> None:
        await insert(url, [record(8, logged, model="late-model")])

    fake_sleep(monkeypatch, [arrives])
    result = cli("logs", "list", logged, "default", "-f", "--max-polls", "2", "--status", "success")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("MODEL") == 1
    assert result.stdout.index("claude-haiku") < result.stdout.index("late-model")
    assert "502" not in result.stdout  # the filter applies to followed logs too


def test_ctrl_c_stops_follow_with_exit_0(
    cli: Cli, logged: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def interrupt() -> None:
        raise KeyboardInterrupt

    fake_sleep(monkeypatch, [interrupt])
    result = cli("logs", "list", logged, "default", "--follow", "--json")
    assert result.exit_code == 0, result.output
    assert [int(json.loads(line)["id"], 16) for line in result.stdout.splitlines()] == [1, 2, 3, 4]


def test_follow_waits_one_second_by_default(
    cli: Cli, logged: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = fake_sleep(monkeypatch, [])
    assert cli("logs", "list", logged, "default", "-f", "--max-polls", "1").exit_code == 0
    assert asked == [1.0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([UNKNOWN, "default"], "account"),
        (["not-an-id", "default"], "account"),
        (["{a}", "missing"], "Gateway 'missing' does not exist"),
        (["{a}", "Bad!"], "is not a gateway id"),
        (["{a}", "missing", "--follow"], "Gateway 'missing' does not exist"),
    ],
)
def test_unknown_account_or_gateway_exits_2(
    cli: Cli, logged: str, args: list[str], message: str
) -> None:
    result = cli("logs", "list", *[a.replace("{a}", logged) for a in args])
    assert result.exit_code == 2, result.output
    assert message in one_error_line(result.stderr).replace("Account", "account")
    assert result.stdout == ""


@pytest.mark.parametrize(
    "options",
    [["--limit", "0"], ["--limit", "501"], ["--status", "failed"], ["-f", "--interval", "0"]],
)
def test_bad_options_exit_2(cli: Cli, options: list[str]) -> None:
    result = cli("logs", "list", UNKNOWN, "default", *options)
    assert result.exit_code == 2, result.output


def test_default_gateway_without_logs_is_empty_not_missing(cli: Cli) -> None:
    account_id = cli.account()
    assert cli.json("logs", "list", account_id, "default") == {"logs": [], "total": 0}
