"""Other processes' changes reach this one's caches within `cache_events_poll_seconds`.

Each gateway process caches what its hot path looks up: token verifications (`api/auth.py`),
gateways (`gateway_cache.py`), custom providers, stored keys, the account spending limit, the
auto top-up settings, `log_management` counts. A change made through this process drops its own
entries at once. Every change also appends an event to the `cache_events` table, in the change's
own transaction (`tollgate.store.cache_events`), whichever process or CLI command made it.

`CacheEventPoller` is one background task per process: every interval it reads the events newer
than the last one it read (`SELECT ... WHERE id > last`, one indexed query) and drops the
entries they name; it skips the events its own store wrote, whose entries are gone already. The
hot path does no extra work: it reads its caches as before. A revoked token is therefore refused
everywhere within an interval plus a query (250 ms by default).

Why a polled table and not PostgreSQL LISTEN/NOTIFY or Redis pub/sub: it works the same on
SQLite and PostgreSQL, needs nothing but the database every process already has, and nothing is
lost while a process is disconnected: when it can read again it reads every event it missed.
At four small reads per second per process, a push channel would save almost nothing.

Each successful read also confirms every cached entry current as of its start
(`Store.caches_confirmed_at`): any change made before it has dropped its entries. The caches
then reload an entry only when an event drops it, or `tollgate.cache.MAX_AGE_SECONDS` after its
load, instead of every `ttl`: with many accounts, each seen less often than the ttl, that
reloading was most of a request's cost (bench/scaling.py). When the poller cannot read (the
database is unreachable), the confirmations stop and nothing is trusted longer than before
events existed: every cache reloads its entries after its ttl, and never serves one older than
twice its ttl (`tollgate.cache`).
For the same reason, events are kept only `RETENTION` (an hour): a process that missed one
older than that (stopped for longer) holds no entry cached before it that it would still serve.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from tollgate.store import cache_events as events_repo
from tollgate.store.cache_events import CacheEvent, CacheEventKind
from tollgate.tasks import cancel_and_wait

if TYPE_CHECKING:
    from tollgate.services import Services

log = logging.getLogger("tollgate.cache_events")

RETENTION = timedelta(hours=1)
PRUNE_EVERY_SECONDS = 600.0
READ_TIMEOUT_SECONDS = 5.0
_LOG_EVERY_SECONDS = 30.0

Sleep = Callable[[float], Awaitable[None]]


def _account_and(key: str) -> tuple[str, str]:
    """`account/rest`: account ids are 32 hex characters, so the first `/` separates them."""
    account_id, _, rest = key.partition("/")
    return account_id, rest


def _handlers(services: Services) -> dict[str, Callable[[str], None]]:
    """What each kind of event drops, keyed by `CacheEventKind` value."""

    def gateway(key: str) -> None:  # deleting a gateway also deletes its keys and logs
        account_id, gateway_id = _account_and(key)
        services.gateways.invalidate(account_id, gateway_id)
        services.stored_keys.invalidate(account_id, gateway_id)
        services.logs.forget_count(account_id, gateway_id)

    return {
        CacheEventKind.TOKEN: services.tokens.forget_token,
        CacheEventKind.ACCOUNT: services.tokens.forget_account,
        CacheEventKind.GATEWAY: gateway,
        CacheEventKind.CUSTOM_PROVIDER: lambda key: services.custom_providers.invalidate(
            *_account_and(key)
        ),
        CacheEventKind.STORED_KEYS: lambda key: services.stored_keys.invalidate(*_account_and(key)),
        CacheEventKind.ACCOUNT_LIMIT: services.meter.forget_account_limit,
        CacheEventKind.AUTO_TOPUP: services.topups.auto.forget,
        CacheEventKind.GATEWAY_LOGS: lambda key: services.logs.forget_count(*_account_and(key)),
    }


class CacheEventPoller:
    """The background task that applies other processes' cache events to this process.

    It skips the events this process wrote itself: every change made through the API or the
    dashboard drops its own entries at once, so a process alone behaves exactly as without
    events (and reloads nothing twice).
    """

    def __init__(
        self, services: Services, *, interval: float, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.services = services
        self.interval = interval
        self.sleep = sleep
        self.last_id = 0  # the newest event read
        self.applied = 0  # events applied since start (for tests and debugging)
        self.failures = 0  # reads that failed since start
        self._handlers = _handlers(services)
        self._task: asyncio.Task[None] | None = None
        self._pruned_at = -math.inf
        self._logged_at = -math.inf

    @classmethod
    def from_settings(cls, services: Services) -> CacheEventPoller | None:
        """As configured; None when `database.cache_events_poll_seconds` is 0 (off)."""
        interval = services.settings.database.cache_events_poll_seconds
        return cls(services, interval=interval) if interval > 0 else None

    async def start(self) -> CacheEventPoller:
        """Skip the events written before now (nothing is cached yet), then poll."""
        self.last_id = await events_repo.latest_event_id(self.services.store)
        self._pruned_at = time.monotonic()  # not at once: every process starts at once
        self._task = asyncio.create_task(self._run(), name="tollgate-cache-events")
        return self

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await self.sleep(self.interval)
            started = time.monotonic()
            try:
                async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                    await self.poll_once()
            except Exception as exc:  # the database's: unreachable, timed out, locked, ...
                self.failures += 1
                self._report(exc)
            else:  # every change made before `started` has dropped its entries by now
                self.services.store.caches_confirmed_at = started

    async def poll_once(self) -> int:
        """Apply every event newer than the last one read; returns how many were applied."""
        count = 0
        while batch := await events_repo.events_after(self.services.store, self.last_id):
            for event in batch:
                count += self.apply(event)
            self.last_id = batch[-1].id
        if time.monotonic() - self._pruned_at >= PRUNE_EVERY_SECONDS:
            self._pruned_at = time.monotonic()
            await events_repo.prune_events(self.services.store, datetime.now(UTC) - RETENTION)
        return count

    def apply(self, event: CacheEvent) -> bool:
        """Drop what the event names; False for this process's own events (the change's code
        dropped its entries at once) and for a kind this version does not know."""
        if event.origin == self.services.store.origin:
            return False
        handler = self._handlers.get(event.kind)
        if handler is None:  # written by a newer version during a rolling upgrade
            log.debug("skipping cache event %s of unknown kind %r", event.id, event.kind)
            return False
        handler(event.key)
        self.applied += 1
        return True

    def _report(self, exc: Exception) -> None:
        if time.monotonic() - self._logged_at >= _LOG_EVERY_SECONDS:
            self._logged_at = time.monotonic()
            log.warning(
                "cannot read cache events (%r); changes made by other processes are seen "
                "when cache entries expire until this recovers",
                exc,
            )
