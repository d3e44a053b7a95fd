"""Window arithmetic, table-driven at UTC day, ISO-week and month boundaries; never slept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tollgate.billing import windows
from tollgate.billing.windows import Window


def at(text: str) -> datetime:
    """`2026-11-29T23:59:59.5` as an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ep(text: str) -> int:
    return windows.epoch_seconds(at(text))


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        # days
        ("day", "2026-11-29T00:00:00", "2026-11-29", "2026-11-30"),
        ("day", "2026-11-29T23:59:59.999999", "2026-11-29", "2026-11-30"),
        ("day", "2026-12-31T23:59:59", "2026-12-31", "2027-01-01"),
        ("day", "2028-02-28T12:00:00", "2028-02-28", "2028-02-29"),
        ("day", "2028-02-29T12:00:00", "2028-02-29", "2028-03-01"),
        # ISO weeks start on Monday 00:00 UTC
        ("week", "2026-11-29T23:59:59", "2026-11-23", "2026-11-30"),  # a Sunday
        ("week", "2026-11-30T00:00:00", "2026-11-30", "2026-12-07"),  # the next Monday
        ("week", "2026-01-01T08:00:00", "2025-12-29", "2026-01-05"),  # a week across New Year
        ("week", "2027-01-03T23:59:59", "2026-12-28", "2027-01-04"),  # Sunday of ISO week 53
        ("week", "2028-02-29T00:00:00", "2028-02-28", "2028-03-06"),
        # calendar months
        ("month", "2026-11-30T23:59:59.999999", "2026-11-01", "2026-12-01"),
        ("month", "2026-12-31T23:59:59", "2026-12-01", "2027-01-01"),  # Dec -> Jan
        ("month", "2027-01-01T00:00:00", "2027-01-01", "2027-02-01"),
        ("month", "2028-02-29T23:59:59", "2028-02-01", "2028-03-01"),  # leap year
        ("month", "2027-02-28T23:59:59", "2027-02-01", "2027-03-01"),
        ("month", "2100-02-28T00:00:00", "2100-02-01", "2100-03-01"),  # 2100 is not leap
        ("month", "2000-02-29T00:00:00", "2000-02-01", "2000-03-01"),  # 2000 is
    ],
)
def test_calendar_bounds(period: windows.Period, now: str, start: str, end: str) -> None:
    assert windows.calendar_bounds(period, at(now)) == (at(start), at(end))
    first, last = windows.fixed_bounds(Window.calendar(period), at(now))
    assert (first, last) == (ep(start), ep(end))


def test_calendar_bounds_use_utc_whatever_the_input_zone() -> None:
    # 2026-12-01 01:00 at UTC+05:00 is still 30 November in UTC.
    local = datetime(2026, 12, 1, 1, 0, tzinfo=timezone(timedelta(hours=5)))
    assert windows.calendar_bounds("month", local) == (at("2026-11-01"), at("2026-12-01"))
    assert windows.calendar_bounds("day", local) == (at("2026-11-30"), at("2026-12-01"))


@pytest.mark.parametrize(
    ("seconds", "now", "start"),
    [
        (3600, "2026-11-29T01:30:00", "2026-11-29T01:00:00"),
        (3600, "2026-11-29T01:59:59.999", "2026-11-29T01:00:00"),
        (3600, "2026-11-29T02:00:00", "2026-11-29T02:00:00"),
        (86_400, "2026-11-29T23:59:59", "2026-11-29T00:00:00"),
        (7, "1970-01-01T00:00:13", "1970-01-01T00:00:07"),
        (604_800, "2026-11-29T12:00:00", "2026-11-26T00:00:00"),  # epoch weeks start Thursday
    ],
)
def test_fixed_seconds_windows_align_to_the_epoch(seconds: int, now: str, start: str) -> None:
    assert windows.fixed_bounds(Window.fixed(seconds), at(now)) == (ep(start), ep(start) + seconds)


@pytest.mark.parametrize(
    ("seconds", "width"),
    [(1, 1), (29, 1), (60, 1), (89, 1), (90, 2), (3600, 60), (86_400, 1440), (2_592_000, 43_200)],
)
def test_bucket_width_is_a_sixtieth_rounded_at_least_one_second(seconds: int, width: int) -> None:
    assert windows.bucket_width(seconds) == width


def test_epoch_seconds_floors_exactly_and_refuses_naive_datetimes() -> None:
    assert windows.epoch_seconds(at("1970-01-01T00:00:01.999999")) == 1
    assert windows.epoch_seconds(at("2026-11-29T00:00:00")) == 1_795_910_400
    assert windows.from_epoch(1_795_910_400) == at("2026-11-29T00:00:00")
    with pytest.raises(ValueError, match="naive"):
        windows.epoch_seconds(datetime(2026, 1, 1))


def test_sliding_span_counts_buckets_started_in_the_last_window() -> None:
    now = windows.from_epoch(10_000) + timedelta(milliseconds=500)
    span = windows.span(Window.sliding(600), now)
    assert span == windows.Span(bucket_start=10_000, count_from=9_401, count_until=None)
    assert windows.counted(Window.sliding(600), now, 9_401)
    assert not windows.counted(Window.sliding(600), now, 9_400)  # now - window: just left
    assert windows.counted(Window.sliding(600), now, 10_010)  # a skewed writer's future bucket


def test_fixed_span_counts_only_the_current_window() -> None:
    window = Window.calendar("day")
    span = windows.span(window, at("2026-11-29T10:00:00"))
    assert span == windows.Span(ep("2026-11-29"), ep("2026-11-29"), ep("2026-11-30"))
    assert windows.counted(window, at("2026-11-29T10:00:00"), ep("2026-11-29T09:00:00"))
    assert not windows.counted(window, at("2026-11-29T10:00:00"), ep("2026-11-28T23:59:59"))
    assert not windows.counted(window, at("2026-11-29T10:00:00"), ep("2026-11-30"))


@pytest.mark.parametrize(
    ("window", "now", "retry_after", "reset"),
    [
        (Window.calendar("day"), "2026-11-29T23:59:59.5", 1, "2026-11-30"),
        (Window.calendar("day"), "2026-11-29T00:00:00", 86_400, "2026-11-30"),
        (Window.calendar("week"), "2026-11-29T23:00:00", 3600, "2026-11-30"),
        (Window.calendar("month"), "2026-12-31T23:00:00", 3600, "2027-01-01"),
        (Window.calendar("month"), "2028-02-28T00:00:00", 2 * 86_400, "2028-03-01"),
        (Window.fixed(3600), "2026-11-29T01:59:00", 60, "2026-11-29T02:00:00"),
    ],
)
def test_fixed_refusal_waits_for_the_window_end(
    window: Window, now: str, retry_after: int, reset: str
) -> None:
    refusal = windows.refusal(window, at(now), [(0, 10)], limit_nanos=10, amount_nanos=1)
    assert refusal == windows.Refusal(retry_after=retry_after, reset_at=at(reset))


@pytest.mark.parametrize(
    ("amount", "reset"),
    [
        (5, 1_100),  # the oldest bucket (start 100) must leave: at 100 + 1000
        (10, 1_200),  # two must leave
        (15, 1_300),  # all three
        (20, 1_300),  # never fits (more than the limit): when the window is empty
    ],
)
def test_sliding_refusal_waits_until_enough_old_buckets_leave(amount: int, reset: int) -> None:
    now = windows.from_epoch(1_050)
    buckets = [(300, 5), (100, 5), (200, 5), (40, 99)]  # 40 is outside the window already
    refusal = windows.refusal(Window.sliding(1_000), now, buckets, 15, amount)
    assert refusal == windows.Refusal(retry_after=reset - 1_050, reset_at=windows.from_epoch(reset))


def test_retry_after_rounds_up_to_a_whole_second() -> None:
    now = windows.from_epoch(100) + timedelta(microseconds=1)
    assert windows.seconds_until(now, windows.from_epoch(101)) == 1
    assert windows.seconds_until(now, windows.from_epoch(102)) == 2
    assert windows.seconds_until(now, now) == 1  # never 0: Retry-After: 0 invites a spin


@pytest.mark.parametrize(
    ("spent", "amount", "limit", "admitted"),
    [(0, 10, 10, True), (5, 5, 10, True), (5, 6, 10, False), (11, 0, 10, False), (0, 0, 0, True)],
)
def test_admission_rule(spent: int, amount: int, limit: int, admitted: bool) -> None:
    assert windows.admits(spent, amount, limit) is admitted


def test_windows_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        Window.sliding(0)
    with pytest.raises(ValueError):
        Window("sliding", 0, "day")
    with pytest.raises(ValueError):
        windows.fixed_bounds(Window.sliding(60), at("2026-01-01"))


def test_rolling_a_day_with_an_injected_clock() -> None:
    """Step a clock across midnight: the bucket and counted range move exactly at 00:00:00."""
    window = Window.calendar("day")
    before = windows.span(window, at("2026-12-31T23:59:59.999999"))
    after = windows.span(window, at("2027-01-01T00:00:00"))
    assert before.bucket_start == ep("2026-12-31")
    assert after.bucket_start == ep("2027-01-01") == before.count_until
    assert not windows.counted(window, at("2027-01-01T00:00:00"), before.bucket_start)
