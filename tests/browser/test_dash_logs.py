"""The Logs pages in a real browser: requests sent through the gateway (Unified Billing, against
the simulator) show up in the table, the filters narrow it to exactly the matching logs, paging
walks through them, one log opens with its bodies and takes feedback (read back through the
Logs API), bad filters are refused inline, and a read-only token cannot give feedback."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PHONE, Live, check_accessibility, screenshot, sign_in
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS

pytestmark = pytest.mark.xdist_group("browser")

NewPage = Callable[..., Page]


def _chat(
    live: Live,
    model: str = "gpt-4o-mini",
    metadata: dict[str, Any] | None = None,
    *,
    gateway: str = "default",
    token: str | None = None,
    account_id: str | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> str:
    """One Unified Billing chat request through the gateway; its log id (cf-aig-log-id)."""
    headers = {"cf-aig-authorization": f"Bearer {token or live.account.token}", **(headers or {})}
    if metadata is not None:
        headers["cf-aig-metadata"] = orjson.dumps(metadata).decode()
    response = httpx.post(
        f"{live.url}/v1/{account_id or live.account.account_id}/{gateway}/openai/chat/completions",
        headers=headers,
        json={"model": model, "messages": [{"role": "user", "content": f"hello {model}"}]},
        timeout=30,
    )
    assert response.status_code == status, response.text
    return response.headers["cf-aig-log-id"]


def _logs_api(live: Live, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    url = f"{live.url}/client/v4/accounts/{live.account.account_id}/ai-gateway/gateways{path}"
    headers = {"authorization": f"Bearer {token or live.account.token}"}
    response = httpx.request(method, url, headers=headers, timeout=30, **kw)
    assert response.status_code == 200, response.text
    return response.json()


def _wait_for_logs(live: Live, count: int, gateway: str = "default") -> list[str]:
    """The gateway's log ids, newest first, once the batch writer has stored `count` of them."""
    deadline = time.monotonic() + 10
    while True:
        listed = _logs_api(live, "GET", f"/{gateway}/logs", params={"per_page": 50})
        if listed["result_info"]["total_count"] >= count or time.monotonic() > deadline:
            assert listed["result_info"]["total_count"] == count
            return [log["id"] for log in listed["result"]]
        time.sleep(0.05)  # a poll interval: the writer flushes every 200 ms


def _log(live: Live, log_id: str, gateway: str = "default") -> dict[str, Any]:
    result: dict[str, Any] = _logs_api(live, "GET", f"/{gateway}/logs/{log_id}")["result"]
    return result


def _shown_ids(page: Page, count: int) -> list[str]:
    rows = page.locator("#logs-table tbody tr")
    expect(rows).to_have_count(count)
    return [rows.nth(i).get_attribute("data-log-id") or "" for i in range(count)]


def _apply(page: Page, **fields: str) -> int:
    """Fill the filter form (empty clears a field), apply it; the response's status."""
    for name, value in fields.items():
        target = page.locator(f"#f-{name}")
        if target.evaluate("e => e.tagName") == "SELECT":
            target.select_option(value)
        else:
            target.fill(value)
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Apply filters").click()
    response = navigation.value
    assert response is not None
    return response.status


def test_filters_show_exactly_the_matching_logs_and_paging_walks_through_them(
    live: Live, new_page: NewPage
) -> None:
    alice = _chat(live, metadata={"user": "alice", "team": "search"})
    bob = _chat(live, metadata={"user": "bob"})
    alice_4o = _chat(live, "gpt-4o", {"user": "alice"})
    carol = _chat(live, metadata={"name": "alice", "user": "carol"})  # alice, but not as user
    failed = _chat(live, "no-such-model-anywhere", status=400)
    newest_first = _wait_for_logs(live, 5)
    assert newest_first == [failed, carol, alice_4o, bob, alice]

    page = new_page()
    sign_in(page, live)
    page.get_by_role("link", name="Logs").click()
    assert _shown_ids(page, 5) == newest_first
    expect(page.locator("#logs-total")).to_contain_text("5 logs in this gateway")
    first = page.locator(f"tr[data-log-id='{alice}']")
    expect(first).to_contain_text("Unified Billing")
    expect(first).to_contain_text("user=alice")
    expect(first).to_contain_text("Success 200")
    expect(page.locator(f"tr[data-log-id='{failed}']")).to_contain_text("Error 400")
    engine = live.database_url.split(":")[0]
    screenshot(page, f"logs-table-desktop-{engine}")
    check_accessibility(page)

    assert _apply(page, model="gpt-4o-mini") == 200
    assert _shown_ids(page, 3) == [carol, bob, alice]
    expect(page.locator("#logs-total")).to_contain_text("3 logs match these filters")
    assert _apply(page, model="", metadata="user=alice") == 200
    assert _shown_ids(page, 2) == [alice_4o, alice]
    assert _apply(page, metadata="user=alice", model="gpt-4o") == 200
    assert _shown_ids(page, 1) == [alice_4o]
    assert _apply(page, model="", metadata="", status="error") == 200
    assert _shown_ids(page, 1) == [failed]
    assert _apply(page, status="success", min_cost="0.000001") == 200
    assert _shown_ids(page, 4) == [carol, alice_4o, bob, alice]
    assert _apply(page, metadata="user=nobody") == 200
    expect(page.locator("#logs-empty")).to_contain_text("No logs match these filters")
    screenshot(page, f"logs-no-match-desktop-{engine}")

    # Pages of 2 (the form offers 25 and 50; the URL takes 1 to 50), newest first.
    page.goto(f"{live.dashboard}/{live.account.account_id}/logs?per_page=2")
    seen = _shown_ids(page, 2)
    expect(page.locator("#page-of")).to_have_text("Page 1 of 3")
    expect(page.locator("#logs-total")).to_contain_text("showing 1–2")
    pager = page.get_by_role("navigation", name="Pages of logs")
    pager.get_by_role("link", name="Next").click()
    expect(page.locator("#page-of")).to_have_text("Page 2 of 3")
    seen += _shown_ids(page, 2)
    pager.get_by_role("link", name="Next").click()
    expect(page.locator("#page-of")).to_have_text("Page 3 of 3")
    seen += _shown_ids(page, 1)
    expect(pager.get_by_role("link", name="Next")).to_have_count(0)
    assert seen == newest_first
    pager.get_by_role("link", name="Previous").click()
    expect(page.locator("#page-of")).to_have_text("Page 2 of 3")
    assert _shown_ids(page, 2) == newest_first[2:4]
    expect(page.locator("#f-per_page")).to_have_value("2")
    page.goto(f"{live.dashboard}/{live.account.account_id}/logs?per_page=2&page=9")
    expect(page.locator("#logs-empty")).to_contain_text("Page 9 is past the end: 5 logs fill 3")
    page.get_by_role("link", name="Go to the first page").click()
    assert _shown_ids(page, 2) == newest_first[:2]


def test_a_log_opens_with_its_bodies_and_takes_feedback(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    log_id = _chat(live, metadata={"user": "alice", "tier": 2})
    _wait_for_logs(live, 1)

    page = new_page()
    sign_in(page, live)
    page.goto(f"{live.dashboard}/{live.account.account_id}/logs")
    page.locator(f"tr[data-log-id='{log_id}'] a").click()
    expect(page).to_have_url(f"{live.dashboard}/{live.account.account_id}/logs/default/{log_id}")
    expect(page.get_by_role("heading", level=1)).to_contain_text(log_id)
    request_body = page.locator("#request-body pre")
    expect(request_body).to_contain_text('"content": "hello gpt-4o-mini"')  # pretty-printed
    expect(request_body).to_contain_text('\n  "model": "gpt-4o-mini"')
    expect(page.locator("#response-body pre")).to_contain_text('"choices": [')
    expect(page.locator("#metadata")).to_contain_text("tier")
    expect(page.locator("#log-facts")).to_contain_text("Unified Billing")
    expect(page.locator("#saved-feedback")).to_have_text("None yet")
    screenshot(page, "logs-detail-desktop")
    check_accessibility(page)

    page.get_by_role("button", name="Thumbs up").click()
    expect(page.get_by_role("status")).to_have_text("Feedback saved.")
    expect(page.locator("#saved-feedback")).to_have_text("Thumbs up")
    assert _log(live, log_id)["feedback"] == 1

    score = page.get_by_label("Score (0 to 100)")
    score.fill("150")
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Save score").click()
    assert navigation.value is not None and navigation.value.status == 400
    expect(page.locator("#score-error")).to_contain_text("whole number from 0 to 100")
    expect(score).to_have_value("150")
    assert _log(live, log_id)["score"] is None
    screenshot(page, "logs-detail-bad-score")
    check_accessibility(page)
    score.fill("85")
    page.get_by_role("button", name="Save score").click()
    expect(page.locator("#saved-score")).to_have_text("85")
    saved = _log(live, log_id)
    assert (saved["feedback"], saved["score"]) == (1, 85.0)

    # A CSRF token from this session, replayed from another one, changes nothing.
    mine = page.locator("#feedback-form input[name=csrf_token]").get_attribute("value") or ""
    other = new_page()
    sign_in(other, live)
    replayed = other.request.post(
        f"{page.url.split('?')[0]}/feedback", form={"csrf_token": mine, "action": "down"}
    )
    assert replayed.status == 403 and "This form was not accepted" in replayed.text()
    assert _log(live, log_id)["feedback"] == 1
    page.get_by_role("button", name="Clear feedback").click()
    expect(page.get_by_role("status")).to_have_text("Feedback cleared.")
    expect(page.locator("#saved-feedback")).to_have_text("None yet")
    assert _log(live, log_id)["feedback"] is None

    phone = new_page(PHONE)
    sign_in(phone, live)
    phone.goto(page.url)
    overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the log scrolls sideways by {overflow}px at 390 px"
    screenshot(phone, "logs-detail-phone")
    check_accessibility(phone)
    phone.goto(f"{live.dashboard}/{live.account.account_id}/logs")
    overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the table page scrolls sideways by {overflow}px at 390 px"
    screenshot(phone, "logs-table-phone")
    check_accessibility(phone)


def test_unknown_or_foreign_logs_and_gateways_are_404_pages(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    mine = _chat(live)
    theirs = _chat(live, token=live.other.token, account_id=live.other.account_id)
    _logs_api(live, "POST", "", json={"id": "second", **REQUIRED_GATEWAY_FIELDS})
    _wait_for_logs(live, 1)

    page = new_page()
    sign_in(page, live)
    base = f"{live.dashboard}/{live.account.account_id}/logs"
    for path, words in (
        (f"/default/{theirs}", f"There is no log '{theirs}' in gateway 'default'"),
        (f"/second/{mine}", f"There is no log '{mine}' in gateway 'second'"),
        ("/default/not-a-log", "There is no log 'not-a-log'"),
        (f"/no-such-gateway/{mine}", "This account has no gateway 'no-such-gateway'"),
        ("?gateway=no-such-gateway", "This account has no gateway 'no-such-gateway'"),
    ):
        response = page.goto(base + path)
        assert response is not None and response.status == 404, path
        expect(page.get_by_role("alert")).to_contain_text(words)
    screenshot(page, "logs-not-found")
    check_accessibility(page)
    page.goto(base)
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    posted = page.request.post(
        f"{base}/default/{theirs}/feedback", form={"csrf_token": csrf, "action": "up"}
    )
    assert posted.status == 404
    other = httpx.get(
        f"{live.url}/client/v4/accounts/{live.other.account_id}/ai-gateway/gateways/default"
        f"/logs/{theirs}",
        headers={"authorization": f"Bearer {live.other.token}"},
    )
    assert other.status_code == 200 and other.json()["result"]["feedback"] is None


def test_bad_filters_are_refused_inline_and_list_nothing(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    _chat(live)
    _wait_for_logs(live, 1)
    page = new_page()
    sign_in(page, live)
    page.goto(f"{live.dashboard}/{live.account.account_id}/logs")
    _shown_ids(page, 1)
    cases = [
        ({"min_cost": "abc"}, "min_cost", "must be a number of dollars"),
        ({"min_cost": "-1"}, "min_cost", "cannot be negative"),
        ({"min_cost": "", "from": "2025-03-02", "to": "2025-03-01"}, "to", "before the start"),
        ({"from": "", "to": "", "metadata": "user"}, "metadata", "as key=value"),
    ]
    for fields, field, message in cases:
        assert _apply(page, **fields) == 400
        expect(page.locator(f"#f-{field}-error")).to_contain_text(message)
        expect(page.locator(f"#f-{field}")).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#filter-errors")).to_contain_text("no logs are listed")
        expect(page.locator("#logs-table")).to_have_count(0)
        value = fields[field]
        expect(page.locator(f"#f-{field}")).to_have_value(value)
    screenshot(page, "logs-bad-filter-desktop")
    check_accessibility(page)
    phone = new_page(PHONE)
    sign_in(phone, live)
    response = phone.goto(page.url)
    assert response is not None and response.status == 400
    expect(phone.locator("#f-metadata-error")).to_be_visible()
    screenshot(phone, "logs-bad-filter-phone")
    assert _apply(page, metadata="") == 200
    _shown_ids(page, 1)


def test_a_read_only_token_sees_no_feedback_control_and_cannot_post_it(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    log_id = _chat(live, headers={"cf-aig-collect-log-payload": "false"})
    _wait_for_logs(live, 1)
    page = new_page()
    sign_in(page, live, live.read_only)
    response = page.goto(f"{live.dashboard}/{live.account.account_id}/logs/default/{log_id}")
    assert response is not None and response.status == 200
    expect(page.locator("#request-note")).to_contain_text("Not collected")
    expect(page.locator("#response-note")).to_contain_text("cf-aig-collect-log-payload: false")
    expect(page.locator("#request-body pre")).to_have_count(0)
    expect(page.locator("#feedback")).to_contain_text("needs the edit permission")
    expect(page.locator("#feedback-form")).to_have_count(0)
    expect(page.locator("#score-form")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("Thumbs|score"))).to_have_count(0)
    screenshot(page, "logs-detail-read-only")
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    posted = page.request.post(
        f"{page.url}/feedback", form={"csrf_token": csrf or "", "action": "up"}
    )
    assert posted.status == 403
    assert "lacks the &#39;edit&#39; permission" in posted.text()
    assert _log(live, log_id)["feedback"] is None


def test_the_gateway_selector_and_the_empty_states(live_sqlite: Live, new_page: NewPage) -> None:
    live = live_sqlite
    page = new_page()
    sign_in(page, live)
    page.get_by_role("link", name="Logs").click()
    expect(page.locator("#logs-empty")).to_contain_text("This account has no gateway yet")
    expect(page.locator("#first-request")).to_contain_text(
        f"/v1/{live.account.account_id}/default/openai/chat/completions"
    )
    screenshot(page, "logs-empty-desktop")
    check_accessibility(page)

    _logs_api(live, "POST", "", json={"id": "quiet", **REQUIRED_GATEWAY_FIELDS})
    page.reload()
    expect(page.locator("#f-gateway")).to_have_value("quiet")  # the only one
    expect(page.locator("#logs-empty")).to_contain_text("No logs in this gateway yet")
    expect(page.locator("#first-request")).to_contain_text("/quiet/openai/chat/completions")
    screenshot(page, "logs-empty-gateway-desktop")
    check_accessibility(page)

    log_id = _chat(live)  # creates `default`, which the page then opens on
    _wait_for_logs(live, 1)
    page.reload()
    expect(page.locator("#f-gateway")).to_have_value("default")
    assert _shown_ids(page, 1) == [log_id]
    assert _apply(page, gateway="quiet") == 200
    expect(page.locator("#logs-table")).to_have_count(0)
    expect(page.locator("#results-title")).to_have_text("Gateway quiet")
