"""The dashboard's pure parts: the money format, typed dollar amounts, sessions and CSRF, and the
burn-rate forecast."""

from __future__ import annotations

import pytest

from tollgate.dashboard.format import AmountError, parse_dollars_to_cents, usd
from tollgate.dashboard.overview import forecast
from tollgate.dashboard.sessions import (
    ABSOLUTE_SECONDS,
    ANONYMOUS_SECONDS,
    IDLE_SECONDS,
    SessionStore,
)


@pytest.mark.parametrize(
    ("nanos", "shown"),
    [
        (0, "$0.00"),
        (10_000_000, "$0.01"),
        (123_456_789_000, "$123.46"),
        (1_234_567_000_000_000, "$1,234,567.00"),
        (-3_000_000_000, "-$3.00"),
        (5_000_000, "$0.005"),
        (123_000, "$0.000123"),
        (1_000, "$0.000001"),
        (999, "< $0.000001"),
        (-123_000, "-$0.000123"),
    ],
)
def test_money_is_shown_one_way_everywhere(nanos: int, shown: str) -> None:
    assert usd(nanos) == shown


@pytest.mark.parametrize(
    ("typed", "cents"), [("25", 2500), ("25.5", 2550), ("$1,000.00", 100_000), (" 1.00 ", 100)]
)
def test_typed_dollar_amounts_become_cents(typed: str, cents: int) -> None:
    assert (
        parse_dollars_to_cents(typed, field="the limit", minimum_cents=100, maximum_cents=10**9)
        == cents
    )


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("", "Enter the limit"),
        ("abc", "must be a number"),
        ("NaN", "must be a number"),
        ("Infinity", "must be a number"),
        ("-5", "more than $0"),
        ("0", "more than $0"),
        ("1.001", "two decimal places"),
        ("0.99", "from $1.00 to $10,000,000.00"),
        ("10000000.01", "from $1.00 to $10,000,000.00"),
    ],
)
def test_bad_dollar_amounts_say_what_to_type(typed: str, message: str) -> None:
    with pytest.raises(AmountError, match=message.replace("$", r"\$").replace(".", r"\.")):
        parse_dollars_to_cents(typed, field="the limit", minimum_cents=100, maximum_cents=10**9)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_expires_after_idle_time_and_says_so() -> None:
    clock = Clock()
    sessions = SessionStore(clock)
    sid, session = sessions.sign_in(None, "a" * 32, "tg_token")
    clock.now += IDLE_SECONDS - 1
    assert sessions.get(sid).session is session  # touched: the idle timer restarts
    clock.now += IDLE_SECONDS - 1
    assert sessions.get(sid).session is session
    clock.now += IDLE_SECONDS + 1
    found = sessions.get(sid)
    assert found.session is None and found.expired
    assert sessions.get(sid).expired is False  # reported once, then simply unknown


def test_a_session_ends_after_the_absolute_lifetime_even_when_busy() -> None:
    clock = Clock()
    sessions = SessionStore(clock)
    sid, _ = sessions.sign_in(None, "a" * 32, "tg_token")
    for _ in range(ABSOLUTE_SECONDS // (IDLE_SECONDS - 60) + 1):
        clock.now += IDLE_SECONDS - 60
        sessions.get(sid)
    assert sessions.get(sid).session is None


def test_signing_in_replaces_the_anonymous_session_and_its_csrf_token() -> None:
    sessions = SessionStore(Clock())
    anonymous_id, anonymous = sessions.start()
    signed_id, signed = sessions.sign_in(anonymous_id, "a" * 32, "tg_token")
    assert signed_id != anonymous_id and signed.csrf_token != anonymous.csrf_token
    assert sessions.get(anonymous_id).session is None
    assert sessions.csrf_matches(signed, signed.csrf_token)
    assert not sessions.csrf_matches(signed, anonymous.csrf_token)
    assert not sessions.csrf_matches(signed, None)
    assert not sessions.csrf_matches(signed, "")


def test_anonymous_sessions_expire_quietly() -> None:
    clock = Clock()
    sessions = SessionStore(clock)
    sid, _ = sessions.start()
    clock.now += ANONYMOUS_SECONDS + 1
    found = sessions.get(sid)
    assert found.session is None and not found.expired


def test_the_forecast_rounds_down_and_needs_usage() -> None:
    assert forecast(10_000, 0).days is None
    assert forecast(10_000, 7_000).days == 10
    assert forecast(10_000, 7_001).days == 9
    assert forecast(-5, 7_000).days == 0
    assert forecast(10_000, 7_000).per_day_nanos == 1_000
