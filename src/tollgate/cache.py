"""A small in-process cache for hot-path lookups (tokens, gateways, custom providers).

Two properties matter under load, both measured in `bench/`:

- **Single flight.** Concurrent misses for one key share one load, so a burst of requests
  with a new token makes one database read, not one per request.
- **Refresh ahead.** After `ttl` seconds an entry is still served while one background task
  reloads it, so entries expiring do not stall every in-flight request on the database.
  An entry older than `2 * ttl` is not served stale: the caller waits for the fresh value.
  A change elsewhere is therefore seen within `2 * ttl` at worst; changes made through this
  process call `invalidate` and are seen at once.

A failed background refresh keeps the old value until it is too old to serve.

**Confirmed by cache events.** With `confirmed_by` (the store, whose `caches_confirmed_at` the
cache-event poller sets: `tollgate.cache_events`), an entry counts as current as of the poller's
last successful read when that is later than its load: every change made through tollgate, in
any process, would have arrived as an event and dropped it. So while the events flow, an entry
is not reloaded every `ttl` (which, with many accounts each seen less often than that, made most
requests wait on database reads: bench/scaling.py), only once `max_age` after its load, which
bounds how long a change made outside tollgate (raw SQL) may go unseen. When the poller cannot
read, its confirmations stop and `ttl` applies again, as without events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")


# How long cache events may vouch for an entry after its load (see the module docstring).
MAX_AGE_SECONDS = 300.0


class Confirmed(Protocol):
    caches_confirmed_at: float  # monotonic; -inf when never


class RefreshingCache(Generic[K, V]):
    def __init__(
        self,
        load: Callable[[K], Awaitable[V]],
        *,
        ttl: float,
        max_entries: int = 100_000,
        confirmed_by: Confirmed | None = None,
        max_age: float = MAX_AGE_SECONDS,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._max = max_entries
        self._confirmed_by = confirmed_by
        self._max_age = max_age
        self._entries: dict[K, tuple[float, V]] = {}
        self._inflight: dict[K, asyncio.Future[V]] = {}
        # Bumped by every invalidation: a load that started before one must not store its
        # (possibly outdated) result, or a revoked token could come back for a whole ttl.
        self._generation = 0

    async def get(self, key: K) -> V:
        servable = self._servable(key)
        if servable:
            return servable[0]
        future = self._inflight.get(key) or self._start_load(key)
        return await asyncio.shield(future)

    def get_nowait(self, key: K, default: D) -> V | D:
        """What `get` would serve without waiting, else `default` (a load starts, single
        flight, so a later `get` finds it)."""
        servable = self._servable(key)
        if servable:
            return servable[0]
        if key not in self._inflight:
            self._start_load(key).add_done_callback(_ignore_failure)
        return default

    def _staleness(self, loaded: float, now: float) -> float:
        """Seconds since the entry loaded at `loaded` was last known current: since its load,
        or since the last confirmation by cache events, for up to `max_age` after the load."""
        if self._confirmed_by is not None and now - loaded < self._max_age:
            return now - max(loaded, self._confirmed_by.caches_confirmed_at)
        return now - loaded

    def _servable(self, key: K) -> tuple[V] | None:
        """The cached value if it may be served now (refreshing it ahead when it is due)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = time.monotonic()
        stale = self._staleness(entry[0], now)
        if stale > 2 * self._ttl:
            return None
        due = stale > self._ttl or now - entry[0] > self._max_age - self._ttl
        if due and key not in self._inflight:
            self._start_load(key).add_done_callback(_ignore_failure)
        return (entry[1],)

    def peek(self, key: K) -> V | None:
        """The cached value if fresh, without loading (never waits)."""
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None and self._staleness(entry[0], now) <= self._ttl:
            return entry[1]
        return None

    def invalidate(self, key: K) -> None:
        self._generation += 1
        self._entries.pop(key, None)
        self._inflight.pop(key, None)

    def invalidate_where(self, matches: Callable[[K, V], bool]) -> None:
        self._generation += 1
        for key, (_, value) in list(self._entries.items()):
            if matches(key, value):
                del self._entries[key]
                self._inflight.pop(key, None)

    def _start_load(self, key: K) -> asyncio.Future[V]:
        future = asyncio.ensure_future(self._load_and_store(key, self._generation))
        self._inflight[key] = future
        return future

    async def _load_and_store(self, key: K, generation: int) -> V:
        try:
            value = await self._load(key)
        finally:
            if self._inflight.get(key) is asyncio.current_task():
                del self._inflight[key]
        if generation != self._generation:
            return value  # invalidated meanwhile: answer this caller, remember nothing
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = (time.monotonic(), value)
        return value


def _ignore_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it; the stale value stays
