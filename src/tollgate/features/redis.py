"""The one Redis client a process shares (`[redis] url`), for the response cache and rate limits.

Redis is optional: without it both features keep their state in the process. The client
connects lazily, on first use, so start-up does not wait on Redis. Short timeouts bound what a
slow or absent Redis can add to a request; the features that use it treat a failure as "no
answer" (a cache miss, a request let through) and log it, rather than failing the request.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis

from tollgate.settings import RedisSettings

log = logging.getLogger("tollgate.redis")

# A request waits at most this long on Redis before the feature gives up on it.
_TIMEOUT_SECONDS = 0.5
# Failures are logged at most this often, so a Redis outage does not flood the log.
_LOG_EVERY_SECONDS = 10.0


def redis_client(settings: RedisSettings) -> Redis | None:
    """A client for `[redis] url`, or None when Redis is not configured."""
    if settings.url is None:
        return None
    return Redis.from_url(
        settings.url,
        socket_timeout=_TIMEOUT_SECONDS,
        socket_connect_timeout=_TIMEOUT_SECONDS,
        health_check_interval=30,
    )


class FailureLog:
    """Logs a feature's Redis failures, at most one line per `_LOG_EVERY_SECONDS`."""

    def __init__(self, feature: str) -> None:
        self.feature = feature
        self._last = 0.0

    def failed(self, exc: Exception, consequence: str) -> None:
        now = time.monotonic()
        if now - self._last >= _LOG_EVERY_SECONDS:
            self._last = now
            log.warning("%s: Redis failed (%r); %s", self.feature, exc, consequence)
