"""Ledger maintenance in the background: recover abandoned holds, prune what no longer counts.

    maintenance = Maintenance(ledger, interval=300, retention=timedelta(days=35)).start()
    ...
    await maintenance.aclose()          # the app's lifespan does both

Every `interval` seconds, one pass (`run_once`), at the ledger's clock:

1. `ledger.recover()`: holds past their expiry, resolved by the policy in `billing/ledger.py`.
   Only expired ones, because other processes (PostgreSQL) may be mid-request; start-up recovery
   is what resolves every open hold of a crashed process on SQLite.
2. Pruning, through `tollgate.store.maintenance`, which keeps the ledger's invariants while it
   deletes: resolved holds resolved more than `retention` ago whose buckets are all dead, then
   the dead buckets that are left empty. The `usage` entries of pruned holds stay (the ledger is
   append-only); `ledger.check_invariants(..., pruned_before=now - retention)` accepts them.

A pass that fails (the database is unreachable, a lock timeout) is logged and tried again at the
next interval; it never ends the task, let alone the app. `aclose` cancels the task: a pass cut
short rolls back its open transaction (each step is one) and the next pass picks up the rest.

**When a bucket is dead.** A bucket starting at `s` can be counted by a window of `L` seconds
only while `now < s + L` (a fixed window counts the buckets that start inside it, a sliding one
those that start after `now − L`: `billing/windows.py`). So it is dead once `s + L + GRACE <= now`
for the longest `L` that can count its key (`Horizons`):

- `account:{id}`: 31 days, whether or not the account has a limit now: a calendar month is at
  most 31 days, "monthly" sliding is 30, and a limit set later counts the spend already recorded;
- `gateway:{account}:{gateway}:{rule}[:{partition}]`: the longest `window` of that rule id in
  the gateway's current `spend_limits.rules`, enabled or not (either may be re-enabled). A key no
  current rule produces (the rule or the gateway was deleted) is counted by nothing: dead after
  `GRACE`. A window lengthened later does not bring back spend pruned under the shorter one;
- any other key: never dead.

`GRACE` covers clock skew between processes: a process whose clock is behind still counts a
bucket a little longer than the pruner's clock says.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tollgate.billing.ledger import Ledger, RecoveryReport
from tollgate.billing.limits import key_account, rule_key, unpartitioned
from tollgate.billing.windows import epoch_seconds
from tollgate.settings import BillingSettings
from tollgate.store import maintenance as repo
from tollgate.tasks import cancel_and_wait

log = logging.getLogger("tollgate.billing.maintenance")

ACCOUNT_HORIZON = timedelta(days=31)  # the longest account-limit window: a calendar month
GRACE = timedelta(hours=1)  # clock skew between processes, with a wide margin
PAGE = 500  # rows read per query
BATCH = 200  # holds or buckets changed per write transaction (short: SQLite has one writer)


@dataclass(frozen=True, slots=True)
class Horizons:
    """How long each limit key's buckets can still count: the longest window per rule."""

    rules: dict[str, int]  # unpartitioned gateway rule key -> longest window, seconds

    @classmethod
    def of(cls, gateways: Iterable[tuple[str, str, Any]]) -> Horizons:
        """From `(account id, gateway id, spend_limits config)` of every gateway."""
        rules: dict[str, int] = {}
        for account_id, gateway_id, spend_limits in gateways:
            for rule in (spend_limits or {}).get("rules", []):
                key = rule_key(account_id, gateway_id, str(rule["id"]), ())
                rules[key] = max(rules.get(key, 0), int(rule["window"]))
        return cls(rules)

    def seconds(self, key: str) -> int | None:
        """The longest window that can count `key`, or None when unknown (never dead)."""
        if key.startswith("account:") and key_account(key) is not None:
            return int(ACCOUNT_HORIZON.total_seconds())
        rule = unpartitioned(key)
        return None if rule is None else self.rules.get(rule, 0)

    def dead_at(self, now: datetime) -> repo.IsDead:
        now_s = epoch_seconds(now)
        grace = int(GRACE.total_seconds())

        def is_dead(key: str, bucket_start: int) -> bool:
            horizon = self.seconds(key)
            return horizon is not None and bucket_start + horizon + grace <= now_s

        return is_dead


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    recovered: RecoveryReport
    holds_deleted: int
    buckets_deleted: int

    @property
    def did_something(self) -> bool:
        recovered = self.recovered.released + self.recovered.settled
        return bool(recovered + self.holds_deleted + self.buckets_deleted)


async def prune_holds(ledger: Ledger, resolved_before: datetime, is_dead: repo.IsDead) -> int:
    """Every prunable resolved hold, a page at a time; returns how many were deleted."""
    deleted = 0
    cursor: tuple[datetime, str] | None = None
    while page := await repo.resolved_holds(
        ledger.store, resolved_before=resolved_before, after=cursor, limit=PAGE
    ):
        cursor = (page[-1].expires_at, page[-1].id)
        ready: dict[str, list[str]] = defaultdict(list)
        for hold in page:  # a hold still counted by a live bucket waits for a later pass
            if all(is_dead(key, start) for key, start in hold.buckets):
                ready[hold.account_id].append(hold.id)
        for account_id, ids in ready.items():
            for i in range(0, len(ids), BATCH):
                deleted += await repo.prune_holds(
                    ledger.store, account_id, ids[i : i + BATCH], is_dead
                )
    return deleted


async def prune_buckets(ledger: Ledger, is_dead: repo.IsDead) -> int:
    """Every dead bucket whose amount is 0, a page at a time; returns how many were deleted."""
    deleted = 0
    cursor: repo.Ref | None = None
    while page := await repo.zero_buckets(ledger.store, after=cursor, limit=PAGE):
        cursor = page[-1]
        by_account: dict[str, list[repo.Ref]] = defaultdict(list)
        for key, start in page:
            account_id = key_account(key)
            if account_id is not None and is_dead(key, start):
                by_account[account_id].append((key, start))
        for account_id, refs in by_account.items():
            for i in range(0, len(refs), BATCH):
                deleted += await repo.delete_zero_buckets(
                    ledger.store, account_id, refs[i : i + BATCH]
                )
    return deleted


async def run_maintenance(ledger: Ledger, *, retention: timedelta) -> MaintenanceReport:
    """One pass: recover expired holds, then prune (holds first: they empty their buckets)."""
    now = ledger.clock()
    recovered = await ledger.recover(now)
    is_dead = Horizons.of(await repo.spend_rules(ledger.store)).dead_at(now)
    deleted = await prune_holds(ledger, now - retention, is_dead)
    buckets = await prune_buckets(ledger, is_dead)
    return MaintenanceReport(recovered, deleted, buckets)


Sleep = Callable[[float], Awaitable[None]]


class Maintenance:
    """The background task. `sleep` is injected in tests, which then step it pass by pass."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        interval: float,
        retention: timedelta,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.ledger = ledger
        self.interval = interval
        self.retention = retention
        self.sleep = sleep
        self.failures = 0  # passes that raised, since start (for tests and debugging)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, ledger: Ledger, billing: BillingSettings) -> Maintenance | None:
        """As configured (`[billing]`); None when `maintenance_interval_seconds` is 0 (off)."""
        if billing.maintenance_interval_seconds <= 0:
            return None
        retention = timedelta(days=billing.hold_retention_days)
        return cls(ledger, interval=billing.maintenance_interval_seconds, retention=retention)

    def start(self) -> Maintenance:
        self._task = asyncio.create_task(self._run(), name="tollgate-ledger-maintenance")
        return self

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def run_once(self) -> MaintenanceReport | None:
        """One pass, logged; None if it failed (logged too, never raised)."""
        try:
            report = await run_maintenance(self.ledger, retention=self.retention)
        except Exception:  # the database may be down for a while: try again next time
            self.failures += 1
            log.exception("ledger maintenance failed; retrying in %s s", self.interval)
            return None
        recovered = report.recovered
        log.log(
            logging.INFO if report.did_something else logging.DEBUG,
            "ledger maintenance: recovered %d holds (%d released, %d settled for %d nanos, "
            "%d already resolved); pruned %d holds, deleted %d spend buckets",
            recovered.released + recovered.settled,
            recovered.released,
            recovered.settled,
            recovered.charged_nanos,
            recovered.already_resolved,
            report.holds_deleted,
            report.buckets_deleted,
        )
        return report

    async def _run(self) -> None:
        while True:
            await self.sleep(self.interval)
            await self.run_once()
