"""Retries and first-byte timeouts for upstream calls (`cf-aig-max-attempts`, `cf-aig-retry-delay`,
`cf-aig-backoff`, `cf-aig-request-timeout`, and the gateway's `retry_*` settings).

What is retried, exactly: a connection failure (502 `upstream_unreachable`), no response headers
within the request timeout (504 `upstream_timeout`), and an upstream answer with status 429 or any
5xx. Nothing else: not a 4xx other than 429 (the same request would fail again), not a body that
breaks off after its headers, and never a stream: the decision is taken on the status line, before
a single byte of the answer is relayed, so the client only ever sees the last attempt's answer.

Billing: the request is admitted (and its credits held) once, before the first attempt. A failed
attempt produced nothing, its answer is dropped (the client never sees it), and the next attempt
reuses the same hold; the hold is settled once, for the answer that is relayed (or released when
the last attempt fails too). So a request is charged at most once, whatever the attempts.

Precedence: request headers override the gateway's `retry_*` settings; `None` settings mean the
defaults (one attempt, no delay, constant). The timeout has no gateway setting: without the header
it is the operator's `upstream.first_byte_timeout_seconds`.

The wait before retry `n` (1 for the first retry) is `delay` (constant), `delay * n` (linear) or
`delay * 2**(n-1)` (exponential). A 429's `retry-after` is not honoured beyond that: the client
chose the policy, and the gateway never waits longer than it was told.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, Protocol

from tollgate.canonical import Usage
from tollgate.errors import UpstreamTimeout, UpstreamUnavailable
from tollgate.features.headers import header, integer_header, invalid_header
from tollgate.store.holds import Settlement
from tollgate.upstream import Upstream, UpstreamResponse

Backoff = Literal["constant", "linear", "exponential"]
BACKOFFS: tuple[Backoff, ...] = ("constant", "linear", "exponential")
MAX_ATTEMPTS = 5
MAX_RETRY_DELAY_MS = 5000
# The longest first-byte timeout a request may ask for (10 minutes).
MAX_REQUEST_TIMEOUT_MS = 600_000

MAX_ATTEMPTS_HEADER = b"cf-aig-max-attempts"
RETRY_DELAY_HEADER = b"cf-aig-retry-delay"
BACKOFF_HEADER = b"cf-aig-backoff"
REQUEST_TIMEOUT_HEADER = b"cf-aig-request-timeout"
_RETRY_HEADERS = frozenset(
    {MAX_ATTEMPTS_HEADER, RETRY_DELAY_HEADER, BACKOFF_HEADER, REQUEST_TIMEOUT_HEADER}
)


@dataclass(frozen=True, slots=True)
class RetryOverrides:
    """What a request's headers ask for; None where they say nothing."""

    max_attempts: int | None = None
    delay_ms: int | None = None
    backoff: Backoff | None = None
    timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one request is sent: attempts in all (1 = no retry), the wait between them and the
    first-byte timeout of each attempt (None: the operator's default)."""

    max_attempts: int = 1
    delay_ms: int = 0
    backoff: Backoff = "constant"
    timeout_ms: int | None = None

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        if self.backoff == "linear":
            factor = retry
        elif self.backoff == "exponential":
            factor = 2 ** (retry - 1)
        else:
            factor = 1
        return self.delay_ms * factor / 1000

    @property
    def timeout_seconds(self) -> float | None:
        return None if self.timeout_ms is None else self.timeout_ms / 1000


NO_RETRIES = RetryPolicy()
NO_OVERRIDES = RetryOverrides()


def read_retry_headers(headers: list[tuple[bytes, bytes]]) -> RetryOverrides:
    """The four headers, validated: a bad value is a 400 naming the header."""
    if not any(name in _RETRY_HEADERS for name, _ in headers):
        return NO_OVERRIDES  # most requests: nothing to read, no object to build
    backoff = header(headers, BACKOFF_HEADER)
    if backoff is not None and backoff not in BACKOFFS:
        raise invalid_header(BACKOFF_HEADER, "one of constant, linear, exponential", backoff)
    return RetryOverrides(
        max_attempts=integer_header(headers, MAX_ATTEMPTS_HEADER, 1, MAX_ATTEMPTS),
        delay_ms=integer_header(headers, RETRY_DELAY_HEADER, 0, MAX_RETRY_DELAY_MS, " ms"),
        backoff=backoff,
        timeout_ms=integer_header(
            headers, REQUEST_TIMEOUT_HEADER, 1, MAX_REQUEST_TIMEOUT_MS, " ms"
        ),
    )


def retry_policy(overrides: RetryOverrides, gateway_config: Mapping[str, Any]) -> RetryPolicy:
    """Headers over the gateway's settings over the defaults (a stored `None` is the default)."""
    if overrides == NO_OVERRIDES and not (
        gateway_config.get("retry_max_attempts")
        or gateway_config.get("retry_delay")
        or gateway_config.get("retry_backoff")
    ):
        return NO_RETRIES  # the common case: nothing asked for, no object to build
    attempts = overrides.max_attempts or gateway_config.get("retry_max_attempts") or 1
    delay = overrides.delay_ms
    if delay is None:
        delay = gateway_config.get("retry_delay") or 0
    backoff = overrides.backoff or gateway_config.get("retry_backoff") or "constant"
    return RetryPolicy(int(attempts), int(delay), backoff, overrides.timeout_ms)


def retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


async def send_with_retries(
    upstream: Upstream, policy: RetryPolicy, **request: Any
) -> UpstreamResponse:
    """`upstream.send` up to `policy.max_attempts` times. Returns the first answer that is not
    retryable, or the last attempt's answer; raises the last attempt's 502/504."""
    timeout = policy.timeout_seconds
    for attempt in range(1, policy.max_attempts + 1):
        last = attempt == policy.max_attempts
        if attempt > 1:
            await asyncio.sleep(policy.delay_before(attempt - 1))
        try:
            response = await upstream.send(**request, first_byte_timeout=timeout)
        except (UpstreamTimeout, UpstreamUnavailable):
            if last:
                raise
            continue
        if last or not retryable_status(response.status):
            return response
        discard(response)
    raise AssertionError("unreachable: the last attempt returns or raises")


def discard(response: UpstreamResponse) -> None:
    """Drop a failed attempt's answer unread: closing (rather than reading an error body that
    might be slow or endless) costs one pooled connection, on a path that is already failing."""
    response.close()


class FallbackNeeded(Exception):
    """An upstream error answer that was not relayed, because the request has somewhere else to
    go (a later Universal step). Its hold is already released."""

    def __init__(self, provider: str, status: int) -> None:
        super().__init__(f"{provider} answered HTTP {status}")
        self.provider = provider
        self.status = status


class Settles(Protocol):
    async def finish(self, status: int, usage: Usage | None) -> Settlement | None: ...


async def fall_back(response: UpstreamResponse, settler: Settles | None) -> NoReturn:
    """Drop an error answer unrelayed, release its hold (it produced nothing: never billed),
    and hand over to the next step."""
    discard(response)
    if settler is not None:
        await settler.finish(response.status, None)
    raise FallbackNeeded(response.provider, response.status)
