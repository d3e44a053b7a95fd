"""Gateway rate limits: `rate_limiting_limit` requests per `rate_limiting_interval` seconds.

Checked once per data-plane request, after the gateway is resolved and before the response
cache and billing: a refused request is a 429 with `Retry-After`, in the format of the endpoint
called, and nothing is billed, cached or sent upstream. Refused requests do not count.

Both techniques keep two counters per gateway, for the current and the previous window; windows
are aligned to the clock (multiples of the interval since the Unix epoch):

- `fixed` (the default): the current window's count; it resets when the window ends.
- `sliding`: the two-bucket approximation of the last `interval` seconds,
  `previous * (1 - elapsed / interval) + current`, which assumes the previous window's requests
  were evenly spread. O(1) state per gateway, unlike an exact log of every request.

With `[redis] url` the counters live in Redis and one Lua script checks and counts atomically
using Redis's own clock, so every process sharing the Redis shares the limit. Without it each
process counts alone (the limit is then per process). If Redis fails, each process counts on its
own until Redis answers again (the limit then holds per process), and the failure is logged: a
rate limit must neither take the gateway down nor switch off.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tollgate.errors import RateLimited
from tollgate.features.redis import FailureLog
from tollgate.store import GatewayRecord


@dataclass(frozen=True, slots=True)
class Limit:
    limit: int
    interval_ms: int
    sliding: bool


def gateway_limit(gateway: GatewayRecord) -> Limit | None:
    """The gateway's limit, or None when off (limit or interval 0 or null)."""
    config = gateway.config
    limit = config.get("rate_limiting_limit")
    interval = config.get("rate_limiting_interval")
    if not limit or not interval:
        return None
    return Limit(limit, interval * 1000, config.get("rate_limiting_technique") == "sliding")


@dataclass(slots=True)
class _Window:
    window: int  # index of the current window: now_ms // interval_ms
    current: int
    previous: int
    interval_ms: int


def _decide(state: _Window | None, now_ms: int, limit: Limit) -> tuple[_Window, int]:
    """The state after one request, and 0 when it is allowed or the seconds to wait.

    The same arithmetic as `_SCRIPT` (Redis), so both backends refuse the same requests.
    """
    window = now_ms // limit.interval_ms
    current = previous = 0
    if state is not None and state.interval_ms == limit.interval_ms:
        if state.window == window:
            current, previous = state.current, state.previous
        elif state.window == window - 1:
            previous = state.current
    start = window * limit.interval_ms
    count: float = current
    if limit.sliding:
        count += previous * (1 - (now_ms - start) / limit.interval_ms)
    if count + 1 <= limit.limit:
        return _Window(window, current + 1, previous, limit.interval_ms), 0
    end = start + limit.interval_ms
    wait: float
    if not limit.sliding:
        wait = end - now_ms
    elif current + 1 <= limit.limit:  # the previous window's share must fade a little more
        wait = start + limit.interval_ms * (1 - (limit.limit - current - 1) / previous) - now_ms
    else:  # this window alone is full: wait into the next one, where it is the previous
        fade = max(0.0, 1 - (limit.limit - 1) / current)
        wait = end + limit.interval_ms * fade - now_ms
    return _Window(window, current, previous, limit.interval_ms), max(1, math.ceil(wait / 1000))


# KEYS[1] = the gateway's hash {w, c, p, i}; ARGV = limit, interval_ms, "sliding" | "fixed".
# Returns 0 when the request is counted, else the seconds to wait. Mirrors `_decide`.
_SCRIPT = """
local limit = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local sliding = ARGV[3] == 'sliding'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = math.floor(now / interval)
local s = redis.call('HMGET', KEYS[1], 'w', 'c', 'p', 'i')
local w = tonumber(s[1])
local c, p = 0, 0
if w ~= nil and tonumber(s[4]) == interval then
  if w == window then
    c, p = tonumber(s[2]), tonumber(s[3])
  elseif w == window - 1 then
    p = tonumber(s[2])
  end
end
local start = window * interval
local count = c
if sliding then count = c + p * (1 - (now - start) / interval) end
if count + 1 <= limit then
  redis.call('HSET', KEYS[1], 'w', window, 'c', c + 1, 'p', p, 'i', interval)
  redis.call('PEXPIRE', KEYS[1], interval * 2)
  return 0
end
local wait
if not sliding then
  wait = start + interval - now
elseif c + 1 <= limit then
  wait = start + interval * (1 - (limit - c - 1) / p) - now
else
  wait = start + interval + interval * math.max(0, 1 - (limit - 1) / c) - now
end
return math.max(1, math.ceil(wait / 1000))
"""

# The in-process table is pruned of idle gateways when it grows past this many.
_MEMORY_PRUNE_AT = 10_000


class RateLimiter:
    """Counts data-plane requests per (account, gateway) and refuses those over the limit."""

    def __init__(self, redis: Redis | None, key_prefix: str) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._script = redis.register_script(_SCRIPT) if redis is not None else None
        self._windows: dict[tuple[str, str], _Window] = {}
        self._failures = FailureLog("rate limit")

    async def enforce(self, gateway: GatewayRecord) -> None:
        """Count this request against the gateway's limit, or raise a 429 `RateLimited`."""
        limit = gateway_limit(gateway)
        if limit is None:
            return
        wait = await self._hit(gateway.account_id, gateway.id, limit)
        if wait:
            seconds = limit.interval_ms // 1000
            raise RateLimited(
                f"Gateway '{gateway.id}' allows {limit.limit} requests per {seconds} seconds "
                f"({'sliding' if limit.sliding else 'fixed'} window), and this request would "
                f"exceed it. Retry after {wait} seconds, or raise rate_limiting_limit in the "
                "gateway's settings.",
                code="rate_limited",
                headers={"Retry-After": str(wait)},
            )

    async def _hit(self, account_id: str, gateway_id: str, limit: Limit) -> int:
        if self._script is None:
            return self._hit_in_memory((account_id, gateway_id), limit)
        key = f"{self._prefix}rl:{account_id}:{gateway_id}"
        technique = "sliding" if limit.sliding else "fixed"
        args: list[int | str] = [limit.limit, limit.interval_ms, technique]
        try:
            return int(await self._script(keys=[key], args=args))
        except (RedisError, OSError) as exc:
            # Counted in this process alone meanwhile: the limit holds per process, never off.
            self._failures.failed(exc, "this process counts its own requests until it answers")
            return self._hit_in_memory((account_id, gateway_id), limit)

    def _hit_in_memory(self, key: tuple[str, str], limit: Limit) -> int:
        now_ms = int(time.time() * 1000)
        state, wait = _decide(self._windows.get(key), now_ms, limit)
        if len(self._windows) >= _MEMORY_PRUNE_AT and key not in self._windows:
            self._prune(now_ms)
        self._windows[key] = state
        return wait

    def _prune(self, now_ms: int) -> None:
        """Forget gateways whose counters no longer matter (idle for two windows)."""
        for key, state in list(self._windows.items()):
            if now_ms // state.interval_ms > state.window + 1:
                del self._windows[key]
