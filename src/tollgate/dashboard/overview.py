"""The overview page's figures, read through the same store and billing modules as the billing API.

- **Credits Available**: the account's balance (`accounts.balance_nanos`), what open requests
  hold, the payment method on file and the auto top-up state (`TopUps.profile`, `auto_config`).
- **Spend** today, this ISO week and this calendar month, UTC: the ledger's `usage` entries (what
  was charged, as `GET billing/usage-history` reports it).
- **Against the spending limit**: the limit's own counter over its current window
  (`billing.limits.account_limit` + `windows.span` + `store.limits.window_spend`), the figure
  admission compares with the limit, so it includes what in-flight requests hold.
- **Burn-rate forecast**: the last 7 days' usage per day, and how long the available credits
  last at that rate, in whole days (rounded down, never optimistic).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from tollgate.billing import limits as limit_rules
from tollgate.billing import windows
from tollgate.billing.topup import TopUps
from tollgate.store import Store
from tollgate.store import limits as limit_repo
from tollgate.store import usage as usage_repo
from tollgate.store.models import Account
from tollgate.store.payments import AutoTopUpConfig, PaymentProfile

DAY = 86_400
FORECAST_DAYS = 7
_WINDOW_WORDS = {
    ("daily", "fixed"): "today (UTC)",
    ("weekly", "fixed"): "this week (UTC, from Monday)",
    ("monthly", "fixed"): "this month (UTC)",
    ("daily", "sliding"): "in the last 24 hours",
    ("weekly", "sliding"): "in the last 7 days",
    ("monthly", "sliding"): "in the last 30 days",
}


@dataclass(frozen=True, slots=True)
class LimitStatus:
    amount_nanos: int
    duration: str
    strategy: str
    spent_nanos: int
    window_words: str

    @property
    def percent(self) -> int:
        """How full the window is, 0..100 (for the bar; the figures carry the exact amounts)."""
        if self.amount_nanos <= 0:
            return 100
        return min(100, self.spent_nanos * 100 // self.amount_nanos)

    @property
    def remaining_nanos(self) -> int:
        return max(0, self.amount_nanos - self.spent_nanos)


@dataclass(frozen=True, slots=True)
class Forecast:
    """`days` is None when there was no usage in the window (no rate to forecast from)."""

    usage_nanos: int
    per_day_nanos: int
    days: int | None


@dataclass(frozen=True, slots=True)
class Overview:
    account: Account
    available_nanos: int
    payment_method: PaymentProfile | None
    auto_topup: AutoTopUpConfig | None
    spend_today: int
    spend_week: int
    spend_month: int
    limit: LimitStatus | None
    forecast: Forecast


def forecast(available_nanos: int, usage_nanos: int, days: int = FORECAST_DAYS) -> Forecast:
    """How many whole days `available_nanos` lasts at `usage_nanos` per `days` (integers only)."""
    if usage_nanos <= 0:
        return Forecast(0, 0, None)
    lasts = max(0, available_nanos) * days // usage_nanos
    return Forecast(usage_nanos, usage_nanos // days, lasts)


async def _limit_status(store: Store, account_id: str, now: datetime) -> LimitStatus | None:
    config = await limit_repo.get_account_limit(store, account_id)
    if config is None:
        return None
    spec = limit_rules.account_limit(account_id, config)
    current = windows.span(spec.window, now)
    spent = await limit_repo.window_spend(store, spec.key, current.count_from, current.count_until)
    words = _WINDOW_WORDS.get((config.duration, config.strategy), spec.window.describe())
    return LimitStatus(config.amount_nanos, config.duration, config.strategy, spent, words)


async def load_overview(store: Store, topups: TopUps, account: Account) -> Overview:
    """Every figure of the overview page, at `topups.clock()` (the billing API's clock)."""
    now = topups.clock()
    day_start, _ = windows.calendar_bounds("day", now)
    week_start, _ = windows.calendar_bounds("week", now)
    month_start, _ = windows.calendar_bounds("month", now)
    since = min(week_start, month_start, now - timedelta(days=FORECAST_DAYS))
    buckets = await usage_repo.usage_buckets(
        store, account.id, start=since, end=now + timedelta(seconds=1), width_seconds=DAY
    )

    def spent_since(start: datetime) -> int:
        first = windows.epoch_seconds(start)
        return sum(amount for bucket, amount in buckets if bucket >= first)

    # The forecast's window is whole UTC days: the last 7 including today.
    recent = spent_since(day_start - timedelta(days=FORECAST_DAYS - 1))
    available = account.balance_nanos - account.held_nanos
    return Overview(
        account=account,
        available_nanos=available,
        payment_method=await topups.profile(account.id),
        auto_topup=await topups.auto_config(account.id),
        spend_today=spent_since(day_start),
        spend_week=spent_since(week_start),
        spend_month=spent_since(month_start),
        limit=await _limit_status(store, account.id, now),
        forecast=forecast(available, recent),
    )
