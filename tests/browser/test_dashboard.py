"""The dashboard in a real browser: sign-in, the overview's figures, sessions, CSRF, permissions,
the account spending limit, and the layout at 1280 px and 390 px, with axe-core on every page."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PHONE, Live, check_accessibility, screenshot, sign_in
from tollgate import money
from tollgate.dashboard.core import CSRF_MESSAGE, SECTIONS
from tollgate.dashboard.format import usd
from tollgate.dashboard.sessions import IDLE_SECONDS

# One xdist worker runs every browser test back to back (`make test` uses --dist loadgroup):
# see the `browser` fixture.
pytestmark = pytest.mark.xdist_group("browser")

NewPage = Callable[..., Page]


def _api(live: Live, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    url = f"{live.url}/client/v4/accounts/{live.account.account_id}/ai-gateway/billing{path}"
    headers = {"authorization": f"Bearer {token or live.account.token}"}
    response = httpx.request(method, url, headers=headers, timeout=30, **kw)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def _spend(live: Live, requests: int) -> int:
    """Unified Billing chat requests through the gateway; their total cost in nanos."""
    total = 0
    url = f"{live.url}/v1/{live.account.account_id}/default/openai/chat/completions"
    for n in range(requests):
        response = httpx.post(
            url,
            headers={"cf-aig-authorization": f"Bearer {live.account.token}"},
            json={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"hello number {n}"}],
                "max_tokens": 64,
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text
        total += money.from_dollars(response.headers["cf-aig-cost"])
    return total


def _limit(live: Live) -> dict[str, Any]:
    result: dict[str, Any] = _api(live, "GET", "/spending-limit")
    return result


def test_sign_in_shows_balance_spend_and_forecast_then_sign_out(
    live: Live, new_page: NewPage
) -> None:
    _api(
        live,
        "POST",
        "/spending-limit",
        json={"amount": 1000, "duration": "daily", "strategy": "fixed"},
    )
    cost = _spend(live, 3)  # after the limit is set, so its counter sees them too
    assert cost > 0
    balance = _api(live, "GET", "/credit-balance")
    available = money.from_dollars(str(balance["balance_exact"]))
    assert available == money.from_cents(2_500) - cost

    page = new_page()
    sign_in(page, live)
    expect(page).to_have_url(f"{live.dashboard}/{live.account.account_id}")
    expect(page.get_by_role("heading", name="Credits Available")).to_be_visible()
    expect(page.locator("#balance")).to_have_text(usd(available))
    for figure in ("#spend-today", "#spend-week", "#spend-month"):
        expect(page.locator(figure)).to_have_text(usd(cost))
    expect(page.locator("#limit-status")).to_contain_text("$10.00")
    expect(page.locator("#limit-status")).to_contain_text(f"{usd(cost)} spent today (UTC)")
    expect(page.locator("#payment-method")).to_contain_text("None on file")
    expect(page.locator("#auto-topup")).to_contain_text("Off")
    days = available * 7 // cost
    expect(page.locator("#forecast")).to_contain_text(
        "more than a year" if days > 365 else f"about {days} days"
    )
    cookie = next(c for c in page.context.cookies() if c["name"] == "tollgate_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/dashboard"
    assert live.account.token not in cookie["value"]
    screenshot(page, f"overview-desktop-{live.database_url.split(':')[0]}")
    check_accessibility(page)

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    page.goto(f"{live.dashboard}/{live.account.account_id}")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in"))


def test_new_account_overview_says_what_to_do_next(live_sqlite: Live, new_page: NewPage) -> None:
    page = new_page()
    sign_in(page, live_sqlite)
    expect(page.locator("#balance")).to_have_text("$25.00")
    expect(page.locator("#forecast")).to_contain_text("No usage in the last 7 days")
    expect(page.locator("#limit-status")).to_contain_text("No spending limit")
    expect(page.locator("#limit-status").get_by_role("link", name="Set a limit")).to_be_visible()
    expect(page.locator("#payment-method")).to_contain_text("Add a card")
    screenshot(page, "overview-empty-desktop")


def test_bad_tokens_are_refused_with_a_clear_message(live_sqlite: Live, new_page: NewPage) -> None:
    page = new_page()
    sign_in(page, live_sqlite, "tg_not-a-real-token")
    expect(page.get_by_role("alert")).to_contain_text("The API token is not valid")
    check_accessibility(page)
    screenshot(page, "sign-in-bad-token")
    sign_in(page, live_sqlite, live_sqlite.run_only)
    expect(page.get_by_role("alert")).to_contain_text("lacks the 'read' permission")
    page.goto(f"{live_sqlite.dashboard}/{live_sqlite.account.account_id}")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in$"))


def test_an_expired_session_returns_to_sign_in_with_a_message(
    live_sqlite: Live, new_page: NewPage
) -> None:
    page = new_page()
    sign_in(page, live_sqlite)
    expect(page.locator("#balance")).to_be_visible()
    sessions = live_sqlite.app.dashboard.sessions
    sessions.clock = lambda: time.monotonic() + IDLE_SECONDS + 60
    page.reload()
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in\?notice=expired"))
    expect(page.get_by_role("status")).to_contain_text("Your session expired")
    screenshot(page, "sign-in-expired")
    sign_in(page, live_sqlite)  # a new session works at once
    expect(page.locator("#balance")).to_be_visible()


def test_a_csrf_token_from_another_session_changes_nothing(
    live_sqlite: Live, new_page: NewPage
) -> None:
    limit_url = f"{live_sqlite.dashboard}/{live_sqlite.account.account_id}/limit"
    theirs = new_page()
    sign_in(theirs, live_sqlite)
    theirs.goto(limit_url)
    foreign = theirs.locator("#limit-form input[name=csrf_token]").get_attribute("value")
    mine = new_page()
    sign_in(mine, live_sqlite)
    mine.goto(limit_url)
    mine.locator("#limit-form input[name=csrf_token]").evaluate(
        "(input, value) => { input.value = value; }", foreign
    )
    mine.get_by_label(re.compile("Amount")).fill("50")
    mine.get_by_role("button", name="Save limit").click()
    expect(mine.get_by_role("alert")).to_have_text(CSRF_MESSAGE)
    assert _limit(live_sqlite) == {"config": {}, "enabled": False}
    screenshot(mine, "limit-csrf-refused")
    # The same page, reloaded, carries its own token and works.
    mine.goto(limit_url)
    mine.get_by_label(re.compile("Amount")).fill("50")
    mine.get_by_role("button", name="Save limit").click()
    expect(mine.get_by_role("status")).to_have_text("Spending limit saved.")
    assert _limit(live_sqlite)["config"] == {
        "amount": 5000,
        "duration": "monthly",
        "strategy": "fixed",
    }


def test_another_accounts_pages_are_refused(live_sqlite: Live, new_page: NewPage) -> None:
    page = new_page()
    sign_in(page, live_sqlite)
    for path in ("", "/limit", "/credits"):
        response = page.goto(f"{live_sqlite.dashboard}/{live_sqlite.other.account_id}{path}")
        assert response is not None and response.status == 403
        expect(page.get_by_role("alert")).to_contain_text("belongs to another account")
    assert "Someone Else" not in page.content()
    check_accessibility(page)
    screenshot(page, "forbidden-other-account")


def test_a_read_only_token_sees_no_edit_controls_and_cannot_post(
    live_sqlite: Live, new_page: NewPage
) -> None:
    page = new_page()
    sign_in(page, live_sqlite, live_sqlite.read_only)
    expect(page.locator("#balance")).to_be_visible()
    expect(page.get_by_role("link", name="Manage")).to_have_count(0)
    expect(page.get_by_role("link", name="Set a limit")).to_have_count(0)
    expect(page.locator(".perm")).to_have_text("read")
    page.goto(f"{live_sqlite.dashboard}/{live_sqlite.account.account_id}/limit")
    expect(page.get_by_role("heading", name="Spending limit", level=1)).to_be_visible()
    expect(page.locator("#limit-form")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("Save|Remove"))).to_have_count(0)
    screenshot(page, "limit-read-only")
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    response = page.request.post(
        f"{live_sqlite.dashboard}/{live_sqlite.account.account_id}/limit",
        form={
            "csrf_token": csrf or "",
            "action": "save",
            "amount": "20",
            "duration": "daily",
            "strategy": "fixed",
        },
    )
    assert response.status == 403
    assert "lacks the &#39;edit&#39; permission" in response.text()
    assert _limit(live_sqlite)["enabled"] is False


def test_the_spending_limit_form_refuses_bad_amounts_inline(
    live_sqlite: Live, new_page: NewPage
) -> None:
    page = new_page()
    sign_in(page, live_sqlite)
    page.get_by_role("link", name="Spending limit").click()
    check_accessibility(page)
    amount = page.get_by_label(re.compile("Amount"))
    cases = {
        "-5": "must be more than $0",
        "abc": "must be a number of dollars",
        "0.50": "must be from $1.00 to $10,000,000.00",
        "1.005": "at most two decimal places",
    }
    for typed, message in cases.items():
        amount.fill(typed)
        page.get_by_role("button", name="Save limit").click()
        expect(page.locator("#amount-error")).to_contain_text(message)
        expect(amount).to_have_value(typed)
        assert _limit(live_sqlite)["enabled"] is False
    screenshot(page, "limit-bad-amount")
    check_accessibility(page)
    amount.fill("$1,234.50")
    page.get_by_label("Period").select_option("weekly")
    page.get_by_label("Window").select_option("sliding")
    page.get_by_role("button", name="Save limit").click()
    expect(page.get_by_role("status")).to_have_text("Spending limit saved.")
    expect(page.locator("#limit-status")).to_contain_text("$1,234.50")
    expect(page.locator("#limit-status")).to_contain_text("in the last 7 days")
    assert _limit(live_sqlite)["config"] == {
        "amount": 123_450,
        "duration": "weekly",
        "strategy": "sliding",
    }
    screenshot(page, "limit-set-desktop")
    page.get_by_role("button", name="Remove the limit").click()
    expect(page.get_by_role("status")).to_contain_text("Spending limit removed")
    assert _limit(live_sqlite)["enabled"] is False


def test_every_page_fits_a_phone(live_sqlite: Live, new_page: NewPage) -> None:
    _spend(live_sqlite, 1)
    page = new_page(PHONE)
    sign_in(page, live_sqlite)
    base = f"{live_sqlite.dashboard}/{live_sqlite.account.account_id}"
    for name, path in (
        ("overview", ""),
        ("limit", "/limit"),
        ("credits", "/credits"),
        ("tokens", "/tokens"),
    ):
        page.goto(base + path)
        expect(page.get_by_role("navigation", name="Sections")).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} scrolls sideways by {overflow}px at 390 px"
        screenshot(page, f"{name}-phone")
        check_accessibility(page)
    page.goto(f"{live_sqlite.url}/dash")
    expect(page).to_have_url(base)
    screenshot(page, "overview-phone-after-redirect")


def test_every_section_in_the_navigation_opens_its_page(
    live_sqlite: Live, new_page: NewPage
) -> None:
    page = new_page()
    sign_in(page, live_sqlite)
    base = f"{live_sqlite.dashboard}/{live_sqlite.account.account_id}"
    for path, title in SECTIONS:
        page.get_by_role("navigation", name="Sections").get_by_role("link", name=title).click()
        expect(page).to_have_url(f"{base}/{path}" if path else base)
        current = page.get_by_role("navigation", name="Sections").locator("[aria-current=page]")
        expect(current).to_have_text(title)
        expect(page.locator("main")).not_to_contain_text("Not built yet")
    response = page.goto(f"{base}/nope")
    assert response is not None and response.status == 404
    page.goto(f"{live_sqlite.dashboard}/sign-in")
    expect(page).to_have_url(f"{live_sqlite.dashboard}/{live_sqlite.account.account_id}")
