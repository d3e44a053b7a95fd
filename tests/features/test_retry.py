"""Retry policy: the backoff arithmetic, header validation, precedence over the gateway settings,
and `send_with_retries` against a real simulator (its transient-failure controls) and a real
closed port, through the real aiohttp `Upstream`."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tollgate.errors import InvalidRequest, UpstreamTimeout, UpstreamUnavailable
from tollgate.features.retry import (
    FallbackNeeded,
    RetryOverrides,
    RetryPolicy,
    fall_back,
    read_retry_headers,
    retry_policy,
    retryable_status,
    send_with_retries,
)
from tollgate.settings import UpstreamSettings
from tollgate.sim import SimServer
from tollgate.upstream import Upstream

# --- the policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "waits"),
    [
        ("constant", [0.2, 0.2, 0.2, 0.2]),
        ("linear", [0.2, 0.4, 0.6, 0.8]),
        ("exponential", [0.2, 0.4, 0.8, 1.6]),
    ],
)
def test_the_wait_before_each_retry_follows_the_backoff(backoff: Any, waits: list[float]) -> None:
    policy = RetryPolicy(max_attempts=5, delay_ms=200, backoff=backoff)
    assert [policy.delay_before(n) for n in range(1, 5)] == pytest.approx(waits)


def test_only_429_and_5xx_are_retryable() -> None:
    assert [s for s in (200, 400, 401, 404, 408, 409, 429, 500, 502, 503, 504, 599) if
            retryable_status(s)] == [429, 500, 502, 503, 504, 599]  # fmt: skip


def h(**values: str) -> list[tuple[bytes, bytes]]:
    return [(f"cf-aig-{k.replace('_', '-')}".encode(), v.encode()) for k, v in values.items()]


def test_headers_are_read_and_validated() -> None:
    read = read_retry_headers(
        h(max_attempts="4", retry_delay="0", backoff="linear", request_timeout="1500")
    )
    assert read == RetryOverrides(max_attempts=4, delay_ms=0, backoff="linear", timeout_ms=1500)
    assert read_retry_headers([]) == RetryOverrides()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_attempts", "0"),
        ("max_attempts", "6"),
        ("retry_delay", "5001"),
        ("retry_delay", "1e3"),
        ("backoff", "Linear "),
        ("backoff", "fibonacci"),
        ("request_timeout", "0"),
        ("request_timeout", "-5"),
        ("request_timeout", "600001"),
    ],
)
def test_a_bad_header_is_a_400_naming_it(name: str, value: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        read_retry_headers(h(**{name: value}))
    header = "cf-aig-" + name.replace("_", "-")
    assert raised.value.param == header and raised.value.code == "invalid_header"
    assert header in raised.value.message


def test_headers_override_the_gateway_which_overrides_the_defaults() -> None:
    gateway = {"retry_max_attempts": 3, "retry_delay": 250, "retry_backoff": "exponential"}
    assert retry_policy(RetryOverrides(), gateway) == RetryPolicy(3, 250, "exponential")
    overrides = RetryOverrides(max_attempts=1, delay_ms=0, backoff="constant", timeout_ms=10)
    assert retry_policy(overrides, gateway) == RetryPolicy(1, 0, "constant", 10)
    # A stored null means the default, as does a gateway without the settings.
    nulls = {"retry_max_attempts": None, "retry_delay": None, "retry_backoff": None}
    assert retry_policy(RetryOverrides(), nulls) == RetryPolicy()
    assert retry_policy(RetryOverrides(delay_ms=100), {}) == RetryPolicy(1, 100, "constant")


# --- sending, against real servers --------------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    client = Upstream(UpstreamSettings(first_byte_timeout_seconds=5))
    await client.start()
    yield client
    await client.close()


def chat(sim: SimServer, **headers: str) -> dict[str, Any]:
    return {
        "provider": "openai",
        "method": "POST",
        "url": f"{sim.base_url}/openai/v1/chat/completions",
        "headers": [
            ("authorization", "Bearer k"),
            ("content-type", "application/json"),
            *headers.items(),
        ],
        "body": b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
    }


def failing(times: int, status: int = 503, latency_ms: int = 0) -> dict[str, str]:
    return {
        "x-sim-fail-first": str(times),
        "x-sim-fail-key": uuid.uuid4().hex,
        "x-sim-fail-status": str(status),
        "x-sim-fail-latency-ms": str(latency_ms),
    }


async def test_a_retryable_answer_is_retried_until_one_is_not(
    sim: SimServer, upstream: Upstream
) -> None:
    response = await send_with_retries(upstream, RetryPolicy(3), **chat(sim, **failing(2)))
    assert response.status == 200
    response.release()
    assert len(sim.recorder.requests) == 3


async def test_the_last_attempts_answer_is_returned_as_it_is(
    sim: SimServer, upstream: Upstream
) -> None:
    response = await send_with_retries(upstream, RetryPolicy(2), **chat(sim, **failing(9, 429)))
    assert response.status == 429 and b"error" in await response.read()
    response.release()
    assert len(sim.recorder.requests) == 2


async def test_a_timeout_is_retried_and_the_last_one_raised(
    sim: SimServer, upstream: Upstream
) -> None:
    policy = RetryPolicy(2, timeout_ms=200)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await send_with_retries(upstream, policy, **chat(sim, **failing(2, latency_ms=2000)))
    assert 0.4 <= time.monotonic() - started < 1.5
    assert len(sim.recorder.requests) == 2


async def test_a_refused_connection_is_retried_with_the_delay(upstream: Upstream) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    request = {
        "provider": "openai",
        "method": "POST",
        "url": f"http://127.0.0.1:{port}/v1/chat/completions",
        "headers": [],
        "body": b"{}",
    }
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        await send_with_retries(upstream, RetryPolicy(3, 150, "linear"), **request)
    assert time.monotonic() - started >= 0.45  # 150 + 300 ms between the three attempts


class Recorder:
    def __init__(self) -> None:
        self.finished: list[int] = []

    async def finish(self, status: int, usage: object) -> None:
        self.finished.append(status)


async def test_falling_back_drops_the_answer_and_releases_the_hold(
    sim: SimServer, upstream: Upstream
) -> None:
    response = await upstream.send(**chat(sim, **{"x-sim-error": "502"}))
    settler = Recorder()
    with pytest.raises(FallbackNeeded) as raised:
        await fall_back(response, settler)  # type: ignore[arg-type]
    assert raised.value.status == 502 and settler.finished == [502]


# --- the simulator's transient-failure controls --------------------------------------------------


async def test_fail_first_counts_per_key(sim: SimServer, upstream: Upstream) -> None:
    one, two = failing(1), failing(1)
    statuses = []
    for headers in (one, two, one, two):
        response = await upstream.send(**chat(sim, **headers))
        statuses.append(response.status)
        response.release()
    assert statuses == [503, 503, 200, 200]


@pytest.mark.parametrize(
    ("name", "value"), [("fail-key", "has space"), ("fail-status", "200"), ("fail-first", "-1")]
)
async def test_a_bad_failure_control_is_a_400_naming_it(
    sim: SimServer, upstream: Upstream, name: str, value: str
) -> None:
    controls = {"x-sim-fail-first": "1", f"x-sim-{name}": value}  # the bad value wins
    response = await upstream.send(**chat(sim, **controls))
    body = await response.read()
    response.release()
    assert response.status == 400 and f"x-sim-{name}".encode() in body
