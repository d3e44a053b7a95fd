"""Auto top-up: one off-session charge per threshold crossing, at most one in flight per account.

The state lives on the account's `auto_topup_configs` row (`tollgate.store.payments`), and every
transition is one guarded UPDATE, so the guarantees hold across tasks, processes and nodes:

    armed ──(balance < threshold: claim_auto)──► in flight ──► succeeded: disarmed
      ▲                                              │        failed: armed again after back-off,
      └──(a settle sees balance ≥ threshold: rearm)──┘                 disabled after 3 in a row
                                                              capped: armed again next month

- `claim_auto` sets the in-flight marker only if the row is enabled, armed, not in flight, not
  backing off, and the account's balance, read in the same statement, is below the threshold.
  Exactly one of any number of concurrent callers wins and disarms the crossing.
- The winner checks the monthly cap (auto top-up credits of this UTC month that succeeded or may
  still succeed, plus this one), then charges off-session through `TopUps.charge` (idempotency key
  from the top-up id) and settles it (`TopUps.settle` credits exactly once and releases the marker
  with the outcome). A charge still `processing` keeps the marker until its webhook settles it.
- A provider error leaves the marker: the charge may exist at the provider, so it is resumed with
  the same idempotency key once the marker is older than `stale_after` (a dead process's marker
  is resumed the same way).
- Nothing raises into the caller, and nothing runs on a request's critical path: the pipeline calls
  `schedule`, which starts a background task, or does nothing when the cached config (a few
  seconds old at most) shows there is nothing to do.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from tollgate import money
from tollgate.billing.payments import Charge, PaymentProviderError
from tollgate.cache import RefreshingCache
from tollgate.store import payments as repo
from tollgate.store._util import new_id
from tollgate.store.payments import AutoTopUpConfig, TopUpRecord

if TYPE_CHECKING:
    from tollgate.billing.topup import TopUps

log = logging.getLogger("tollgate.billing.auto_topup")

MAX_CONSECUTIVE_FAILURES = 3
_MAX_CACHED = 100_000


class _Unknown:
    """Not cached yet (distinct from a cached `None`: no auto top-up configured)."""


_UNKNOWN = _Unknown()


@dataclass(frozen=True, slots=True)
class AutoTopUpOutcome:
    """What one `maybe_auto_topup` call did (None from it means: nothing to do)."""

    status: str  # succeeded | failed | pending | capped | retry_later | error
    topup: TopUpRecord | None = None
    error: str | None = None


def month_bounds(moment: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month containing `moment`: [start, start of next month)."""
    start = moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if start.month == 12:
        return start, start.replace(year=start.year + 1, month=1)
    return start, start.replace(month=start.month + 1)


class AutoTopUps:
    """The auto top-up state machine for one `TopUps` (see the module doc)."""

    def __init__(
        self,
        topups: TopUps,
        *,
        retry_backoff: timedelta,
        stale_after: timedelta,
        config_ttl: float,
    ) -> None:
        self.topups = topups
        self.store = topups.store
        self.retry_backoff = retry_backoff
        self.stale_after = stale_after
        # Read on every settle: single flight and refresh ahead, so a burst of settles makes
        # one database read, not one per settle, when an entry is missing or expires.
        self._configs: RefreshingCache[str, AutoTopUpConfig | None] = RefreshingCache(
            lambda account: repo.get_auto_config(self.store, account),
            ttl=config_ttl,
            max_entries=_MAX_CACHED,
            confirmed_by=self.store,
        )
        self._tasks: set[asyncio.Task[AutoTopUpOutcome | None]] = set()

    def forget(self, account_id: str) -> None:
        """Drop the cached config (after this process changed it)."""
        self._configs.invalidate(account_id)

    def schedule(self, account_id: str, balance_after_nanos: int) -> None:
        config = self._configs.get_nowait(account_id, _UNKNOWN)
        if not isinstance(config, _Unknown):
            if config is None or not config.enabled:
                return
            above = balance_after_nanos >= money.from_cents(config.threshold_cents)
            if above and (config.armed or config.in_flight_topup_id):
                return
        task = asyncio.get_running_loop().create_task(
            self.maybe_auto_topup(account_id, balance_after_nanos)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for every scheduled auto top-up (at shutdown, and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def maybe_auto_topup(
        self, account_id: str, balance_after_nanos: int
    ) -> AutoTopUpOutcome | None:
        try:
            return await self._maybe(account_id, balance_after_nanos)
        except Exception as exc:
            log.exception("auto top-up for account %s failed unexpectedly", account_id)
            return AutoTopUpOutcome("error", error=repr(exc))

    async def _config(self, account_id: str) -> AutoTopUpConfig | None:
        return await self._configs.get(account_id)

    async def _maybe(self, account_id: str, balance_after_nanos: int) -> AutoTopUpOutcome | None:
        config = await self._config(account_id)
        if config is None or not config.enabled:
            return None
        now = self.topups.clock()
        if balance_after_nanos >= money.from_cents(config.threshold_cents):
            if (
                not config.armed
                and config.in_flight_topup_id is None
                and await repo.rearm_auto(self.store, account_id, now)
            ):
                self.forget(account_id)
            return None
        if config.in_flight_topup_id is not None:
            if config.in_flight_since is None or now - config.in_flight_since < self.stale_after:
                return None
            resumed = await repo.take_over_stale(
                self.store, account_id, stale_before=now - self.stale_after, now=now
            )
            self.forget(account_id)
            return await self._resume(account_id, resumed) if resumed else None
        if not config.armed or (
            config.next_attempt_at is not None and config.next_attempt_at > now
        ):
            return None
        topup_id = new_id()
        claimed = await repo.claim_auto(self.store, account_id, topup_id, now)
        self.forget(account_id)
        if not claimed:
            return None
        return await self._start(account_id, topup_id, now)

    async def _start(self, account_id: str, topup_id: str, now: datetime) -> AutoTopUpOutcome:
        config = await repo.get_auto_config(self.store, account_id)
        if config is None:  # deleted meanwhile: nothing to charge
            return AutoTopUpOutcome("capped", error="auto top-up config was removed")
        if config.monthly_cap_cents is not None:
            start, next_month = month_bounds(now)
            spent = await repo.auto_topup_cents(self.store, account_id, start, next_month)
            if spent + config.amount_cents > config.monthly_cap_cents:
                cap = money.format_dollars(money.from_cents(config.monthly_cap_cents))
                error = (
                    f"The monthly auto top-up cap ({cap}) is reached; auto top-up resumes on "
                    f"{next_month.date().isoformat()}."
                )
                await repo.finish_auto(
                    self.store,
                    account_id,
                    topup_id,
                    outcome="deferred",
                    now=now,
                    error=error,
                    retry_at=next_month,
                )
                return AutoTopUpOutcome("capped", error=error)
        profile = await self.topups.profile(account_id)
        if profile is None or profile.payment_method_id is None:
            error = "no payment method on file: add one to use auto top-up"
            await self._fail(account_id, topup_id, now, error)
            return AutoTopUpOutcome("failed", error=error)
        fee = self.topups.fee(config.amount_cents)
        record, _ = await repo.claim_topup(
            self.store,
            now=now,
            id=topup_id,
            account_id=account_id,
            kind="auto",
            provider=self.topups.provider.name,
            idempotency_key=f"auto-{topup_id}",
            amount_cents=config.amount_cents,
            fee_cents=fee,
            charge_cents=config.amount_cents + fee,
            payment_method_id=profile.payment_method_id,
            brand=profile.brand,
            last4=profile.last4,
        )
        return await self._run(record, profile.customer_id)

    async def _fail(self, account_id: str, topup_id: str, now: datetime, error: str) -> None:
        await repo.finish_auto(
            self.store,
            account_id,
            topup_id,
            outcome="failed",
            now=now,
            error=error,
            retry_at=now + self.retry_backoff,
            max_failures=MAX_CONSECUTIVE_FAILURES,
        )

    async def finish(self, record: TopUpRecord) -> None:
        """Release the marker of a settled auto top-up with its outcome (from `TopUps.settle`)."""
        if record.kind != "auto" or record.status not in ("succeeded", "failed"):
            return
        now = self.topups.clock()
        if record.status == "failed":
            await self._fail(
                record.account_id, record.id, now, f"{record.error_code}: {record.error_message}"
            )
        else:
            await repo.finish_auto(
                self.store, record.account_id, record.id, outcome="succeeded", now=now
            )
        self.forget(record.account_id)

    async def _resume(self, account_id: str, topup_id: str) -> AutoTopUpOutcome:
        record = await repo.get_topup(self.store, topup_id)
        if record is None:  # the process died before any charge: release the marker, re-armed
            await repo.finish_auto(
                self.store, account_id, topup_id, outcome="deferred", now=self.topups.clock()
            )
            return AutoTopUpOutcome("retry_later", error="in-flight marker without a top-up")
        if record.status in ("succeeded", "failed"):
            settled = await self.topups.settle(record, _as_charge(record))
            return _outcome(settled)
        if record.payment_intent_id is not None:
            charge = await self.topups.provider.get_charge(record.payment_intent_id)
            if charge is not None:
                return _outcome(await self.topups.settle(record, charge))
        profile = await self.topups.profile(record.account_id)
        return await self._run(record, profile.customer_id if profile else None)

    async def _run(self, record: TopUpRecord, customer: str | None) -> AutoTopUpOutcome:
        try:
            return _outcome(await self.topups.charge(record, customer, off_session=True))
        except PaymentProviderError as exc:
            # The charge may or may not exist at the provider: keep the marker, so that the
            # take-over after `stale_after` resumes it with the same idempotency key.
            return AutoTopUpOutcome("retry_later", topup=record, error=exc.message)


def _as_charge(record: TopUpRecord) -> Charge:
    return Charge(
        record.payment_intent_id,
        "succeeded" if record.status == "succeeded" else "failed",
        record.charge_cents,
        error_code=record.error_code,
        error_message=record.error_message,
    )


def _outcome(record: TopUpRecord) -> AutoTopUpOutcome:
    status = record.status if record.status in ("succeeded", "failed") else "pending"
    error = f"{record.error_code}: {record.error_message}" if record.status == "failed" else None
    return AutoTopUpOutcome(status, topup=record, error=error)
