"""The Gateways pages in a real browser: create a gateway, change its settings and spend-limit
rules and see each change through the management API (and the spend rule count a real Unified
Billing request), copy its URLs, delete it behind a confirm step; bad input, a replayed CSRF
token, a read-only token and unknown gateways change nothing."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PHONE, Live, check_accessibility, screenshot, sign_in
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS
from tollgate import money
from tollgate.dashboard.core import CSRF_MESSAGE
from tollgate.dashboard.format import usd

pytestmark = pytest.mark.xdist_group("browser")

NewPage = Callable[..., Page]


def _api(
    live: Live, method: str, path: str = "", token: str | None = None, **kw: Any
) -> httpx.Response:
    """The management API's gateways routes, with the account's full token unless told."""
    url = f"{live.url}/client/v4/accounts/{live.account.account_id}/ai-gateway/gateways{path}"
    headers = {"authorization": f"Bearer {token or live.account.token}"}
    return httpx.request(method, url, headers=headers, timeout=30, **kw)


def _gateway(live: Live, gateway_id: str) -> dict[str, Any]:
    response = _api(live, "GET", f"/{gateway_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["result"]
    return result


def _create(live: Live, gateway_id: str) -> dict[str, Any]:
    response = _api(live, "POST", json={"id": gateway_id, **REQUIRED_GATEWAY_FIELDS})
    assert response.status_code == 200, response.text
    return _gateway(live, gateway_id)


def _chat(live: Live, gateway_id: str) -> int:
    """One Unified Billing chat request through the gateway's Unified API; its cost in nanos."""
    response = httpx.post(
        f"{live.url}/v1/{live.account.account_id}/{gateway_id}/compat/chat/completions",
        headers={"cf-aig-authorization": f"Bearer {live.account.token}"},
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return money.from_dollars(response.headers["cf-aig-cost"])


def _fits_phone(page: Page, name: str) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name} scrolls sideways by {overflow}px at 390 px"
    screenshot(page, f"gateways-{name}-phone")
    check_accessibility(page)


def test_create_configure_limit_spend_and_delete_a_gateway(live: Live, new_page: NewPage) -> None:
    """On both engines: the rule's counted spend is a sum the database makes."""
    account_id = live.account.account_id
    page = new_page()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, live)
    page.get_by_role("link", name="Gateways").click()
    expect(page.locator("#no-gateways")).to_contain_text("No gateways yet")
    screenshot(page, "gateways-empty-desktop")
    check_accessibility(page)

    page.get_by_label("Gateway id").fill("team-a")
    page.get_by_role("button", name="Create gateway").click()
    settings_url = f"{live.dashboard}/{account_id}/gateways/team-a"
    expect(page).to_have_url(f"{settings_url}?done=created")
    expect(page.get_by_role("status")).to_contain_text("Gateway created")
    created = _gateway(live, "team-a")
    assert created["zdr"] is False and created["spend_limits"] == {"enabled": False, "rules": []}
    assert created["collect_logs"] is True and created["authentication"] is True

    # The URLs, built from the address the browser used; the copy button copies the exact text.
    root = f"{live.url}/v1/{account_id}/team-a"
    expect(page.locator("#url-compat")).to_have_text(f"{root}/compat")
    expect(page.locator("#url-native")).to_have_text(f"{root}/openai")
    expect(page.locator("#url-universal")).to_have_text(root)
    expect(page.locator("#url-provider-anthropic")).to_have_text(f"{root}/anthropic")
    screenshot(page, "gateways-settings-desktop")
    check_accessibility(page)  # before the copy: "Copied" briefly replaces the button's label
    copy = page.get_by_role("button", name="Copy the OpenAI-compatible base URL")
    assert copy.get_attribute("data-copy") == "#url-compat"
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == f"{root}/compat"

    # The curl example works as pasted (with the token in the variable it names). This request
    # also puts the gateway in the data plane's cache, so the changes below must drop it.
    curl = page.locator("#curl-example").inner_text()
    ran = subprocess.run(
        ["bash", "-c", curl + " --silent --show-error --fail-with-body"],
        env={**os.environ, "TG_TOKEN": live.account.token},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ran.returncode == 0, ran.stderr + ran.stdout
    assert '"choices"' in ran.stdout

    page.get_by_label("Use Zero Data Retention").check()
    page.get_by_label("Requests allowed").fill("100")
    page.get_by_label("Interval (seconds)").fill("60")
    page.get_by_label("Rate limit window").select_option("sliding")
    page.get_by_label("Maximum attempts").fill("3")
    page.get_by_label("Delay between attempts (milliseconds)").fill("250")
    page.get_by_label("Backoff").select_option("exponential")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status")).to_contain_text("Settings saved")
    saved = _gateway(live, "team-a")
    assert saved["zdr"] is True
    assert (saved["rate_limiting_limit"], saved["rate_limiting_interval"]) == (100, 60)
    assert saved["rate_limiting_technique"] == "sliding"
    assert (saved["retry_max_attempts"], saved["retry_delay"]) == (3, 250)
    assert saved["retry_backoff"] == "exponential"
    unchanged = ("collect_logs", "authentication", "cache_ttl", "byok_only", "spend_limits")
    assert {k: saved[k] for k in unchanged} == {k: created[k] for k in unchanged}

    # A spend rule from the editor, on at once: the next request through the gateway counts.
    expect(page.locator("#no-rules")).to_be_visible()
    page.get_by_label("Limit (US dollars)").fill("5")
    page.get_by_label("Window", exact=True).select_option("86400")
    page.get_by_label("Window type").select_option("fixed")
    page.get_by_label("Only these providers (optional)").fill("openai")
    expect(page.get_by_label("Turn spend limits on")).to_be_checked()
    page.get_by_role("button", name="Add rule").click()
    expect(page.get_by_role("status")).to_contain_text("Spend-limit rule added")
    expect(page.locator("#spend-state")).to_have_text("On")
    assert _gateway(live, "team-a")["spend_limits"] == {
        "enabled": True,
        "rules": [
            {
                "id": "rule-1",
                "enabled": True,
                "limit": 5,
                "limitType": "cost",
                "window": 86400,
                "technique": "fixed",
                "provider": {"mode": "filter", "values": ["openai"]},
            }
        ],
    }
    cost = _chat(live, "team-a")
    assert cost > 0
    page.reload()
    rule_row = page.locator("#rules tbody tr").first
    expect(rule_row).to_contain_text("rule-1")
    expect(rule_row).to_contain_text("$5.00 per 1 day")
    expect(rule_row).to_contain_text("provider is openai")
    expect(rule_row.locator(".spent")).to_contain_text(f"{usd(cost)} of $5.00")
    screenshot(page, "gateways-settings-rule-desktop")
    check_accessibility(page)

    phone = new_page(PHONE)
    sign_in(phone, live)
    phone.goto(f"{live.dashboard}/{account_id}/gateways")
    expect(phone.locator("#gateway-team-a")).to_contain_text("100 requests per 1 minute")
    _fits_phone(phone, "list")
    phone.goto(settings_url)
    expect(phone.locator("#url-compat")).to_be_visible()
    _fits_phone(phone, "settings")

    page.get_by_role("button", name="Remove rule rule-1").click()
    expect(page.get_by_role("status")).to_contain_text("Spend-limit rule removed")
    assert _gateway(live, "team-a")["spend_limits"] == {"enabled": True, "rules": []}

    page.get_by_role("link", name="Gateways", exact=True).first.click()
    row = page.locator("#gateway-team-a")
    expect(row).to_contain_text("100 requests per 1 minute (sliding)")
    screenshot(page, "gateways-list-desktop")
    check_accessibility(page)
    row.get_by_role("link", name="Delete team-a").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Delete the gateway team-a?")
    expect(page.locator("#delete-consequences")).to_contain_text("its request logs")
    screenshot(page, "gateways-delete-confirm-desktop")
    check_accessibility(page)
    phone.goto(page.url)
    _fits_phone(phone, "delete-confirm")
    assert _api(live, "GET", "/team-a").status_code == 200  # the confirm page deleted nothing
    page.get_by_role("button", name="Delete team-a and its logs").click()
    expect(page.get_by_role("status")).to_have_text("Gateway 'team-a' and its logs were deleted.")
    expect(page.locator("#no-gateways")).to_be_visible()
    gone = _api(live, "GET", "/team-a")
    assert gone.status_code == 404, gone.text


def _post_status(page: Page, click: Callable[[], None]) -> int:
    """Submit a form by `click` and return the status of the page it answered with."""
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        click()
    return answer.value.status


def test_bad_input_is_refused_inline_and_changes_nothing(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live, account_id = live_sqlite, live_sqlite.account.account_id
    before = _create(live, "prod")
    page = new_page()
    sign_in(page, live)
    page.goto(f"{live.dashboard}/{account_id}/gateways")
    for typed, status, message in (
        ("Bad Id!", 400, "lowercase letters, digits"),
        ("über-team", 400, "1 to 64 characters"),
        ("prod", 409, "exists already"),
    ):
        page.get_by_label("Gateway id").fill(typed)
        assert _post_status(page, page.get_by_role("button", name="Create gateway").click) == status
        expect(page.locator("#f-id-error")).to_contain_text(message)
        expect(page.get_by_label("Gateway id")).to_have_value(typed)
    assert [g["id"] for g in _api(live, "GET").json()["result"]] == ["prod"]
    screenshot(page, "gateways-create-refused-desktop")
    check_accessibility(page)

    page.goto(f"{live.dashboard}/{account_id}/gateways/prod")
    page.get_by_label("Use Zero Data Retention").check()  # valid, but the form is refused
    page.get_by_label("Requests allowed").fill("ten")
    page.get_by_label("Maximum attempts").fill("-1")
    page.get_by_label("Delay between attempts (milliseconds)").fill("9000")
    page.get_by_label("Cache time-to-live (seconds)").fill("1.5")
    assert _post_status(page, page.get_by_role("button", name="Save settings").click) == 400
    expect(page.locator("#f-rate_limiting_limit-error")).to_contain_text("whole number")
    expect(page.locator("#f-retry_max_attempts-error")).to_contain_text("from 1 to 5")
    expect(page.locator("#f-retry_delay-error")).to_contain_text("from 0 to 5,000")
    expect(page.locator("#f-cache_ttl-error")).to_contain_text("whole number")
    expect(page.get_by_label("Requests allowed")).to_have_value("ten")
    expect(page.get_by_label("Use Zero Data Retention")).to_be_checked()
    screenshot(page, "gateways-settings-refused-desktop")
    check_accessibility(page)
    page.get_by_label("Requests allowed").fill("10")
    page.get_by_label("Interval (seconds)").fill("0")
    for name, value in (("Maximum attempts", "1"), ("Delay between attempts (milliseconds)", "0")):
        page.get_by_label(name).fill(value)
    page.get_by_label("Cache time-to-live (seconds)").fill("0")
    assert _post_status(page, page.get_by_role("button", name="Save settings").click) == 400
    expect(page.locator("#f-rate_limiting_interval-error")).to_contain_text("set the rate limit")
    assert _gateway(live, "prod") == before

    rule_cases: list[tuple[dict[str, str], str, str]] = [
        ({"amount": "abc"}, "#f-rule_amount-error", "must be a number of dollars"),
        ({"amount": "-5"}, "#f-rule_amount-error", "more than $0"),
        ({"amount": "0.001"}, "#f-rule_amount-error", "two decimal places"),
        ({"window": "other", "seconds": "0"}, "#f-rule_window_seconds-error", "from 1 to"),
        ({"window": "other", "seconds": "-60"}, "#f-rule_window_seconds-error", "from 1 to"),
        ({"window": "other", "seconds": ""}, "#f-rule_window_seconds-error", "Enter the window"),
        ({"technique": "bogus"}, "#f-rule_technique-error", "Choose a window type"),
    ]
    for case, where, message in rule_cases:
        page.goto(f"{live.dashboard}/{account_id}/gateways/prod")
        page.get_by_label("Limit (US dollars)").fill(case.get("amount", "5"))
        page.get_by_label("Window", exact=True).select_option(case.get("window", "86400"))
        page.get_by_label("Other window (seconds)").fill(case.get("seconds", ""))
        if "technique" in case:  # a value the select does not offer: a tampered form
            page.locator("#f-rule_technique option").first.evaluate(
                "(option, value) => { option.value = value; }", case["technique"]
            )
        assert _post_status(page, page.get_by_role("button", name="Add rule").click) == 400
        expect(page.locator(where)).to_contain_text(message)
        expect(page.locator(where)).to_be_in_viewport()  # the answer scrolls to the form
        expect(page.get_by_role("alert")).to_contain_text("The rule was not added")
    screenshot(page, "gateways-rule-refused-desktop")
    check_accessibility(page)
    assert _gateway(live, "prod") == before


def test_csrf_read_only_tokens_and_unknown_gateways_change_nothing(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live, account_id = live_sqlite, live_sqlite.account.account_id
    before = _create(live, "shared")
    settings_url = f"{live.dashboard}/{account_id}/gateways/shared"

    theirs = new_page()
    sign_in(theirs, live)
    theirs.goto(settings_url)
    foreign = theirs.locator("#settings-form input[name=csrf_token]").get_attribute("value")
    mine = new_page()
    sign_in(mine, live)
    mine.goto(settings_url)
    mine.locator("#settings-form input[name=csrf_token]").evaluate(
        "(input, value) => { input.value = value; }", foreign
    )
    mine.get_by_label("Use Zero Data Retention").check()
    assert _post_status(mine, mine.get_by_role("button", name="Save settings").click) == 403
    expect(mine.get_by_role("alert")).to_have_text(CSRF_MESSAGE)
    assert _gateway(live, "shared") == before

    # Unknown, malformed and another account's gateways are all "no such gateway" (404).
    other = httpx.post(
        f"{live.url}/client/v4/accounts/{live.other.account_id}/ai-gateway/gateways",
        headers={"authorization": f"Bearer {live.other.token}"},
        json={"id": "theirs", **REQUIRED_GATEWAY_FIELDS},
        timeout=30,
    )
    assert other.status_code == 200, other.text
    for gateway_id in ("nope", "theirs", "Bad%20Id"):
        response = mine.goto(f"{live.dashboard}/{account_id}/gateways/{gateway_id}")
        assert response is not None and response.status == 404
        expect(mine.get_by_role("alert")).to_contain_text(
            "There is no such gateway" if "%" in gateway_id else f"no gateway named '{gateway_id}'"
        )
        expect(mine.get_by_role("link", name="Back to your dashboard")).to_have_attribute(
            "href", f"/dashboard/{account_id}/gateways"
        )
    check_accessibility(mine)
    screenshot(mine, "gateways-not-found")

    reader = new_page()
    sign_in(reader, live, live.read_only)
    reader.goto(f"{live.dashboard}/{account_id}/gateways")
    expect(reader.locator("#gateway-shared")).to_be_visible()
    expect(reader.locator("#create-form")).to_have_count(0)
    expect(reader.get_by_role("link", name=re.compile("Delete"))).to_have_count(0)
    reader.goto(settings_url)
    expect(reader.locator("#settings-facts")).to_contain_text("Zero Data Retention")
    expect(reader.locator("main form")).to_have_count(0)
    expect(reader.locator("#url-compat")).to_be_visible()
    screenshot(reader, "gateways-settings-read-only")
    check_accessibility(reader)
    csrf = reader.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    posts = {
        "/gateways": {"id": "sneaky"},
        "/gateways/shared": {"version": "", "zdr": "on"},
        "/gateways/shared/spend-rules": {"rule_amount": "5", "rule_window": "3600"},
        "/gateways/shared/spend-rules/remove": {"rule_id": "rule-1"},
        "/gateways/shared/spend-limits": {"enabled": "on"},
        "/gateways/shared/delete": {"confirm": "delete"},
    }
    for path, form in posts.items():
        answer = reader.request.post(
            f"{live.dashboard}/{account_id}{path}", form={"csrf_token": csrf, **form}
        )
        assert answer.status == 403, path
        assert "lacks the &#39;edit&#39; permission" in answer.text()
    confirm = reader.goto(f"{settings_url}/delete")
    assert confirm is not None and confirm.status == 403
    assert [g["id"] for g in _api(live, "GET").json()["result"]] == ["shared"]
    assert _gateway(live, "shared") == before

    # A save over a change made elsewhere since the page was read is refused, not merged.
    mine.goto(settings_url)
    body = {k: v for k, v in before.items() if k not in ("created_at", "modified_at")}
    assert _api(live, "PUT", "/shared", json=body | {"cache_ttl": 60}).status_code == 200
    mine.get_by_label("Use Zero Data Retention").check()
    assert _post_status(mine, mine.get_by_role("button", name="Save settings").click) == 409
    expect(mine.get_by_role("alert")).to_contain_text("changed elsewhere")
    expect(mine.get_by_label("Cache time-to-live (seconds)")).to_have_value("60")
    after = _gateway(live, "shared")
    assert (after["zdr"], after["cache_ttl"]) == (False, 60)
