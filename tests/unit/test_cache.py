"""The hot-path cache: single flight, refresh ahead, and invalidation that sticks."""

from __future__ import annotations

import asyncio
import time

import pytest

from tollgate.cache import RefreshingCache


class Loader:
    def __init__(self) -> None:
        self.calls = 0
        self.value = "v1"
        self.gate: asyncio.Event | None = None

    async def __call__(self, key: str) -> str:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return f"{key}:{self.value}"


async def test_concurrent_misses_share_one_load() -> None:
    loader = Loader()
    loader.gate = asyncio.Event()
    cache: RefreshingCache[str, str] = RefreshingCache(loader, ttl=60)
    waiting = [asyncio.ensure_future(cache.get("k")) for _ in range(50)]
    await asyncio.sleep(0)
    loader.gate.set()
    assert set(await asyncio.gather(*waiting)) == {"k:v1"}
    assert loader.calls == 1


async def test_expired_entry_is_served_while_one_refresh_runs() -> None:
    loader = Loader()
    cache: RefreshingCache[str, str] = RefreshingCache(loader, ttl=0.05)
    assert await cache.get("k") == "k:v1"
    await asyncio.sleep(0.06)
    loader.value = "v2"
    results = await asyncio.gather(*(cache.get("k") for _ in range(20)))
    assert set(results) == {"k:v1"}  # nobody waited on the reload
    await asyncio.sleep(0.01)
    assert await cache.get("k") == "k:v2"
    assert loader.calls == 2


async def test_entries_too_old_are_not_served_stale() -> None:
    loader = Loader()
    cache: RefreshingCache[str, str] = RefreshingCache(loader, ttl=0.02)
    await cache.get("k")
    await asyncio.sleep(0.05)  # older than 2 * ttl
    loader.value = "v2"
    assert await cache.get("k") == "k:v2"


async def test_invalidation_during_a_load_is_not_undone_by_it() -> None:
    loader = Loader()
    loader.gate = asyncio.Event()
    cache: RefreshingCache[str, str] = RefreshingCache(loader, ttl=60)
    pending = asyncio.ensure_future(cache.get("k"))
    await asyncio.sleep(0)
    cache.invalidate("k")  # e.g. the token was revoked while its lookup was in flight
    loader.gate.set()
    await pending
    loader.gate = None
    loader.value = "v2"
    assert await cache.get("k") == "k:v2"  # the in-flight result was not kept


async def test_a_failed_load_is_raised_and_not_cached() -> None:
    calls = 0

    async def flaky(key: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("database unreachable")
        return "ok"

    cache: RefreshingCache[str, str] = RefreshingCache(flaky, ttl=60)
    with pytest.raises(OSError):
        await cache.get("k")
    assert await cache.get("k") == "ok"


async def test_get_nowait_never_waits_and_starts_one_load_for_a_burst() -> None:
    # The auto top-up check runs after every settle: a burst of misses makes one database read.
    loader = Loader()
    loader.gate = asyncio.Event()
    cache: RefreshingCache[str, str | None] = RefreshingCache(loader, ttl=60)
    missing = object()
    assert {cache.get_nowait("k", missing) for _ in range(50)} == {missing}
    await asyncio.sleep(0)
    assert loader.calls == 1
    loader.gate.set()
    assert await cache.get("k") == "k:v1"  # joins the load the burst started
    assert cache.get_nowait("k", missing) == "k:v1"
    assert loader.calls == 1


async def test_get_nowait_serves_a_stale_entry_while_it_refreshes() -> None:
    loader = Loader()
    cache: RefreshingCache[str, str] = RefreshingCache(loader, ttl=0.05)
    assert await cache.get("k") == "k:v1"
    await asyncio.sleep(0.06)
    loader.value = "v2"
    assert cache.get_nowait("k", None) == "k:v1"
    await asyncio.sleep(0.01)
    assert cache.get_nowait("k", None) == "k:v2"
    assert loader.calls == 2


class Confirmations:
    """What the cache-event poller sets on the store: `caches_confirmed_at`."""

    def __init__(self) -> None:
        self.caches_confirmed_at = float("-inf")

    def confirm_now(self) -> None:
        self.caches_confirmed_at = time.monotonic()


def confirmed_cache(
    max_age: float,
) -> tuple[Loader, Confirmations, RefreshingCache[str, str]]:
    """A cache with a 20 ms ttl whose entries the test's `Confirmations` may vouch for."""
    loader, events = Loader(), Confirmations()
    cache = RefreshingCache(loader, ttl=0.02, confirmed_by=events, max_age=max_age)
    return loader, events, cache


async def test_entries_confirmed_by_cache_events_are_not_reloaded_every_ttl() -> None:
    loader, events, cache = confirmed_cache(max_age=60)
    await cache.get("k")
    for _ in range(5):  # five times 2 * ttl, the poller confirming all along
        await asyncio.sleep(0.015)
        events.confirm_now()
        await asyncio.sleep(0.015)
        assert await cache.get("k") == "k:v1"
    assert loader.calls == 1


async def test_without_confirmations_the_ttl_applies_again() -> None:
    """The poller cannot read: its confirmations stop, and an entry is reloaded after ttl."""
    loader, events, cache = confirmed_cache(max_age=60)
    await cache.get("k")
    events.confirm_now()
    await asyncio.sleep(0.05)  # older than 2 * ttl since the last confirmation
    loader.value = "v2"
    assert await cache.get("k") == "k:v2"
    assert loader.calls == 2


async def test_confirmations_vouch_for_an_entry_only_up_to_max_age() -> None:
    """A change made outside tollgate (no event) is seen within `max_age`."""
    loader, events, cache = confirmed_cache(max_age=0.1)
    await cache.get("k")
    loader.value = "v2"
    deadline = time.monotonic() + 0.3
    while await cache.get("k") == "k:v1":
        assert time.monotonic() < deadline, "not reloaded past max_age"
        events.confirm_now()
        await asyncio.sleep(0.005)
    assert loader.calls == 2
