"""Gateway rate limits: the window arithmetic, and the same answers from memory and from Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from tollgate.errors import RateLimited
from tollgate.features.ratelimit import Limit, RateLimiter, _decide, _Window, gateway_limit
from tollgate.store import GatewayRecord

REDIS_URL = "redis://127.0.0.1:6379/0"


def gateway(**config: Any) -> GatewayRecord:
    stamp = datetime.now(UTC)
    return GatewayRecord("a" * 32, "gw", config, False, stamp, stamp)


def run(limit: Limit, times_ms: list[int]) -> list[int]:
    state: _Window | None = None
    waits = []
    for now in times_ms:
        state, wait = _decide(state, now, limit)
        waits.append(wait)
    return waits


def test_limit_is_off_when_limit_or_interval_is_zero_or_null() -> None:
    assert gateway_limit(gateway(rate_limiting_limit=0, rate_limiting_interval=60)) is None
    assert gateway_limit(gateway(rate_limiting_limit=5, rate_limiting_interval=None)) is None
    assert gateway_limit(gateway()) is None
    on = gateway_limit(gateway(rate_limiting_limit=5, rate_limiting_interval=60))
    assert on == Limit(5, 60_000, sliding=False)
    sliding = gateway(
        rate_limiting_limit=5, rate_limiting_interval=60, rate_limiting_technique="sliding"
    )
    assert gateway_limit(sliding) == Limit(5, 60_000, sliding=True)


def test_fixed_window_counts_allowed_requests_and_resets_on_the_clock() -> None:
    limit = Limit(3, 10_000, sliding=False)
    start = 1_000_000_000_000  # a window boundary (a multiple of 10 s)
    waits = run(limit, [start + 1_000, start + 2_000, start + 3_000, start + 4_000, start + 4_500])
    # The fourth and fifth are refused until the window ends at start + 10 s.
    assert waits == [0, 0, 0, 6, 6]
    # Refused requests did not count: the next window starts empty.
    state, wait = _decide(_Window(start // 10_000, 3, 0, 10_000), start + 10_001, limit)
    assert wait == 0 and state.current == 1 and state.previous == 3


def test_sliding_window_weighs_the_previous_window() -> None:
    limit = Limit(4, 10_000, sliding=True)
    start = 1_000_000_000_000
    previous_full = _Window(start // 10_000 - 1, 4, 0, 10_000)
    # 2.5 s into the window, 75% of the previous 4 requests still count: 3, so one more fits.
    state, wait = _decide(previous_full, start + 2_500, limit)
    assert wait == 0 and state.current == 1
    # Now 3 + 1 = 4: full. Room for one more when 4 * (1 - f) <= 2, i.e. at 5 s: 2.5 s away.
    state, wait = _decide(state, start + 2_500, limit)
    assert wait == 3 and state.current == 1
    state, wait = _decide(state, start + 5_000, limit)
    assert wait == 0 and state.current == 2


def test_sliding_window_full_on_its_own_waits_into_the_next_window() -> None:
    limit = Limit(2, 10_000, sliding=True)
    start = 1_000_000_000_000
    waits = run(limit, [start + 9_000, start + 9_100, start + 9_200])
    # The next window starts in 0.8 s; there, the 2 requests weigh 2 * (1 - f) <= 1 at f = 0.5.
    assert waits == [0, 0, 6]


def test_changing_the_interval_starts_counting_afresh() -> None:
    start = 1_000_000_000_000
    state = _Window(start // 10_000, 3, 0, 10_000)
    _, wait = _decide(state, start + 100, Limit(3, 60_000, sliding=False))
    assert wait == 0


@pytest.fixture
async def redis() -> AsyncIterator[tuple[Redis, str]]:
    client = Redis.from_url(REDIS_URL)
    prefix = f"test-{uuid.uuid4().hex}:"
    yield client, prefix
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.mark.parametrize("technique", ["fixed", "sliding"])
async def test_redis_and_memory_refuse_the_same_requests(
    redis: tuple[Redis, str], technique: str
) -> None:
    client, prefix = redis
    config = {
        "rate_limiting_limit": 5,
        "rate_limiting_interval": 3600,  # long enough that no window ends during the test
        "rate_limiting_technique": technique,
    }
    limiters = [RateLimiter(None, prefix), RateLimiter(client, prefix)]
    for limiter in limiters:
        outcomes = []
        for _ in range(8):
            try:
                await limiter.enforce(gateway(**config))
                outcomes.append(0)
            except RateLimited as refused:
                assert refused.status == 429 and refused.code == "rate_limited"
                retry_after = int(refused.headers["Retry-After"])
                # The sliding two-bucket approximation may ask for up to two intervals: the full
                # window must fade as the previous one until the count is under the limit.
                assert 1 <= retry_after <= (3600 if technique == "fixed" else 7200)
                assert "gw" in refused.message and "5 requests per 3600 seconds" in refused.message
                outcomes.append(retry_after)
        assert outcomes[:5] == [0] * 5 and all(outcomes[5:]), (limiter, outcomes)
    assert await client.exists(f"{prefix}rl:{'a' * 32}:gw") == 1


async def test_two_limiters_sharing_redis_share_the_limit(redis: tuple[Redis, str]) -> None:
    client, prefix = redis
    second = Redis.from_url(REDIS_URL)  # another process's client
    try:
        first_limiter, second_limiter = RateLimiter(client, prefix), RateLimiter(second, prefix)
        config = {"rate_limiting_limit": 4, "rate_limiting_interval": 3600}
        allowed = 0
        for limiter in [first_limiter, second_limiter] * 4:
            try:
                await limiter.enforce(gateway(**config))
                allowed += 1
            except RateLimited:
                pass
        assert allowed == 4
    finally:
        await second.aclose()


async def test_an_unreachable_redis_falls_back_to_counting_in_this_process() -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        limiter = RateLimiter(client, "unused:")
        config = {"rate_limiting_limit": 2, "rate_limiting_interval": 60}
        for _ in range(2):
            await limiter.enforce(gateway(**config))  # no exception: Redis's failure is logged
        with pytest.raises(RateLimited):  # the limit still holds, in this process
            await limiter.enforce(gateway(**config))
    finally:
        await client.aclose()
