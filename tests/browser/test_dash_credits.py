"""The Credits page in a real browser: a test card, a top-up through confirm and pay to its result,
declines, auto top-up, the invoice history, bad input, CSRF, expired sessions, a read-only token,
and the Stripe provider's payment method id; each checked through the billing API as well."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    PHONE,
    Live,
    check_accessibility,
    off_loop,
    screenshot,
    sign_in,
)
from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Sim, provider_env
from tests.support.accounts import add_token, seed_account
from tests.support.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe, serve_fake_stripe
from tests.support.server import serve_in_thread
from tollgate import money
from tollgate.app import create_app
from tollgate.dashboard.core import CSRF_MESSAGE
from tollgate.dashboard.format import usd
from tollgate.dashboard.sessions import IDLE_SECONDS
from tollgate.settings import load_settings

pytestmark = pytest.mark.xdist_group("browser")

NewPage = Callable[..., Page]
YEAR = datetime.now(UTC).year + 3


def _api(live: Live, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    url = f"{live.url}/client/v4/accounts/{live.account.account_id}/ai-gateway/billing{path}"
    headers = {"authorization": f"Bearer {token or live.account.token}"}
    response = httpx.request(method, url, headers=headers, timeout=30, **kw)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def _balance(live: Live) -> int:
    """The account's balance in nanos, exactly, through `GET billing/credit-balance`."""
    return money.from_dollars(str(_api(live, "GET", "/credit-balance")["balance_exact"]))


def _invoices(live: Live) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = _api(live, "GET", "/invoice-history")["invoices"]
    return result


def _add_card_by_api(live: Live, number: str = "4242424242424242") -> None:
    card = {"card_number": number, "exp_month": 12, "exp_year": YEAR, "cvc": "123"}
    _api(live, "POST", "/payment-method", json=card)


def _credits(page: Page, live: Live) -> None:
    page.goto(f"{live.dashboard}/{live.account.account_id}/credits")


def _add_card(page: Page, number: str, month: str = "12", year: str = str(YEAR)) -> None:
    if page.locator("details.replace:not([open])").count():  # a card is on file: replace it
        page.get_by_text("Replace the card").click()
    page.get_by_label("Card number").fill(number)
    page.get_by_label("Expiry month").fill(month)
    page.get_by_label("Expiry year").fill(year)
    page.get_by_label("CVC").fill("123")
    page.locator("#card-form").get_by_role("button").click()


def _start_topup(page: Page, dollars: str) -> None:
    page.locator("#topup-amount").fill(dollars)
    page.get_by_role("button", name="Top-up credits").click()


def _pay(page: Page) -> None:
    page.locator("#pay-form").get_by_role("button", name=re.compile("^Pay ")).click()


def test_add_a_card_top_up_and_the_balance_rises_by_exactly_the_amount(
    live: Live, new_page: NewPage
) -> None:
    live.app.services.topups.fee_percent = Decimal("2.9")  # shows the fee on the confirm step
    page = new_page()
    sign_in(page, live)
    page.get_by_role("link", name="Manage").first.click()  # Credits Available -> Manage
    expect(page.get_by_role("heading", name="Credits", level=1)).to_be_visible()
    expect(page.locator("#balance")).to_have_text("$25.00")
    expect(page.locator("#payment-method")).to_contain_text("None on file")
    expect(page.locator("#topup-needs-card")).to_be_visible()
    expect(page.locator("#auto-needs-card")).to_be_visible()
    expect(page.locator("#invoices-empty")).to_contain_text("No top-ups yet")
    expect(page.locator("#sandbox-note")).to_contain_text("Stripe test cards")
    expect(page.locator("#test-cards")).to_contain_text("4000 0025 0000 3155")
    check_accessibility(page)
    screenshot(page, "credits-empty-desktop")

    _add_card(page, "4242 4242 4242 4242")
    expect(page.get_by_role("status")).to_have_text(re.compile("Payment method saved"))
    expect(page.locator("#payment-method")).to_contain_text(
        f"Visa ending in 4242, expires 12/{YEAR}"
    )
    card = _api(live, "GET", "/credit-balance")["payment_method"]
    assert card == {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": YEAR}

    before = _balance(live)
    _start_topup(page, "25")
    expect(page.get_by_role("heading", name="Confirm your top-up")).to_be_visible()
    expect(page.locator("#confirm-amount")).to_have_text("$25.00")
    expect(page.locator("#confirm-fee")).to_have_text("$0.73")  # 2.9% of $25.00, half up
    expect(page.locator("#confirm-total")).to_have_text("$25.73")
    expect(page.locator("#confirm-card")).to_contain_text("Visa ending in 4242")
    check_accessibility(page)
    screenshot(page, "credits-confirm-desktop")
    assert _balance(live) == before  # confirming charges nothing yet

    _pay(page)
    expect(page.get_by_role("heading", name="Top-up succeeded")).to_be_visible()
    expect(page.locator("#balance")).to_have_text(usd(before + money.from_cents(2_500)))
    assert _balance(live) == before + money.from_cents(2_500)
    check_accessibility(page)
    screenshot(page, f"credits-result-succeeded-desktop-{live.database_url.split(':')[0]}")

    page.get_by_role("link", name="Back to Credits").click()
    expect(page.locator("#balance")).to_have_text(usd(before + money.from_cents(2_500)))
    row = page.locator("#invoices tbody tr")
    expect(row).to_have_count(1)
    for text in ("Manual", "$25.00", "$0.73", "$25.73", "Paid"):
        expect(row).to_contain_text(text)
    [invoice] = _invoices(live)
    assert (invoice["credit_amount"], invoice["fee"], invoice["amount_paid"]) == (2500, 73, 2573)
    check_accessibility(page)
    screenshot(page, "credits-with-card-desktop")
    page.set_viewport_size(PHONE)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the credits page scrolls sideways by {overflow}px at 390 px"
    screenshot(page, "credits-with-card-phone")


def test_posting_the_same_pay_form_twice_credits_once(live_sqlite: Live, new_page: NewPage) -> None:
    live = live_sqlite
    _add_card_by_api(live)
    before = _balance(live)
    page = new_page(PHONE)
    sign_in(page, live)
    _credits(page, live)
    _start_topup(page, "30")
    fields = {
        name: page.locator(f"#pay-form input[name={name}]").get_attribute("value") or ""
        for name in ("csrf_token", "amount_cents", "idempotency_key")
    }
    assert fields["idempotency_key"].startswith("dashboard-")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the confirm step scrolls sideways by {overflow}px at 390 px"
    screenshot(page, "credits-confirm-phone")
    _pay(page)
    expect(page.get_by_role("heading", name="Top-up succeeded")).to_be_visible()
    first_result = page.url
    # The same form again (a double click, or the back button and Pay): the same top-up.
    again = page.request.post(
        f"{live.dashboard}/{live.account.account_id}/credits/topup/pay", form=fields
    )
    assert again.status == 200 and again.url == first_result
    page.reload()  # the result page is a GET: reloading it posts nothing
    expect(page.get_by_role("heading", name="Top-up succeeded")).to_be_visible()
    assert _balance(live) == before + money.from_cents(3_000)
    assert len(_invoices(live)) == 1
    screenshot(page, "credits-result-succeeded-phone")
    check_accessibility(page)


def test_a_declined_card_says_why_and_changes_nothing(live_sqlite: Live, new_page: NewPage) -> None:
    live = live_sqlite
    page = new_page()
    sign_in(page, live)
    _credits(page, live)
    _add_card(page, "4000 0000 0000 0002")
    expect(page.locator("#payment-method")).to_contain_text("ending in 0002")
    before = _balance(live)
    _start_topup(page, "25")
    _pay(page)
    expect(page.get_by_role("heading", name="Top-up declined")).to_be_visible()
    expect(page.locator("#result")).to_contain_text("declined the payment without giving a reason")
    expect(page.locator("main")).to_contain_text("Nothing was charged")
    expect(page.locator("#balance")).to_have_text(usd(before))
    assert _balance(live) == before
    check_accessibility(page)
    screenshot(page, "credits-result-declined-desktop")

    # A card that needs 3-D Secure: the sandbox cannot complete it, so nothing is credited.
    _credits(page, live)
    _add_card(page, "4000 0025 0000 3155")
    expect(page.locator("#payment-method")).to_contain_text("ending in 3155")
    _start_topup(page, "40")
    _pay(page)
    expect(page.get_by_role("heading", name="Authentication required")).to_be_visible()
    expect(page.locator("main")).to_contain_text("sandbox has no bank page")
    assert _balance(live) == before
    screenshot(page, "credits-result-authentication-desktop")
    page.set_viewport_size(PHONE)
    screenshot(page, "credits-result-authentication-phone")
    page.get_by_role("link", name="Check again").click()  # refreshed from the provider: still open
    expect(page.get_by_role("heading", name="Authentication required")).to_be_visible()
    assert _balance(live) == before

    _credits(page, live)
    rows = page.locator("#invoices tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("Needs authentication")
    expect(rows.nth(1)).to_contain_text("Declined")
    assert sorted(i["status"] for i in _invoices(live)) == ["open", "uncollectible"]


def test_auto_top_up_and_the_card_are_set_read_back_and_removed(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    _add_card_by_api(live)
    page = new_page()
    sign_in(page, live)
    _credits(page, live)
    expect(page.locator("#auto-topup")).to_contain_text("Off")
    page.get_by_label(re.compile("When credits fall below")).fill("10")
    page.get_by_label(re.compile("Add this amount")).fill("20")
    page.get_by_label(re.compile("Monthly cap")).fill("100")
    page.get_by_role("button", name="Save auto top-up").click()
    expect(page.get_by_role("status")).to_have_text(re.compile("Auto top-up saved"))
    expect(page.locator("#auto-topup")).to_contain_text(
        "Adds $20.00 when credits fall below $10.00"
    )
    expect(page.locator("#auto-topup")).to_contain_text("At most $100.00 a month")
    config = _api(live, "GET", "/topup/config")
    assert (config["amount"], config["threshold"], config["monthly_cap"]) == (2000, 1000, 10_000)
    assert config["enabled"] is True and config["disabledReason"] is None
    check_accessibility(page)
    screenshot(page, "credits-auto-on-desktop")

    page.get_by_role("button", name="Remove auto top-up").click()
    expect(page.get_by_role("status")).to_have_text(re.compile("Auto top-up removed"))
    expect(page.locator("#auto-topup")).to_contain_text("Credits are added only when you top up")
    assert _api(live, "GET", "/topup/config") == {
        "amount": None,
        "threshold": None,
        "enabled": False,
    }

    page.get_by_role("button", name="Remove the payment method").click()
    expect(page.get_by_role("status")).to_have_text(re.compile("Payment method removed"))
    expect(page.locator("#payment-method")).to_contain_text("None on file")
    expect(page.locator("#auto-needs-card")).to_be_visible()
    assert _api(live, "GET", "/credit-balance")["payment_method"] is None


def _spend_once(live: Live) -> None:
    """One Unified Billing request through the gateway (its settle may start an auto top-up)."""
    response = httpx.post(
        f"{live.url}/v1/{live.account.account_id}/default/openai/chat/completions",
        headers={"cf-aig-authorization": f"Bearer {live.account.token}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def test_a_failed_auto_top_up_shows_its_error_and_when(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    _add_card_by_api(live, "4000000000000341")  # saves, then every charge is declined
    _api(live, "POST", "/topup/config", json={"amount": 1000, "threshold": 3000})
    _spend_once(live)  # the balance ($25) is below the threshold ($30): one auto top-up, declined
    deadline = time.monotonic() + 10
    while _api(live, "GET", "/topup/config")["error"] is None:  # it runs in the background
        assert time.monotonic() < deadline, "the auto top-up never recorded its failure"
        time.sleep(0.05)
    config = _api(live, "GET", "/topup/config")
    page = new_page()
    sign_in(page, live)
    _credits(page, live)
    failed_at = datetime.fromtimestamp(config["lastFailedAt"] / 1000, UTC)
    failure = page.locator("#auto-failure")
    expect(failure).to_contain_text(f"Last attempt failed at {failed_at:%Y-%m-%d %H:%M} UTC")
    assert config["error"].startswith("generic_decline: ")  # shown in plain words instead
    expect(failure).to_contain_text("declined the payment without giving a reason")
    expect(failure).not_to_contain_text("generic_decline")
    expect(failure).to_contain_text("1 failed in a row")
    expect(page.locator("#invoices tbody tr").first).to_contain_text("Auto")
    expect(page.locator("#invoices tbody tr").first).to_contain_text("Declined")
    check_accessibility(page)
    screenshot(page, "credits-auto-failed-desktop")


def test_bad_input_is_refused_inline_and_changes_nothing(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    before = _balance(live)
    page = new_page()
    sign_in(page, live)
    _credits(page, live)
    cards = {
        ("4242 4242 4242 4241", str(YEAR)): ("#card-number-error", "not a valid card number"),
        ("4111 1111 1111 1111", str(YEAR)): ("#card-number-error", "only Stripe's test card"),
        ("4242 4242 4242 4242", "2020"): ("#exp-year-error", "expired"),
    }
    for (number, year), (where, message) in cards.items():
        with page.expect_response(re.compile("/credits/payment-method$")) as posted:
            _add_card(page, number, "01", year)
        assert posted.value.status == 400
        expect(page.locator(where)).to_contain_text(message)
        expect(page.get_by_label("Card number")).to_have_value("")  # never echoed back
    assert _api(live, "GET", "/credit-balance")["payment_method"] is None
    screenshot(page, "credits-bad-card-desktop")
    check_accessibility(page)

    _add_card(page, "4242424242424242")
    amounts = {
        "abc": "must be a number of dollars",
        "-5": "must be more than $0",
        "0": "must be more than $0",
        "10.001": "at most two decimal places",
        "9.99": "must be from $10.00 to $10,000.00",
    }
    for typed, message in amounts.items():
        with page.expect_response(re.compile("/credits/topup$")) as posted:
            _start_topup(page, typed)
        assert posted.value.status == 400
        expect(page.locator("#topup-amount-error")).to_contain_text(message)
        expect(page.locator("#topup-amount")).to_have_value(typed)
    screenshot(page, "credits-bad-amount-desktop")

    threshold = page.get_by_label(re.compile("When credits fall below"))
    amount = page.get_by_label(re.compile("Add this amount"))
    cap = page.get_by_label(re.compile("Monthly cap"))
    autos = {  # (threshold, amount, cap): every field's message at once
        ("abc", "-20", ""): {
            "#auto-threshold-error": "must be a number of dollars",
            "#auto-amount-error": "must be more than $0",
        },
        ("4.99", "0", ""): {
            "#auto-threshold-error": "must be from $5.00",
            "#auto-amount-error": "must be more than $0",
        },
        ("5.001", "9.99", "lots"): {
            "#auto-threshold-error": "at most two decimal places",
            "#auto-amount-error": "must be from $10.00",
            "#auto-cap-error": "must be a number of dollars",
        },
        ("10", "20", "15"): {"#auto-cap-error": "at least the auto top-up amount ($20.00)"},
    }
    for (low, add, most), messages in autos.items():
        threshold.fill(low)
        amount.fill(add)
        cap.fill(most)
        with page.expect_response(re.compile("/credits/auto-topup$")) as posted:
            page.get_by_role("button", name="Save auto top-up").click()
        assert posted.value.status == 400
        for where, message in messages.items():
            expect(page.locator(where)).to_contain_text(message)
        expect(page.locator(".field-error")).to_have_count(len(messages))
    screenshot(page, "credits-bad-auto-desktop")
    page.set_viewport_size(PHONE)
    screenshot(page, "credits-bad-auto-phone")
    check_accessibility(page)
    assert _api(live, "GET", "/topup/config")["enabled"] is False
    assert _balance(live) == before and _invoices(live) == []


def test_a_pay_form_with_another_sessions_csrf_token_charges_nothing(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    _add_card_by_api(live)
    before = _balance(live)
    theirs = new_page()
    sign_in(theirs, live)
    _credits(theirs, live)
    foreign = theirs.locator("#topup-form input[name=csrf_token]").get_attribute("value")
    mine = new_page()
    sign_in(mine, live)
    _credits(mine, live)
    _start_topup(mine, "25")
    mine.locator("#pay-form input[name=csrf_token]").evaluate(
        "(input, value) => { input.value = value; }", foreign
    )
    with mine.expect_response(re.compile("/credits/topup/pay$")) as posted:
        _pay(mine)
    assert posted.value.status == 403
    expect(mine.get_by_role("alert")).to_have_text(CSRF_MESSAGE)
    assert _balance(live) == before and _invoices(live) == []
    screenshot(mine, "credits-csrf-refused-desktop")


def test_an_expired_session_pays_nothing_and_returns_to_sign_in(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    _add_card_by_api(live)
    before = _balance(live)
    page = new_page()
    sign_in(page, live)
    _credits(page, live)
    _start_topup(page, "25")
    expect(page.locator("#pay-form")).to_be_visible()
    live.app.dashboard.sessions.clock = lambda: time.monotonic() + IDLE_SECONDS + 60
    _pay(page)
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in\?notice=expired"))
    expect(page.get_by_role("status")).to_contain_text("Your session expired")
    assert _balance(live) == before and _invoices(live) == []


def test_a_read_only_token_sees_no_forms_and_cannot_post(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    _add_card_by_api(live)
    _api(live, "POST", "/topup", json={"amount": 1500})
    before = _balance(live)
    page = new_page()
    sign_in(page, live, live.read_only)
    _credits(page, live)
    expect(page.locator("#balance")).to_have_text(usd(before))
    expect(page.locator("#payment-method")).to_contain_text("Visa ending in 4242")
    expect(page.locator("#invoices tbody tr")).to_have_count(1)
    expect(page.locator("#read-only-note")).to_contain_text("'edit' permission")
    expect(page.locator("main form")).to_have_count(0)
    expect(page.locator("main input, main button")).to_have_count(0)
    check_accessibility(page)
    screenshot(page, "credits-read-only-desktop")
    page.locator("#invoices a").first.click()  # a top-up's result page needs only read
    expect(page.get_by_role("heading", name="Top-up succeeded")).to_be_visible()

    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    base = f"{live.dashboard}/{live.account.account_id}/credits"
    posts = {
        "/payment-method": {"action": "remove"},
        "/auto-topup": {"action": "save", "threshold": "10", "auto_amount": "20"},
        "/topup": {"amount": "25"},
        "/topup/pay": {"amount_cents": "2500", "idempotency_key": "dashboard-" + "a" * 32},
    }
    for path, form in posts.items():
        response = page.request.post(base + path, form={"csrf_token": csrf, **form})
        assert response.status == 403, path
        assert "lacks the &#39;edit&#39; permission" in response.text()
    assert _balance(live) == before and len(_invoices(live)) == 1
    assert _api(live, "GET", "/credit-balance")["payment_method"]["last4"] == "4242"
    assert _api(live, "GET", "/topup/config")["enabled"] is False


@pytest.fixture
def live_stripe(tmp_path: Path, sim_server: Sim) -> Iterator[tuple[Live, FakeStripe]]:
    """A gateway whose payment provider is `stripe`, pointed at the local Stripe fake."""
    database_url = f"sqlite:///{tmp_path / 'dash.db'}"
    with serve_fake_stripe() as (fake, stripe_base):
        settings = load_settings(
            env={
                "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
                "TOLLGATE_DATABASE_URL": database_url,
                "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
                "TOLLGATE_BILLING__PAYMENT_PROVIDER": "stripe",
                "TOLLGATE_BILLING__STRIPE_SECRET_KEY": API_KEY,
                "TOLLGATE_BILLING__STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "TOLLGATE_BILLING__STRIPE_API_BASE": stripe_base,
                **provider_env(sim_server.url),
            }
        )
        account = off_loop(seed_account, database_url, name="Acme Research", credits_cents=2_500)
        other = off_loop(seed_account, database_url, name="Someone Else", credits_cents=0)
        read_only = off_loop(
            add_token, database_url, account.account_id, permissions=frozenset({"read"})
        )
        app = create_app(settings)
        with serve_in_thread(app) as url:
            yield Live(url, app, database_url, account, read_only, read_only, other), fake


def test_with_stripe_the_page_takes_a_payment_method_id_never_a_card_number(
    live_stripe: tuple[Live, FakeStripe], new_page: NewPage
) -> None:
    live, fake = live_stripe
    page = new_page()
    sign_in(page, live)
    _credits(page, live)
    expect(page.locator("#card-number")).to_have_count(0)
    expect(page.locator(".banner")).to_have_count(0)  # no sandbox banner: real money
    expect(page.locator("#stripe-note")).to_contain_text("Card numbers never pass through tollgate")
    expect(page.locator("script[src*='stripe']")).to_have_count(0)
    field = page.get_by_label("Stripe PaymentMethod id")
    field.fill("4242424242424242")
    page.locator("#card-form").get_by_role("button").click()
    expect(page.locator("#payment-method-id-error")).to_contain_text("starts with pm_")
    assert fake.payment_methods == {}  # refused here, before anything reached Stripe
    check_accessibility(page)
    screenshot(page, "credits-stripe-desktop")

    field.fill("pm_card_visa")
    page.locator("#card-form").get_by_role("button").click()
    expect(page.locator("#payment-method")).to_contain_text("Visa ending in 4242")
    before = _balance(live)
    _start_topup(page, "10")
    expect(page.locator("#confirm-total")).to_have_text("$10.00")
    _pay(page)
    expect(page.get_by_role("heading", name="Top-up succeeded")).to_be_visible()
    assert _balance(live) == before + money.from_cents(1_000)
    assert fake.charged_cents() == 1_000
