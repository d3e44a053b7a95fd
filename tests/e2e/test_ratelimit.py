"""Gateway rate limits end to end: 429 with `Retry-After` in the format of the endpoint called,
nothing billed or sent upstream, and one limit shared by two gateway processes through Redis."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Gateway, Sim, provider_env
from tests.e2e.test_cache import (
    MESSAGES,
    REDIS_URL,
    Running,
    fresh_redis_prefix,
    usage_entries,
)
from tests.support.accounts import seed_account
from tests.support.server import serve_in_thread
from tollgate.app import create_app
from tollgate.settings import load_settings


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def running(request: pytest.FixtureRequest, tmp_path: Path, sim: Sim) -> Iterator[Running]:
    if request.param == "sqlite":
        with request.getfixturevalue("start_gateway")() as gateway:
            yield Running(gateway, sim, None)
        return
    database_url = request.getfixturevalue("postgres_url")
    with serve_in_thread(create_app(_settings(tmp_path, database_url, sim))) as url:
        sim.clear()
        yield Running(Gateway(url, database_url, seed_account(database_url)), sim, None)


def _settings(tmp_path: Path, database_url: str, sim: Sim, **env: str) -> Any:
    return load_settings(
        env={
            "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
            "TOLLGATE_DATABASE_URL": database_url,
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            **provider_env(sim.url),
            **env,
        }
    )


def chat(client: openai.OpenAI) -> Any:
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_over_the_limit_is_a_429_with_retry_after_and_nothing_billed(running: Running) -> None:
    running.create_gateway("limited", rate_limiting_limit=2, rate_limiting_interval=60)
    before = running.books()
    client = running.openai("limited")
    chat(client)
    chat(client)

    with pytest.raises(openai.RateLimitError) as refused:
        chat(client)
    assert refused.value.status_code == 429
    retry_after = int(refused.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert refused.value.response.headers["cf-aig-log-id"]
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "rate_limited"
    assert "2 requests per 60 seconds" in error["message"]

    # Anthropic's endpoint answers in Anthropic's format; the Unified API in OpenAI's.
    with pytest.raises(anthropic.RateLimitError) as anthropic_refused:
        running.anthropic("limited").messages.create(
            model="claude-sonnet-4-6", max_tokens=50, messages=MESSAGES
        )
    assert anthropic_refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(anthropic_refused.value.response.headers["retry-after"]) >= 1
    compat = openai.OpenAI(
        api_key=running.gateway.account.token,
        base_url=f"{running.gateway.url}/v1/{running.account_id}/limited/compat",
        max_retries=0,
    )
    with pytest.raises(openai.RateLimitError):
        compat.chat.completions.create(model="anthropic/claude-sonnet-4-6", messages=MESSAGES)

    assert running.upstream_calls() == 2
    after = running.books()
    assert usage_entries(before, after) == 2 and not after.open_holds

    # Other gateways of the account are not limited by this one.
    running.create_gateway("free")
    chat(running.openai("free"))
    assert running.upstream_calls() == 3


def test_the_limit_is_checked_before_the_cache(start_gateway: Any, sim: Sim) -> None:
    with start_gateway() as gateway:
        running = Running(gateway, sim, None)
        running.create_gateway(
            "both", cache_ttl=300, rate_limiting_limit=2, rate_limiting_interval=60
        )
        client = running.openai("both")
        raw = client.chat.completions.with_raw_response.create
        statuses = [raw(model="gpt-4o-mini", messages=MESSAGES).headers for _ in range(2)]
        assert [h["cf-aig-cache-status"] for h in statuses] == ["MISS", "HIT"]
        with pytest.raises(openai.RateLimitError):
            chat(client)  # would be a hit, but the limit comes first
        assert running.upstream_calls() == 1


def test_sliding_window(start_gateway: Any, sim: Sim) -> None:
    with start_gateway() as gateway:
        running = Running(gateway, sim, None)
        running.create_gateway(
            "sliding",
            rate_limiting_limit=1,
            rate_limiting_interval=60,
            rate_limiting_technique="sliding",
        )
        client = running.openai("sliding")
        chat(client)
        with pytest.raises(openai.RateLimitError) as refused:
            chat(client)
        assert "sliding window" in str(refused.value)
        assert 1 <= int(refused.value.response.headers["retry-after"]) <= 120
        assert running.upstream_calls() == 1


@pytest.mark.postgres
def test_two_gateway_processes_share_one_limit_through_redis(
    tmp_path: Path, sim: Sim, postgres_url: str, redis_prefix: str
) -> None:
    """Two gateways, each with its own services (in-process caches and counters), sharing the
    PostgreSQL database and Redis: the limit holds across both."""
    env = {"TOLLGATE_REDIS__URL": REDIS_URL, "TOLLGATE_REDIS__KEY_PREFIX": redis_prefix}
    account = seed_account(postgres_url)
    sim.clear()
    with ExitStack() as stack:
        urls = [
            stack.enter_context(
                serve_in_thread(create_app(_settings(tmp_path / name, postgres_url, sim, **env)))
            )
            for name in ("one", "two")
        ]
        nodes = [Running(Gateway(url, postgres_url, account), sim, redis_prefix) for url in urls]
        nodes[0].create_gateway("shared", rate_limiting_limit=3, rate_limiting_interval=3600)
        answered = refused = 0
        for index in range(8):
            try:
                chat(nodes[index % 2].openai("shared"))
                answered += 1
            except openai.RateLimitError:
                refused += 1
        assert (answered, refused) == (3, 5)
        assert nodes[0].upstream_calls() == 3


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    yield from fresh_redis_prefix()
