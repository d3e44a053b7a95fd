"""The Usage page in a real browser: charts, legend and tables of real Unified Billing requests
(two models of two providers), the totals against the requests' `cf-aig-cost`, the by-provider
and by-hour views, and unknown URL values falling back to the defaults."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import DESKTOP, PHONE, Live, check_accessibility, screenshot, sign_in
from tollgate import money
from tollgate.dashboard.format import usd

pytestmark = pytest.mark.xdist_group("browser")

NewPage = Callable[..., Page]
MINI = "openai/gpt-4o-mini"
SONNET = "anthropic/claude-sonnet-4-6"


def _request(live: Live, model: str, n: int) -> tuple[int, int, int]:
    """One Unified Billing chat request through the gateway: (cost nanos, input, output)."""
    base = f"{live.url}/v1/{live.account.account_id}/default"
    if model == MINI:  # the provider's own path, as the overview test does
        url, headers = f"{base}/openai/chat/completions", "cf-aig-authorization"
        body_model = "gpt-4o-mini"
    else:  # the Unified API, another provider
        url, headers, body_model = f"{base}/compat/chat/completions", "authorization", model
    response = httpx.post(
        url,
        headers={headers: f"Bearer {live.account.token}"},
        json={
            "model": body_model,
            "messages": [{"role": "user", "content": f"hello number {n}"}],
            "max_tokens": 64,
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    cost = money.from_dollars(response.headers["cf-aig-cost"])
    return cost, usage["prompt_tokens"], usage["completion_tokens"]


def _desktop_and_phone(page: Page, name: str) -> None:
    """Screenshots of this state at 1280 px and at 390 px (nothing may scroll sideways there),
    with axe-core on both; the page is back at desktop width afterwards."""
    screenshot(page, f"{name}-desktop")
    check_accessibility(page)
    page.set_viewport_size(PHONE)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name} scrolls sideways by {overflow}px at 390 px"
    screenshot(page, f"{name}-phone")
    check_accessibility(page)
    page.set_viewport_size(DESKTOP)


def _no_sideways_scroll(page: Page) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px"


def test_usage_charts_both_models_and_totals_equal_the_requests_costs(
    live: Live, new_page: NewPage
) -> None:
    figures = [_request(live, model, n) for n, model in enumerate((MINI, SONNET, MINI, SONNET))]
    cost = sum(f[0] for f in figures)
    assert cost > 0 and all(f[0] > 0 for f in figures)
    engine = live.database_url.split(":")[0]

    page = new_page()
    sign_in(page, live)
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Usage", level=1)).to_be_visible()
    expect(page.locator("#total-cost")).to_have_text(usd(cost))
    expect(page.locator("#total-requests")).to_have_text("4")
    expect(page.locator("#total-input")).to_have_text(f"{sum(f[1] for f in figures):,}")
    expect(page.locator("#total-output")).to_have_text(f"{sum(f[2] for f in figures):,}")
    legend = page.locator("#usage-legend")
    table = page.locator("#usage-table")
    for model, parts in ((MINI, figures[0::2]), (SONNET, figures[1::2])):
        row = legend.get_by_role("row", name=model)
        expect(row.locator("td")).to_have_text(
            [
                usd(sum(f[0] for f in parts)),
                "2",
                f"{sum(f[1] for f in parts):,}",
                f"{sum(f[2] for f in parts):,}",
            ]
        )
        expect(table).to_contain_text(model)
    # Two charts, each an image with a text alternative; the bars carry one colour per model.
    expect(page.get_by_role("img", name=re.compile("^Cost per day, by model"))).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("^Tokens"))).to_be_visible()
    fills = page.locator("#cost-chart rect.segment").evaluate_all(
        "bars => [...new Set(bars.map(b => b.getAttribute('fill')))]"
    )
    assert len(fills) == 2
    expect(page.locator("#cost-chart-narrow")).to_be_hidden()
    # Drawn as the builder sized them (no stylesheet rule overrides a segment's geometry).
    drawn = page.locator("#cost-chart").evaluate(
        """svg => { const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
            return [...svg.querySelectorAll('rect.segment')].map(r =>
                [r.getBoundingClientRect().height, Number(r.getAttribute('height')) * scale]); }"""
    )
    assert all(abs(shown - meant) < 0.5 for shown, meant in drawn), drawn
    assert usd(cost) in (page.locator("#cost-chart desc").text_content() or "")
    screenshot(page, f"usage-by-model-desktop-{engine}")
    check_accessibility(page)

    page.get_by_role("link", name="By provider").click()
    expect(page).to_have_url(re.compile(r"split=provider"))
    expect(legend.get_by_role("rowheader")).to_have_text(["anthropic", "openai"])
    expect(page.locator("#total-cost")).to_have_text(usd(cost))
    _desktop_and_phone(page, f"usage-by-provider-{engine}")

    page.get_by_label("Range", exact=True).select_option("24h")
    page.get_by_label("One bar per").select_option("hour")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"range=24h&bucket=hour&split=provider"))
    expect(page.get_by_role("img", name=re.compile("^Cost per hour, by provider"))).to_be_visible()
    expect(table.locator("td.when").first).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:00$"))
    expect(page.locator("#total-cost")).to_have_text(usd(cost))
    expect(page.locator("#cost-chart rect.segment")).to_have_count(2)  # this hour: two providers
    _desktop_and_phone(page, f"usage-by-hour-{engine}")

    phone = new_page(PHONE)
    sign_in(phone, live)
    phone.goto(f"{live.dashboard}/{live.account.account_id}/usage")
    expect(phone.locator("#total-cost")).to_have_text(usd(cost))
    # Phones get the narrow drawing of each chart (legible text, nothing scrolling sideways).
    expect(phone.locator("#cost-chart-narrow")).to_be_visible()
    expect(phone.locator("#cost-chart")).to_be_hidden()
    _no_sideways_scroll(phone)
    screenshot(phone, f"usage-by-model-phone-{engine}")
    check_accessibility(phone)


def test_unknown_url_values_fall_back_with_a_message_and_no_usage_says_what_to_do(
    live_sqlite: Live, new_page: NewPage
) -> None:
    page = new_page()
    sign_in(page, live_sqlite)
    usage = f"{live_sqlite.dashboard}/{live_sqlite.account.account_id}/usage"
    response = page.goto(f"{usage}?range=1y&bucket=minute&split=%3Cb%3Ecolour")
    assert response is not None and response.status == 400
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("There is no range '1y': showing the last 7 days.")
    expect(alert).to_contain_text("There is no bucket size 'minute': showing one bar per day.")
    expect(alert).to_contain_text("There is no split '<b>colour'")  # shown as text, escaped
    expect(page.get_by_label("Range", exact=True)).to_have_value("7d")
    expect(page.get_by_label("One bar per")).to_have_value("day")
    expect(page.locator("#usage-empty")).to_contain_text("No usage in this range")
    expect(page.locator("#usage-endpoint")).to_have_text(
        f"POST {live_sqlite.url}/v1/{live_sqlite.account.account_id}/default"
        "/compat/chat/completions"
    )
    expect(page.locator("#total-cost")).to_have_text("$0.00")
    expect(page.locator("#cost-chart")).to_have_count(0)
    _desktop_and_phone(page, "usage-bad-input-empty")
    # A good URL is a 200 with no message; a read-only token sees the page too.
    reader = new_page()
    sign_in(reader, live_sqlite, live_sqlite.read_only)
    response = reader.goto(f"{usage}?range=30d&bucket=hour")
    assert response is not None and response.status == 200
    expect(reader.get_by_role("alert")).to_have_count(0)
    expect(reader.locator("#usage-period")).to_contain_text("one bar per hour")
