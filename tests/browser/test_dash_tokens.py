"""The API tokens page in a real browser: create a token and see its secret once, use it on the
data plane, revoke it and see it refused at once; permissions (read-only, no more than the
signed-in token), revoking your own token, bad input and a replayed CSRF token."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.sync_api import Page, Response, expect

from tests.browser.conftest import (
    DESKTOP,
    PHONE,
    Live,
    check_accessibility,
    off_loop,
    screenshot,
    sign_in,
)
from tests.support.accounts import add_token
from tollgate.dashboard.core import CSRF_MESSAGE
from tollgate.store import Store
from tollgate.store import tokens as token_repo
from tollgate.store.models import ApiToken

pytestmark = pytest.mark.xdist_group("browser")

NewPage = Callable[..., Page]


def _stored_tokens(live: Live) -> list[ApiToken]:
    """The account's tokens as `tollgate tokens list` reads them (straight from the store)."""

    async def read() -> list[ApiToken]:
        store = Store(live.database_url)
        try:
            return await token_repo.list_tokens(store, live.account.account_id)
        finally:
            await store.close()

    result: list[ApiToken] = off_loop(asyncio.run, read())
    return result


def _chat(live: Live, token: str) -> int:
    """A Unified Billing request with `token`; its status."""
    response = httpx.post(
        f"{live.url}/v1/{live.account.account_id}/default/openai/chat/completions",
        headers={"cf-aig-authorization": f"Bearer {token}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    return response.status_code


def _tokens_url(live: Live) -> str:
    return f"{live.dashboard}/{live.account.account_id}/tokens"


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


def _submit(page: Page, button: str) -> Response:
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name=button).click()
    return posted.value


def test_a_new_token_shows_its_secret_once_works_and_stops_working_when_revoked(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    before = {t.id for t in _stored_tokens(live)}
    page = new_page()
    sign_in(page, live)
    page.get_by_role("link", name="API tokens").click()
    expect(page.get_by_role("heading", name="API tokens", level=1)).to_be_visible()
    own = page.locator(f"#token-{live.account.token_id}")
    expect(own).to_contain_text("this session")
    expect(own).to_contain_text("run, read, edit")
    _desktop_and_phone(page, "tokens-list")

    page.get_by_label("Name (up to 200 characters)").fill("ci-deploy")
    page.get_by_label(re.compile(r"^run\b")).check()
    page.get_by_label("Expires after (days, optional)").fill("30")
    assert _submit(page, "Create token").status == 200
    expect(page.get_by_role("heading", name="Token “ci-deploy” created")).to_be_visible()
    expect(page.locator("#new-token")).to_contain_text("you will not see this secret again")
    secret = page.locator("#new-token-secret").inner_text().strip()
    assert secret.startswith("tg_")
    [created] = [t for t in _stored_tokens(live) if t.id not in before]
    assert (created.name, created.permissions) == ("ci-deploy", frozenset({"run"}))
    assert created.expires_at is not None
    expected_expiry = datetime.now(UTC) + timedelta(days=30)
    assert abs(created.expires_at - expected_expiry) < timedelta(minutes=1)
    assert secret.startswith(f"tg_{created.id}")
    page.get_by_role("button", name="Copy").click()  # copy.js: copied, or selected for Ctrl+C
    expect(page.locator("button.copy")).to_have_text(re.compile("Copied|Selected"))
    _desktop_and_phone(page, "tokens-created")
    assert _chat(live, secret) == 200

    # Reloading the page that showed it (the browser resubmits the POST) shows no secret and
    # creates nothing; opening the page again does not show it either.
    page.reload()
    expect(page.get_by_role("alert")).to_contain_text("no new token was created")
    assert secret not in page.content()
    page.goto(_tokens_url(live))
    expect(page.locator(f"#token-{created.id}")).to_contain_text("active")
    assert secret not in page.content()
    assert len(_stored_tokens(live)) == len(before) + 1

    page.locator(f"#token-{created.id}").get_by_role("link", name="Revoke").click()
    expect(page.get_by_role("heading", name="Revoke token “ci-deploy”?")).to_be_visible()
    expect(page.locator("#own-token-warning")).to_have_count(0)
    expect(page.locator(".perm")).to_have_text("edit · read · run")  # the viewer's, not the token's
    _desktop_and_phone(page, "tokens-revoke-confirm")
    page.get_by_role("button", name="Revoke token").click()
    expect(page.get_by_role("status")).to_contain_text("“ci-deploy”")
    expect(page.locator(f"#token-{created.id}")).to_contain_text("revoked")
    expect(page.locator(f"#token-{created.id}").get_by_role("link", name="Revoke")).to_have_count(0)
    assert _chat(live, secret) == 401  # at once: the verifier's cache was dropped
    assert _chat(live, live.account.token) == 200


def test_no_more_than_the_signed_in_token_and_revoking_your_own_signs_you_out(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    editor = off_loop(
        add_token,
        live.database_url,
        live.account.account_id,
        permissions=frozenset({"read", "edit"}),
    )
    page = new_page()
    sign_in(page, live, editor)
    page.goto(_tokens_url(live))
    # Only what this token has is offered: read and edit, not run.
    expect(page.locator("#create-form input[type=checkbox]")).to_have_count(2)
    expect(page.get_by_label(re.compile(r"^run\b"))).to_have_count(0)
    page.get_by_label("Name (up to 200 characters)").fill("settings bot")
    page.get_by_label(re.compile(r"^edit\b")).check()
    assert _submit(page, "Create token").status == 200
    expect(page.locator("#new-token-secret")).to_be_visible()
    names = {t.name: t.permissions for t in _stored_tokens(live)}
    assert names["settings bot"] == frozenset({"edit"})

    # Asking for 'run' anyway (a forged form) is refused and creates nothing.
    count = len(_stored_tokens(live))
    page.goto(_tokens_url(live))
    page.locator("#create-form").evaluate(
        """form => { const box = document.createElement('input'); box.type = 'checkbox';
            box.name = 'perm_run'; box.value = 'on'; box.checked = true; form.append(box); }"""
    )
    page.get_by_label("Name (up to 200 characters)").fill("sneaky")
    page.get_by_label(re.compile(r"^read\b")).check()
    assert _submit(page, "Create token").status == 403
    expect(page.locator("#permissions-error")).to_contain_text("Your API token lacks 'run'")
    expect(page.locator("#permissions-error")).to_contain_text("Nothing was created.")
    assert len(_stored_tokens(live)) == count

    # Revoking the token this session uses: the confirm step warns, then signs out.
    editor_id = editor[3:19]
    page.goto(_tokens_url(live))
    page.locator(f"#token-{editor_id}").get_by_role("link", name="Revoke").click()
    expect(page.locator("#own-token-warning")).to_contain_text("signs you out")
    _desktop_and_phone(page, "tokens-revoke-own")
    page.get_by_role("button", name="Revoke and sign out").click()
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in\?notice=token"))
    expect(page.get_by_role("status")).to_contain_text("no longer valid")
    page.goto(_tokens_url(live))
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in"))
    assert {t.id: t.revoked_at is not None for t in _stored_tokens(live)}[editor_id]


def test_a_read_only_token_sees_tokens_but_cannot_create_or_revoke(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    page = new_page()
    sign_in(page, live, live.read_only)
    page.goto(_tokens_url(live))
    expect(page.locator("#token-list tbody tr")).to_have_count(3)
    expect(page.locator("#create-form")).to_have_count(0)
    expect(page.get_by_role("link", name="Revoke")).to_have_count(0)
    _desktop_and_phone(page, "tokens-read-only")
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    before = _stored_tokens(live)
    response = page.request.post(
        _tokens_url(live), form={"csrf_token": csrf, "name": "x", "perm_read": "on"}
    )
    assert response.status == 403
    assert "lacks the &#39;edit&#39; permission" in response.text()
    target = f"{_tokens_url(live)}/{live.account.token_id}/revoke"
    assert page.request.get(target).status == 403
    assert page.request.post(target, form={"csrf_token": csrf}).status == 403
    assert _stored_tokens(live) == before
    assert _chat(live, live.account.token) == 200


def test_bad_input_is_refused_inline_and_a_replayed_csrf_token_changes_nothing(
    live_sqlite: Live, new_page: NewPage
) -> None:
    live = live_sqlite
    before = _stored_tokens(live)
    page = new_page()
    sign_in(page, live)
    page.goto(_tokens_url(live))
    name = page.get_by_label("Name (up to 200 characters)")
    days = page.get_by_label("Expires after (days, optional)")
    cases = [
        ("", "", "#name-error", "Enter a name for the token"),
        ("x" * 201, "", "#name-error", "at most 200 characters; it has 201"),
        ("ok", "-5", "#expires-error", "whole number of days from 1 to 3650"),
        ("ok", "soon", "#expires-error", "whole number of days from 1 to 3650"),
        ("ok", "0", "#expires-error", "whole number of days from 1 to 3650"),
        ("ok", "99999", "#expires-error", "at most 3650 days"),
    ]
    for typed_name, typed_days, where, message in cases:
        name.fill(typed_name)
        page.get_by_label(re.compile(r"^read\b")).check()
        days.fill(typed_days)
        assert _submit(page, "Create token").status == 400, (typed_name, typed_days)
        expect(page.locator(where)).to_contain_text(message)
        expect(name).to_have_value(typed_name)
        expect(days).to_have_value(typed_days)
        expect(page.locator("#new-token")).to_have_count(0)
        expect(page.locator(".alert.error")).to_have_text(re.compile("^No token was created"))
    _desktop_and_phone(page, "tokens-bad-input")
    name.fill("no permissions")
    for box in ("run", "read", "edit"):
        page.get_by_label(re.compile(rf"^{box}\b")).uncheck()
    days.fill("")
    assert _submit(page, "Create token").status == 400
    expect(page.locator("#permissions-error")).to_have_text("Choose at least one permission.")
    assert _stored_tokens(live) == before

    # A CSRF token from another session: refused, nothing created or revoked.
    theirs = new_page()
    sign_in(theirs, live)
    theirs.goto(_tokens_url(live))
    foreign = theirs.locator("#create-form input[name=csrf_token]").get_attribute("value")
    page.goto(_tokens_url(live))
    page.locator("#create-form input[name=csrf_token]").evaluate(
        "(input, value) => { input.value = value; }", foreign
    )
    name.fill("replayed")
    page.get_by_label(re.compile(r"^read\b")).check()
    assert _submit(page, "Create token").status == 403
    expect(page.get_by_role("alert")).to_have_text(CSRF_MESSAGE)
    page.goto(f"{_tokens_url(live)}/{live.read_only[3:19]}/revoke")
    page.locator("form.confirm-actions input[name=csrf_token]").evaluate(
        "(input, value) => { input.value = value; }", foreign
    )
    assert _submit(page, "Revoke token").status == 403
    expect(page.get_by_role("alert")).to_have_text(CSRF_MESSAGE)
    assert _stored_tokens(live) == before
    assert _chat(live, live.read_only) == 403  # still valid: refused only for lacking 'run'
