"""`ai.gateway(id)` (sync) against a live gateway: the Universal endpoint (one step, fallbacks,
a stream), `get_log`, `patch_log` and `get_url`; and one smoke test on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Gateway, Sim
from tests.sdk.conftest import HELLO, create_gateway, eventually, upstream_count
from tollgate.sdk import AI


def openai_step(headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "provider": "openai",
        "endpoint": "chat/completions",
        "headers": headers or {},
        "query": {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 20},
    }


def anthropic_step(**query: Any) -> dict[str, Any]:
    return {
        "provider": "anthropic",
        "endpoint": "v1/messages",
        "headers": {"anthropic-version": "2023-06-01"},
        "query": {"model": "claude-sonnet-4-6", "max_tokens": 20, "messages": HELLO, **query},
    }


def test_universal_run_answers_in_the_providers_format_and_names_the_step(ai: AI, sim: Sim) -> None:
    gateway = ai.gateway("default")
    single = gateway.run(openai_step())
    assert single["object"] == "chat.completion"
    assert gateway.last_step == 0
    first_log = ai.last_log_id
    assert first_log is not None

    # The first step fails (the simulator's 503), so the second, Anthropic's, answers.
    failing = openai_step({"x-sim-fail-first": 1, "x-sim-fail-key": "sdk-universal"})
    fallback = gateway.run([failing, anthropic_step()])
    assert fallback["type"] == "message" and fallback["content"][0]["text"]
    assert gateway.last_step == 1
    assert ai.last_log_id not in (None, first_log)
    assert upstream_count(sim) == 3
    log = eventually(lambda: gateway.get_log(ai.last_log_id or ""))
    assert (log["step"], log["provider"]) == (1, "anthropic")


def test_universal_run_streams_the_providers_own_events(ai: AI) -> None:
    gateway = ai.gateway("default")
    with gateway.run(anthropic_step(stream=True), stream=True) as events:
        received = list(events)
    types = [event["type"] for event in received]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert "content_block_delta" in types
    assert gateway.last_step == 0


def test_universal_run_takes_gateway_options_as_headers_for_every_step(ai: AI, sim: Sim) -> None:
    gateway = ai.gateway("default")
    options: Any = {"cache_ttl": 60, "metadata": {"run": "universal"}}
    first = gateway.run(openai_step(), gateway=options)
    assert gateway.run(openai_step(), gateway=options) == first
    assert upstream_count(sim) == 1  # the second was a cache hit
    log = eventually(lambda: gateway.get_log(ai.last_log_id or ""))
    assert log["cached"] is True and log["metadata"] == {"run": "universal"}


def test_get_log_and_patch_log(ai: AI, gateway: Gateway) -> None:
    create_gateway(gateway, "reviews")
    reviews = ai.gateway("reviews")
    ai.run("openai/gpt-4o-mini", {"prompt": "rate me"}, gateway={"id": "reviews"})
    log_id = ai.last_log_id or ""
    log = eventually(lambda: reviews.get_log(log_id))
    assert log["id"] == log_id
    assert isinstance(log["created_at"], datetime) and log["created_at"].tzinfo is not None
    assert (log["feedback"], log["score"], log["metadata"]) == (None, None, None)
    assert log["request_head"] and log["response_head"]

    assert reviews.patch_log(log_id, feedback=1, score=0.75, metadata={"reviewer": "ann"}) is None
    patched = reviews.get_log(log_id)
    assert (patched["feedback"], patched["score"]) == (1, 0.75)
    assert patched["metadata"] == {"reviewer": "ann"}
    assert ai.last_log_id == log_id  # reading and patching logs make no new log

    reviews.patch_log(log_id, feedback=-1)  # only what is given changes
    assert reviews.get_log(log_id)["feedback"] == -1
    assert reviews.get_log(log_id)["score"] == 0.75
    reviews.patch_log(log_id, score=None, metadata=None)  # None clears
    cleared = reviews.get_log(log_id)
    assert (cleared["feedback"], cleared["score"], cleared["metadata"]) == (-1, None, None)


def test_get_url_is_the_gateways_base_url_and_works_with_a_providers_sdk(
    ai: AI, gateway: Gateway
) -> None:
    default = ai.gateway("default")
    account = gateway.account.account_id
    assert default.get_url() == f"{gateway.url}/v1/{account}/default/"
    assert default.get_url("openai") == gateway.base("openai")
    # The same URL the management API gives (`url/{provider}`).
    answer = httpx.get(
        f"{gateway.url}/client/v4/accounts/{account}/ai-gateway/gateways/default/url/anthropic",
        headers={"authorization": f"Bearer {gateway.account.token}"},
    )
    assert answer.json()["result"] == default.get_url("anthropic")
    client = openai.OpenAI(
        api_key=gateway.account.token, base_url=default.get_url("openai"), max_retries=0
    )
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert reply.choices[0].message.content
    assert ai.gateway("team-a").get_url("custom-acme").endswith(f"/{account}/team-a/custom-acme")


@pytest.mark.postgres
def test_run_and_logs_on_postgresql(
    start_gateway: Callable[..., AbstractContextManager[Gateway]], postgres_url: str
) -> None:
    with start_gateway(database_url=postgres_url) as running:
        account = running.account
        with AI(account.account_id, account.token, running.url) as ai:
            answer = ai.run("openai/gpt-4o-mini", {"prompt": "hi"}, gateway={"event_id": "pg"})
            assert answer["object"] == "chat.completion"
            log = eventually(lambda: ai.gateway("default").get_log(ai.last_log_id or ""))
            assert log["event_id"] == "pg"
            ai.gateway("default").patch_log(log["id"], feedback=1)
            assert ai.gateway("default").get_log(log["id"])["feedback"] == 1
