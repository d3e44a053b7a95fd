"""Every typed exception, raised from a real gateway answer: credits, spend and rate limits,
authentication and permissions, unknown logs, the gateway's 400s, and upstream failures (the
simulator's failure controls), streamed or not, and in the provider formats of native answers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway, Sim
from tests.sdk.conftest import HELLO, create_gateway, upstream_count
from tests.support.accounts import add_token, seed_account
from tollgate.sdk import (
    AI,
    AuthenticationError,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    SpendLimitExceeded,
    TollgateError,
    UpstreamError,
)

MINI = "openai/gpt-4o-mini"


def client_for(gateway: Gateway, account_id: str, token: str) -> AI:
    return AI(account_id, token, gateway.url)


def test_insufficient_credits_in_every_format(gateway: Gateway, sim: Sim) -> None:
    poor = seed_account(gateway.database_url, credits_cents=0, name="poor")
    with client_for(gateway, poor.account_id, poor.token) as ai:
        with pytest.raises(InsufficientCredits) as caught:
            ai.run(MINI, {"prompt": "hi"})
        error = caught.value
        assert (error.status, error.code) == (402, "insufficient_credits")
        assert "is available" in error.message
        assert error.log_id == ai.last_log_id is not None
        with pytest.raises(InsufficientCredits):  # a stream refused before its first chunk
            ai.run(MINI, {"prompt": "hi"}, stream=True)
        with pytest.raises(InsufficientCredits):
            ai.run("openai/text-embedding-3-small", {"input": "hi"})
        # The Universal endpoint refuses too, whatever the step's provider (in OpenAI's format).
        anthropic = {
            "provider": "anthropic",
            "endpoint": "v1/messages",
            "headers": {"anthropic-version": "2023-06-01"},
            "query": {"model": "claude-sonnet-4-6", "max_tokens": 20, "messages": HELLO},
        }
        with pytest.raises(InsufficientCredits) as universal:
            ai.gateway("default").run(anthropic)
        assert universal.value.code == "insufficient_credits"
    assert upstream_count(sim) == 0  # nothing reached a provider


def test_an_account_spending_limit_raises_spend_limit_exceeded(ai: AI, gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/client/v4/accounts/{ai.account_id}/ai-gateway/billing/spending-limit",
        headers={"authorization": f"Bearer {gateway.account.token}"},
        json={"amount": 100, "duration": "daily", "strategy": "fixed"},  # $1 a day
    )
    assert response.status_code == 200, response.text
    with pytest.raises(SpendLimitExceeded) as caught:
        ai.run("openai/gpt-4o", {"prompt": "hi", "max_tokens": 200_000})
    error = caught.value
    assert (error.status, error.code) == (429, "spend_limit_exceeded")
    assert isinstance(error, RateLimited)  # a 429 that says when to come back
    assert error.retry_after is not None and 0 < error.retry_after <= 86_400
    assert "Spending limit exceeded" in error.message


def test_a_gateway_rate_limit_raises_rate_limited_with_retry_after(
    ai: AI, gateway: Gateway
) -> None:
    create_gateway(gateway, "limited", rate_limiting_limit=1, rate_limiting_interval=60)
    ai.run(MINI, {"prompt": "hi"}, gateway={"id": "limited"})
    with pytest.raises(RateLimited) as caught:
        ai.run(MINI, {"prompt": "hi"}, gateway={"id": "limited"})
    error = caught.value
    assert type(error) is RateLimited
    assert (error.status, error.code) == (429, "rate_limited")
    assert error.retry_after is not None and 1 <= error.retry_after <= 60
    assert "1 requests per 60 seconds" in error.message or "per 60 seconds" in error.message


def test_a_bad_token_raises_authentication_error(gateway: Gateway) -> None:
    with client_for(gateway, gateway.account.account_id, "tg_not_a_real_token") as ai:
        with pytest.raises(AuthenticationError) as caught:
            ai.run(MINI, {"prompt": "hi"})
        assert (caught.value.status, caught.value.code) == (401, "invalid_token")
        with pytest.raises(AuthenticationError):
            ai.models()
        with pytest.raises(AuthenticationError):
            ai.gateway("default").get_log("0" * 32)


def test_missing_permissions_raise_permission_denied(gateway: Gateway) -> None:
    account = gateway.account.account_id
    reader = add_token(gateway.database_url, account, permissions=frozenset({"read"}))
    with client_for(gateway, account, reader) as ai:
        with pytest.raises(PermissionDenied) as caught:
            ai.run(MINI, {"prompt": "hi"})
        assert (caught.value.status, caught.value.code) == (403, "missing_permission")
    runner = add_token(gateway.database_url, account, permissions=frozenset({"run"}))
    with client_for(gateway, account, runner) as ai:
        ai.run(MINI, {"prompt": "hi"})
        with pytest.raises(PermissionDenied):
            ai.gateway("default").get_log(ai.last_log_id or "")
        with pytest.raises(PermissionDenied):
            ai.models()
    other = seed_account(gateway.database_url, name="someone else")
    with client_for(gateway, account, other.token) as ai:  # another account's token
        with pytest.raises(PermissionDenied) as wrong:
            ai.run(MINI, {"prompt": "hi"})
        assert wrong.value.code == "wrong_account"


def test_unknown_logs_and_gateways_raise_not_found(ai: AI) -> None:
    with pytest.raises(NotFound) as caught:
        ai.gateway("default").get_log("0123456789abcdef0123456789abcdef")
    assert (caught.value.status, caught.value.code) == (404, "log_not_found")
    with pytest.raises(NotFound) as patched:
        ai.gateway("default").patch_log("no-such-log", feedback=1)
    assert patched.value.code == "log_not_found"
    with pytest.raises(NotFound) as gateway:
        ai.gateway("no-such-gateway").get_log("0123456789abcdef0123456789abcdef")
    assert gateway.value.code == "gateway_not_found"


BAD_REQUESTS: list[tuple[str, dict[str, Any], Any, str, str | None]] = [
    # (model, inputs, gateway options, code, param)
    (MINI, {"prompt": "hi"}, {"metadata": {f"k{i}": i for i in range(6)}}, "invalid_header",
     "cf-aig-metadata"),
    (MINI, {"prompt": "hi"}, {"cache_ttl": 10}, "invalid_header", "cf-aig-cache-ttl"),
    (MINI, {"prompt": "hi"}, {"retries": {"retry_delay_ms": 60_000}}, "invalid_header",
     "cf-aig-retry-delay"),
    ("openai/no-such-model-at-all", {"prompt": "hi"}, None, "unpriced_model", "model"),
    (MINI, {"prompt": 5}, None, "invalid_request", "input.messages"),
]  # fmt: skip


def test_the_gateways_400s_raise_invalid_request_with_its_code(ai: AI, sim: Sim) -> None:
    for model, inputs, options, code, param in BAD_REQUESTS:
        with pytest.raises(InvalidRequest) as caught:
            ai.run(model, inputs, gateway=options)
        error = caught.value
        assert (error.status, error.code, error.param) == (400, code, param), (options, inputs)
    assert upstream_count(sim) == 0


def test_upstream_failures_raise_upstream_error(ai: AI, sim: Sim) -> None:
    with pytest.raises(UpstreamError) as caught:
        ai.run(MINI, {"prompt": "hi [sim fail-first=1 fail-status=502 fail-key=sdk-up]"})
    assert caught.value.status == 502
    with pytest.raises(UpstreamError) as translated:  # through Anthropic's translation
        ai.run("anthropic/claude-sonnet-4-6", {"prompt": "hi [sim error=500]"})
    assert translated.value.status == 500
    step = {
        "provider": "openai",
        "endpoint": "chat/completions",
        "headers": {"x-sim-fail-first": 1, "x-sim-fail-status": 503, "x-sim-fail-key": "sdk-u"},
        "query": {"model": "gpt-4o-mini", "messages": HELLO},
    }
    gateway = ai.gateway("default")
    with pytest.raises(UpstreamError) as universal:  # the last step's answer, relayed
        gateway.run(step)
    assert universal.value.status == 503 and gateway.last_step == 0
    assert upstream_count(sim) == 3


def test_provider_errors_relayed_in_their_own_format_are_typed(ai: AI) -> None:
    gateway = ai.gateway("default")
    google = {
        "provider": "google-ai-studio",
        "endpoint": "v1beta/models/gemini-2.5-flash:generateContent",
        "headers": {"x-sim-error": 500},
        "query": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    }
    with pytest.raises(UpstreamError) as failed:  # Google's {"error": {"code", "status"}}
        gateway.run(google)
    assert (failed.value.status, failed.value.code) == (500, "INTERNAL")
    assert failed.value.message.startswith("An internal error has occurred")
    anthropic: dict[str, Any] = {
        "provider": "anthropic",
        "endpoint": "v1/messages",
        "headers": {"anthropic-version": "2023-06-01", "x-sim-error": 429},
        "query": {"model": "claude-sonnet-4-6", "max_tokens": 20, "messages": HELLO},
    }
    with pytest.raises(RateLimited) as limited:  # Anthropic's {"type": "error", ...}
        gateway.run(anthropic)
    assert limited.value.code == "rate_limit_error" and limited.value.retry_after is not None
    del anthropic["headers"]["anthropic-version"]
    del anthropic["headers"]["x-sim-error"]
    with pytest.raises(InvalidRequest) as invalid:
        gateway.run(anthropic)
    assert invalid.value.code == "invalid_request_error"
    assert "anthropic-version" in invalid.value.message


def test_stream_errors_before_and_after_the_first_chunk(ai: AI) -> None:
    with pytest.raises(UpstreamError) as before:  # refused before any chunk: raised by run()
        ai.run(MINI, {"prompt": "hi [sim error=503]"}, stream=True)
    assert before.value.status == 503
    stream = ai.run(MINI, {"prompt": "a long story please [sim drop-after=3]"}, stream=True)
    received: list[Any] = []
    with pytest.raises(TollgateError) as during:  # broken mid-way: in-band, after the chunks
        for chunk in stream:
            received.append(chunk)
    assert received, "the chunks before the break were delivered"
    assert isinstance(during.value, UpstreamError)
    assert stream.response.is_closed
