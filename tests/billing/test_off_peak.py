"""DeepSeek's off-peak prices: charged only to a request admitted and settled outside the peak
windows without spanning one (the reading that can never under-bill). The catalog's windows, and
the meter with an injected clock on a real store (both engines)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.billing import test_ledger
from tests.billing.test_catalog import broken
from tests.billing.test_ledger import Env, new_account
from tollgate.billing.catalog import CatalogError, load_catalog, parse_catalog
from tollgate.billing.meter import Meter
from tollgate.billing.requests import RequestFacts
from tollgate.canonical import Usage
from tollgate.store import ledger as ledger_repo
from tollgate.store.models import GatewayRecord

env = test_ledger.env
CATALOG = load_catalog()
FLASH = CATALOG.lookup("deepseek", "deepseek-flash")
TUESDAY = datetime(2026, 12, 1, tzinfo=UTC)  # a Tuesday
SATURDAY = datetime(2026, 12, 5, tzinfo=UTC)


def at(day: datetime, hhmm: str) -> datetime:
    hours, minutes = map(int, hhmm.split(":"))
    return day + timedelta(hours=hours, minutes=minutes)


@pytest.mark.parametrize(
    ("start", "end", "off_peak"),
    [
        (at(TUESDAY, "00:10"), at(TUESDAY, "00:20"), True),
        (at(TUESDAY, "00:50"), at(TUESDAY, "01:00"), False),  # ends as the peak starts
        (at(TUESDAY, "03:59"), at(TUESDAY, "04:00"), False),  # inside the last peak minute
        (at(TUESDAY, "04:00"), at(TUESDAY, "05:59"), True),  # between the two windows
        (at(TUESDAY, "05:00"), at(TUESDAY, "10:30"), False),  # spans 06:00-10:00
        (at(TUESDAY, "10:00"), at(TUESDAY, "23:00"), True),
        (at(TUESDAY, "23:50"), at(TUESDAY, "23:59") + timedelta(hours=2), False),  # into Wed
        (at(SATURDAY, "02:00"), at(SATURDAY, "08:00"), True),  # weekends are off-peak
        (at(SATURDAY, "12:00"), at(SATURDAY, "12:00") + timedelta(days=2), False),  # to Monday
    ],
)
def test_off_peak_only_without_touching_a_peak_window(
    start: datetime, end: datetime, off_peak: bool
) -> None:
    assert FLASH is not None
    assert FLASH.is_off_peak(start, end) is off_peak


def test_off_peak_prices_are_half_the_list_price() -> None:
    assert FLASH is not None
    usage = Usage(10_000, 2_000, cached_input_tokens=4_000)
    peak = CATALOG.cost("deepseek", FLASH, usage)
    assert CATALOG.cost("deepseek", FLASH, usage, off_peak=True) * 2 == peak
    gpt = CATALOG.lookup("openai", "gpt-4o")
    assert gpt is not None  # a model without off-peak prices ignores the flag
    assert CATALOG.cost("openai", gpt, usage, off_peak=True) == CATALOG.cost("openai", gpt, usage)
    shown = FLASH.to_public()["pricing"]
    assert shown["off_peak_input"] == 0.15 and shown["input"] == 0.30
    assert shown["peak_hours_utc"] == {"days": "mon-fri", "windows": ["01:00-04:00", "06:00-10:00"]}


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"peak_hours_utc": ...}, "off_peak_input", "need peak_hours_utc"),
        ({"off_peak_output": ...}, "off_peak_output", "missing"),
        ({"peak_hours_utc": {"days": "weekends", "windows": ["01:00-02:00"]}}, "days", "one of"),
        ({"peak_hours_utc": {"days": "mon-fri", "windows": []}}, "windows", "non-empty"),
        ({"peak_hours_utc": {"days": "mon-fri", "windows": ["1-4"]}}, "windows", "HH:MM"),
        ({"peak_hours_utc": {"days": "mon-fri", "windows": ["10:00-09:00"]}}, "windows", "end"),
        ({"peak_hours_utc": {"days": "mon-fri"}}, "peak_hours_utc", "must be"),
        (
            {"tiers": [{"above_input_tokens": 100_000, "input": "0.60", "output": "2.40"}]},
            "peak_hours_utc",
            "cannot be combined",
        ),
    ],
)
def test_malformed_off_peak_data_is_refused(
    change: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(CatalogError) as error:
        parse_catalog(broken(change, "deepseek/deepseek-flash"))
    assert field in str(error.value) and problem in str(error.value)


BODY = b'{"model": "deepseek-flash", "messages": [{"role": "user", "content": "hi"}]}'
FACTS = RequestFacts("chat", "deepseek-flash", 500, stream=False, wants_usage_chunk=False)


@pytest.mark.parametrize(
    ("admitted", "settled", "off_peak"),
    [
        (at(TUESDAY, "10:30"), at(TUESDAY, "10:31"), True),
        (at(TUESDAY, "05:59"), at(TUESDAY, "06:01"), False),
        (at(SATURDAY, "07:00"), at(SATURDAY, "07:05"), True),
    ],
)
async def test_the_meter_charges_off_peak_by_admission_and_settlement_time(
    env: Env, admitted: datetime, settled: datetime, off_peak: bool
) -> None:
    account_id = await new_account(env.store, 10**12)
    meter = Meter(env.store, CATALOG, env.ledger)
    env.clock.now = admitted
    gateway = GatewayRecord(account_id, "default", {}, True, admitted, admitted)
    admission = await meter.admit(
        account_id=account_id,
        gateway=gateway,
        provider="deepseek",
        facts=FACTS,
        body=BODY,
        unified=True,
    )
    assert FLASH is not None and admission.hold is not None
    usage = Usage(3_000, 400, cached_input_tokens=1_000)
    peak = CATALOG.cost("deepseek", FLASH, usage)
    # The hold reserves the list (peak) price of the prompt estimate and the output cap.
    held = Usage(admission.prompt_estimate, FACTS.max_output_tokens or 0)
    assert admission.hold.amount_nanos == CATALOG.cost("deepseek", FLASH, held)
    env.clock.now = settled
    settlement = await meter.settle(admission, usage, produced_bytes=1_600)
    assert settlement is not None
    expected = CATALOG.cost("deepseek", FLASH, usage, off_peak=off_peak)
    assert settlement.charged_nanos == expected
    assert (expected < peak) is off_peak
    [entry] = [
        e for e in await ledger_repo.list_entries(env.store, account_id) if e.kind == "usage"
    ]
    assert ("off-peak prices" in entry.note) is off_peak
