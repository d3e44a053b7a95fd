"""Spending-limit windows: pure arithmetic on UTC instants. No I/O, no clock of its own.

Spend is counted in **buckets**: `(limit key, bucket_start)` rows, `bucket_start` in whole epoch
seconds (UTC). A hold adds its amount to the bucket `Span.bucket_start` of the window it was
admitted in; settling corrects that same bucket, releasing empties it.

Three kinds of window:

- **fixed calendar** (`Window.calendar("day" | "week" | "month")`, the account limit's `fixed`
  strategy): the UTC day; the ISO week, Monday 00:00 UTC to the next Monday; the calendar month.
  One bucket per window, starting at the window's start.
- **fixed seconds** (`Window.fixed(seconds)`, a gateway rule with technique `fixed`): windows of
  `seconds` aligned to the Unix epoch in UTC, `[k·s, (k+1)·s)`. One bucket per window.
- **sliding** (`Window.sliding(seconds)`): the last `seconds`. Buckets are
  `bucket_width(seconds)` = seconds / 60 rounded (at least 1 s) wide, aligned to the epoch; the
  window counts every bucket whose start is in `(now − seconds, now]`, so spend leaves the window
  `seconds` after the start of its bucket. (Buckets starting after `now`, possible only through
  clock skew between processes, are counted too: a skewed clock may refuse early, never overspend.)

Counting is by bucket-start range, not by exact bucket: a fixed window counts every bucket of its
key whose start falls inside the window. So when an operator changes a limit's window or technique
the spend already recorded under that key keeps counting, approximately (to one bucket's width),
instead of silently restarting from zero.

Sliding lengths of the account limit (`SLIDING_SECONDS`): daily = 24 h, weekly = 7 d,
monthly = **30 days** (2,592,000 s), a fixed length so the limit means the same in every month.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

Clock = Callable[[], datetime]
Period = Literal["day", "week", "month"]
Technique = Literal["fixed", "sliding"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)

#: The account limit's `duration` as a calendar period (fixed) or a length in seconds (sliding).
PERIODS: dict[str, Period] = {"daily": "day", "weekly": "week", "monthly": "month"}
SLIDING_SECONDS: dict[str, int] = {"daily": 86_400, "weekly": 604_800, "monthly": 2_592_000}


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """A window: `technique` with either a calendar `period` (fixed only) or a length in seconds."""

    technique: Technique
    seconds: int = 0
    period: Period | None = None

    def __post_init__(self) -> None:
        if self.period is None and (isinstance(self.seconds, bool) or self.seconds < 1):
            raise ValueError(f"a window needs a length of at least 1 s; got {self.seconds!r}")
        if self.period is not None and self.technique != "fixed":
            raise ValueError("a calendar period is a fixed window")

    @classmethod
    def calendar(cls, period: Period) -> Window:
        return cls("fixed", 0, period)

    @classmethod
    def fixed(cls, seconds: int) -> Window:
        return cls("fixed", seconds)

    @classmethod
    def sliding(cls, seconds: int) -> Window:
        return cls("sliding", seconds)

    def describe(self) -> str:
        if self.period is not None:
            return f"calendar {self.period} (UTC)"
        return f"{self.technique} {self.seconds} s window"


@dataclass(frozen=True, slots=True)
class Span:
    """What a hold at one instant touches: the bucket it adds to, and the bucket starts counted.

    Buckets counted: `count_from <= bucket_start` and, if `count_until` is set,
    `bucket_start < count_until`.
    """

    bucket_start: int
    count_from: int
    count_until: int | None


@dataclass(frozen=True, slots=True)
class Refusal:
    """When a refused amount could be admitted, if nothing else is spent meanwhile."""

    retry_after: int  # whole seconds, at least 1
    reset_at: datetime


def epoch_seconds(instant: datetime) -> int:
    """Whole seconds since the epoch, rounded down (exact integer arithmetic, no float)."""
    if instant.tzinfo is None:
        raise ValueError("naive datetime; windows are computed on aware UTC instants")
    return (instant - EPOCH) // _SECOND


def from_epoch(seconds: int) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


def calendar_bounds(period: Period, now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar day, ISO week (from Monday) or month containing `now`: `[start, end)`."""
    day = now.astimezone(UTC).date()
    if period == "day":
        start = day
        end = day + timedelta(days=1)
    elif period == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
    return _midnight(start), _midnight(end)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def fixed_bounds(window: Window, now: datetime) -> tuple[int, int]:
    """The fixed window containing `now`, in epoch seconds: `[start, end)`."""
    if window.technique != "fixed":
        raise ValueError("fixed_bounds of a sliding window")
    if window.period is not None:
        start, end = calendar_bounds(window.period, now)
        return epoch_seconds(start), epoch_seconds(end)
    first = epoch_seconds(now) // window.seconds * window.seconds
    return first, first + window.seconds


def bucket_width(seconds: int) -> int:
    """A sliding window's bucket width: seconds / 60, rounded half up, at least 1 s."""
    return max(1, (seconds + 30) // 60)


def span(window: Window, now: datetime) -> Span:
    if window.technique == "fixed":
        start, end = fixed_bounds(window, now)
        return Span(bucket_start=start, count_from=start, count_until=end)
    width = bucket_width(window.seconds)
    now_s = epoch_seconds(now)
    return Span(
        bucket_start=now_s // width * width,
        count_from=now_s - window.seconds + 1,
        count_until=None,
    )


def counted(window: Window, now: datetime, bucket_start: int) -> bool:
    """Whether a bucket starting at `bucket_start` counts toward the window at `now`."""
    current = span(window, now)
    return bucket_start >= current.count_from and (
        current.count_until is None or bucket_start < current.count_until
    )


def admits(spent_nanos: int, amount_nanos: int, limit_nanos: int) -> bool:
    """The one admission rule: what is spent or held in the window plus this amount ≤ the limit."""
    return spent_nanos + amount_nanos <= limit_nanos


def refusal(
    window: Window,
    now: datetime,
    buckets: Iterable[tuple[int, int]],
    limit_nanos: int,
    amount_nanos: int,
) -> Refusal:
    """When `amount_nanos` fits, given the counted `(bucket_start, amount)` buckets at `now`.

    Fixed: when the window ends. Sliding: when enough of the oldest buckets have left the window
    that the rest plus the amount fit. An amount larger than the limit itself never fits; it gets
    the time when the window is empty again (the caller says so in its message).
    """
    if window.technique == "fixed":
        _, end = fixed_bounds(window, now)
        reset = from_epoch(end)
    else:
        ordered = sorted(
            (start, amount) for start, amount in buckets if counted(window, now, start)
        )
        remaining = sum(amount for _, amount in ordered)
        leaves_at = epoch_seconds(now) + 1 - window.seconds  # a start this old leaves now
        for start, amount in ordered:
            if admits(remaining, amount_nanos, limit_nanos):
                break
            remaining -= amount
            leaves_at = start
        reset = from_epoch(leaves_at + window.seconds)
    return Refusal(retry_after=seconds_until(now, reset), reset_at=reset)


def seconds_until(now: datetime, then: datetime) -> int:
    """Whole seconds from `now` until `then`, rounded up, at least 1 (a Retry-After value)."""
    micros = (then - now) // timedelta(microseconds=1)
    return max(1, -(-micros // 1_000_000))
