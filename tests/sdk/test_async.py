"""`AsyncAI` against a live gateway: every method awaited, streams as async iterators, and the
same typed exceptions as the sync client."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway, Sim
from tests.sdk.conftest import HELLO, create_gateway, eventually_async, upstream_count
from tests.support.accounts import seed_account_async
from tollgate.sdk import (
    AsyncAI,
    AsyncStream,
    AuthenticationError,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    SpendLimitExceeded,
    UpstreamError,
)

MINI = "openai/gpt-4o-mini"


async def test_run_answers_chat_and_embedding_models(aio: AsyncAI, sim: Sim) -> None:
    assert aio.last_log_id is None
    replies = [
        await aio.run(model, {"messages": HELLO, "max_tokens": 400})
        for model in (MINI, "anthropic/claude-sonnet-4-6", "google-ai-studio/gemini-2.5-flash")
    ]
    assert all(r["choices"][0]["message"]["content"] for r in replies)
    assert aio.last_log_id is not None
    embedded = await aio.run("openai/text-embedding-3-small", {"text": ["a", "b", "c"]})
    assert len(embedded["data"]) == 3
    # Concurrent calls on one client work (last_log_id is whichever finished last).
    together = await asyncio.gather(*(aio.run(MINI, {"prompt": f"n{i}"}) for i in range(3)))
    assert [t["choices"][0]["message"]["content"][-2:] for t in together] == ["n0", "n1", "n2"]
    assert upstream_count(sim) == 7


async def test_run_streams_as_an_async_iterator(aio: AsyncAI) -> None:
    stream = await aio.run("anthropic/claude-sonnet-4-6", {"prompt": "Say hello"}, stream=True)
    assert isinstance(stream, AsyncStream)
    async with stream:
        chunks = [chunk async for chunk in stream]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "simulated reply" in text
    assert stream.response.headers["cf-aig-log-id"] == aio.last_log_id
    early = await aio.run(MINI, {"prompt": "a long story please"}, stream=True)
    assert (await early.__anext__())["object"] == "chat.completion.chunk"
    await early.aclose()
    assert early.response.is_closed
    assert [chunk async for chunk in early] == []


async def test_gateway_options_and_logs(aio: AsyncAI, gateway: Gateway) -> None:
    create_gateway(gateway, "async-gw")
    logs = aio.gateway("async-gw")
    await aio.run(
        MINI,
        {"prompt": "tagged"},
        gateway={"id": "async-gw", "metadata": {"k": "v"}, "event_id": "async-1"},
    )
    log_id = aio.last_log_id or ""
    log = await eventually_async(lambda: logs.get_log(log_id))
    assert (log["metadata"], log["event_id"]) == ({"k": "v"}, "async-1")
    assert isinstance(log["created_at"], datetime)
    await logs.patch_log(log_id, feedback=1, score=3)
    patched = await logs.get_log(log_id)
    assert (patched["feedback"], patched["score"]) == (1, 3.0)
    assert logs.get_url("openai") == gateway.base("openai", gateway="async-gw")


async def test_universal_run_with_fallback_and_stream(aio: AsyncAI) -> None:
    gateway = aio.gateway("default")
    failing = {
        "provider": "openai",
        "endpoint": "chat/completions",
        "headers": {"x-sim-error": 500},
        "query": {"model": "gpt-4o-mini", "messages": HELLO},
    }
    anthropic: dict[str, Any] = {
        "provider": "anthropic",
        "endpoint": "v1/messages",
        "headers": {"anthropic-version": "2023-06-01"},
        "query": {"model": "claude-sonnet-4-6", "max_tokens": 20, "messages": HELLO},
    }
    answer = await gateway.run([failing, anthropic])
    assert answer["type"] == "message" and gateway.last_step == 1
    anthropic["query"]["stream"] = True
    async with await gateway.run(anthropic, stream=True) as events:
        types = [event["type"] async for event in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"


async def test_models(aio: AsyncAI) -> None:
    models = await aio.models(provider="anthropic")
    assert models and all(m["provider"] == "anthropic" for m in models)
    assert all(m["pricing"]["currency"] == "USD" for m in models)
    assert [m["id"] for m in await aio.models(search="gpt-4o-mini")][0].startswith("openai/")


async def test_typed_exceptions(aio: AsyncAI, gateway: Gateway, sim: Sim) -> None:
    with pytest.raises(NotFound) as missing:
        await aio.gateway("default").get_log("0123456789abcdef0123456789abcdef")
    assert missing.value.code == "log_not_found"
    with pytest.raises(InvalidRequest) as invalid:
        await aio.run(MINI, {"prompt": "hi"}, gateway={"metadata": {str(i): i for i in range(6)}})
    assert (invalid.value.code, invalid.value.param) == ("invalid_header", "cf-aig-metadata")
    with pytest.raises(UpstreamError) as timed_out:
        await aio.run(
            MINI, {"prompt": "slow [sim latency-ms=3000]"}, gateway={"request_timeout_ms": 200}
        )
    assert timed_out.value.code == "upstream_timeout"
    broken = await aio.run(MINI, {"prompt": "a long story please [sim drop-after=3]"}, stream=True)
    received: list[Any] = []
    with pytest.raises(UpstreamError):
        async for chunk in broken:
            received.append(chunk)
    assert received and broken.response.is_closed

    create_gateway(gateway, "async-limited", rate_limiting_limit=1, rate_limiting_interval=60)
    await aio.run(MINI, {"prompt": "hi"}, gateway={"id": "async-limited"})
    with pytest.raises(RateLimited) as limited:
        await aio.run(MINI, {"prompt": "hi"}, gateway={"id": "async-limited"}, stream=True)
    assert limited.value.code == "rate_limited" and limited.value.retry_after

    poor = await seed_account_async(gateway.database_url, credits_cents=0, name="poor")
    async with AsyncAI(poor.account_id, poor.token, gateway.url) as broke:
        with pytest.raises(InsufficientCredits):
            await broke.run(MINI, {"prompt": "hi"}, stream=True)
    async with AsyncAI(poor.account_id, "tg_bogus", gateway.url) as stranger:
        with pytest.raises(AuthenticationError):
            await stranger.run(MINI, {"prompt": "hi"})
    async with AsyncAI(poor.account_id, gateway.account.token, gateway.url) as elsewhere:
        with pytest.raises(PermissionDenied) as denied:  # a token of another account
            await elsewhere.models()
        assert denied.value.code == "wrong_account"


async def test_spend_limit_exceeded(aio: AsyncAI, gateway: Gateway) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.url}/client/v4/accounts/{aio.account_id}/ai-gateway/billing/spending-limit",
            headers={"authorization": f"Bearer {gateway.account.token}"},
            json={"amount": 100, "duration": "weekly", "strategy": "sliding"},
        )
    assert response.status_code == 200, response.text
    with pytest.raises(SpendLimitExceeded) as caught:
        await aio.run("openai/gpt-4o", {"prompt": "hi", "max_tokens": 200_000}, stream=True)
    assert caught.value.code == "spend_limit_exceeded" and caught.value.retry_after


async def test_an_async_client_of_ones_own_and_the_timeout(gateway: Gateway) -> None:
    account = gateway.account
    async with httpx.AsyncClient() as http:
        async with AsyncAI(account.account_id, account.token, gateway.url, http_client=http) as ai:
            assert (await ai.run(MINI, {"prompt": "hi"}))["object"] == "chat.completion"
        assert not http.is_closed
    async with AsyncAI(account.account_id, account.token, gateway.url, timeout=0.2) as slow:
        with pytest.raises(httpx.TimeoutException):
            await slow.run(MINI, {"prompt": "slow [sim latency-ms=1000]"})
