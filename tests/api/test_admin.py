"""The operator admin API (/admin/v1), against a real gateway on a loopback port.

Bad input is covered in test_admin_bad_input.py; these tests follow each endpoint's happy path,
the operator-token check, and what the data plane sees after a change.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support.server import serve_in_thread
from tollgate.api.auth import OPERATOR_PREFIX, mint_token
from tollgate.app import create_app
from tollgate.settings import Settings
from tollgate.store import Store
from tollgate.store import tokens as token_repo
from tollgate.store.migrate import migrate

ACCOUNT_FIELDS = {
    "id",
    "name",
    "status",
    "balance",
    "balance_nanos",
    "held",
    "held_nanos",
    "created_at",
    "modified_at",
}
TOKEN_FIELDS = {
    "id",
    "account_id",
    "name",
    "permissions",
    "status",
    "expires_at",
    "revoked_at",
    "last_used_at",
    "created_at",
}
ENTRY_FIELDS = {
    "id",
    "seq",
    "account_id",
    "kind",
    "amount",
    "amount_nanos",
    "balance_after",
    "balance_after_nanos",
    "note",
    "reference",
    "created_at",
}
UNKNOWN_ACCOUNT = "0123456789abcdef0123456789abcdef"


@dataclass
class Admin:
    """An httpx client on /admin/v1 holding the operator token, plus the server's address."""

    url: str
    http: httpx.Client
    settings: Settings

    def account(self, name: str = "acme") -> dict[str, Any]:
        response = self.http.post("/accounts", json={"name": name})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def token(self, account_id: str, *permissions: str, **extra: Any) -> dict[str, Any]:
        body = {"name": "test", "permissions": list(permissions or ("run",)), **extra}
        response = self.http.post(f"/accounts/{account_id}/tokens", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def grant(self, account_id: str, cents: int, **extra: Any) -> httpx.Response:
        return self.http.post(
            f"/accounts/{account_id}/credits", json={"amount_cents": cents, "note": "t", **extra}
        )

    def snapshot(self) -> Any:
        """Everything the admin API can see, to prove a refused request changed nothing."""
        accounts = self.http.get("/accounts", params={"per_page": 100}).json()["accounts"]
        state = []
        for account in accounts:
            tokens = self.http.get(f"/accounts/{account['id']}/tokens").json()["tokens"]
            ledger = self.http.get(f"/accounts/{account['id']}/ledger").json()["entries"]
            state.append((account, tokens, ledger))
        return state


@pytest.fixture
def start_admin(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    @contextmanager
    def start(**env: str) -> Iterator[Admin]:
        settings = make_settings({"TOLLGATE_SANDBOX__ENABLED": "false", **env})
        with serve_in_thread(create_app(settings)) as url:
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            with httpx.Client(base_url=f"{url}/admin/v1", headers=headers, timeout=30) as http:
                yield Admin(url, http, settings)

    return start


@pytest.fixture
def admin(start_admin: Callable[..., Any]) -> Iterator[Admin]:
    with start_admin() as running:
        yield running


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None
    return parsed


# --- accounts -------------------------------------------------------------------------------------


def test_create_account_returns_a_hex_id_and_a_zero_balance(admin: Admin) -> None:
    response = admin.http.post("/accounts", json={"name": "  Acme Corp  "})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == ACCOUNT_FIELDS
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert body["name"] == "Acme Corp"
    assert (body["status"], body["balance"], body["balance_nanos"]) == ("active", "0.00", 0)
    assert abs(parse_time(body["created_at"]) - datetime.now(UTC)) < timedelta(minutes=1)


def test_get_account(admin: Admin) -> None:
    made = admin.account("one")
    response = admin.http.get(f"/accounts/{made['id']}")
    assert response.status_code == 200
    assert response.json() == made


@pytest.mark.parametrize("account_id", [UNKNOWN_ACCOUNT, "not-an-id", "ABCDEF" * 6])
def test_unknown_or_malformed_account_is_404(admin: Admin, account_id: str) -> None:
    response = admin.http.get(f"/accounts/{account_id}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "account_not_found"


def test_list_accounts_pages_with_total(admin: Admin) -> None:
    made = [admin.account(f"a{i}")["id"] for i in range(5)]
    first = admin.http.get("/accounts", params={"per_page": 2}).json()
    assert (first["page"], first["per_page"], first["total"], first["total_pages"]) == (1, 2, 5, 3)
    pages = [first] + [
        admin.http.get("/accounts", params={"per_page": 2, "page": p}).json() for p in (2, 3, 4)
    ]
    assert [a["id"] for page in pages for a in page["accounts"]] == made
    assert pages[-1]["accounts"] == []
    default = admin.http.get("/accounts").json()
    assert (default["page"], default["per_page"], default["total"]) == (1, 20, 5)
    assert set(default["accounts"][0]) == ACCOUNT_FIELDS


def test_disable_and_enable_account(admin: Admin) -> None:
    account_id = admin.account()["id"]
    for _ in range(2):  # idempotent
        disabled = admin.http.post(f"/accounts/{account_id}/disable")
        assert disabled.status_code == 200 and disabled.json()["status"] == "disabled"
    assert admin.http.get(f"/accounts/{account_id}").json()["status"] == "disabled"
    enabled = admin.http.post(f"/accounts/{account_id}/enable")
    assert enabled.status_code == 200 and enabled.json()["status"] == "active"
    assert admin.http.post(f"/accounts/{UNKNOWN_ACCOUNT}/disable").status_code == 404


def _dataplane(admin: Admin, account_id: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{admin.url}/v1/{account_id}/default/openai/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )


def test_disabling_an_account_stops_its_tokens_at_once(admin: Admin) -> None:
    account_id = admin.account()["id"]
    token = admin.token(account_id, "run")["token"]
    assert _dataplane(admin, account_id, token).status_code not in (401, 403)  # now cached
    admin.http.post(f"/accounts/{account_id}/disable")
    refused = _dataplane(admin, account_id, token)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "account_disabled"
    admin.http.post(f"/accounts/{account_id}/enable")
    assert _dataplane(admin, account_id, token).status_code not in (401, 403)


# --- tokens ---------------------------------------------------------------------------------------


def test_create_token_shows_the_secret_once(admin: Admin) -> None:
    account_id = admin.account()["id"]
    response = admin.http.post(
        f"/accounts/{account_id}/tokens",
        json={"name": "ci", "permissions": ["edit", "run", "read", "run"]},
    )
    assert response.status_code == 201
    created = response.json()
    assert set(created) == TOKEN_FIELDS | {"token"}
    assert re.fullmatch(r"[0-9a-f]{16}", created["id"])
    assert created["token"].startswith("tg_" + created["id"])
    assert created["permissions"] == ["run", "read", "edit"]
    assert (created["status"], created["expires_at"], created["account_id"]) == (
        "active",
        None,
        account_id,
    )

    listed = admin.http.get(f"/accounts/{account_id}/tokens")
    assert listed.status_code == 200
    [token] = listed.json()["tokens"]
    assert set(token) == TOKEN_FIELDS
    assert token == {k: v for k, v in created.items() if k != "token"}
    secret = created["token"]
    assert secret not in listed.text
    assert secret.removeprefix("tg_" + created["id"]) not in admin.http.get("/accounts").text


def test_create_token_with_an_expiry(admin: Admin) -> None:
    account_id = admin.account()["id"]
    naive = admin.token(account_id, "read", expires_at="2099-01-02T03:04:05")
    assert naive["expires_at"] == "2099-01-02T03:04:05Z"  # no zone means UTC
    zoned = admin.token(account_id, "read", expires_at="2099-01-02T03:04:05+02:00")
    assert zoned["expires_at"] == "2099-01-02T01:04:05Z"
    explicit_null = admin.token(account_id, "read", expires_at=None)
    assert explicit_null["expires_at"] is None


def test_an_expired_token_lists_as_expired(admin: Admin) -> None:
    account_id = admin.account()["id"]
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    made = admin.token(account_id, "run", expires_at=soon)
    assert made["status"] == "active"
    time.sleep(1.2)
    [listed] = admin.http.get(f"/accounts/{account_id}/tokens").json()["tokens"]
    assert listed["status"] == "expired"


@pytest.mark.parametrize("how", ["delete", "post"])
def test_revoke_token(admin: Admin, how: str) -> None:
    account_id = admin.account()["id"]
    token = admin.token(account_id, "run")
    keep = admin.token(account_id, "read")
    path = f"/accounts/{account_id}/tokens/{token['id']}"
    send = (
        (lambda: admin.http.delete(path))
        if how == "delete"
        else (lambda: admin.http.post(path + "/revoke"))
    )
    first = send()
    assert first.status_code == 200
    assert first.json()["status"] == "revoked" and first.json()["revoked_at"]
    again = send()  # harmless, keeps the first revocation time
    assert again.status_code == 200 and again.json()["revoked_at"] == first.json()["revoked_at"]
    statuses = {
        t["id"]: t["status"]
        for t in admin.http.get(f"/accounts/{account_id}/tokens").json()["tokens"]
    }
    assert statuses == {token["id"]: "revoked", keep["id"]: "active"}


def test_revoked_token_stops_working_at_once(admin: Admin) -> None:
    account_id = admin.account()["id"]
    token = admin.token(account_id, "run")
    assert _dataplane(admin, account_id, token["token"]).status_code not in (401, 403)
    admin.http.delete(f"/accounts/{account_id}/tokens/{token['id']}")
    refused = _dataplane(admin, account_id, token["token"])
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "revoked_token"


def test_a_token_of_another_account_cannot_be_revoked_through_this_one(admin: Admin) -> None:
    mine = admin.account("mine")["id"]
    theirs = admin.account("theirs")["id"]
    their_token = admin.token(theirs, "run")
    before = admin.snapshot()
    for response in (
        admin.http.delete(f"/accounts/{mine}/tokens/{their_token['id']}"),
        admin.http.post(f"/accounts/{mine}/tokens/{their_token['id']}/revoke"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "token_not_found"
    assert admin.snapshot() == before
    for unknown in ("ffffffffffffffff", "nope"):
        assert admin.http.delete(f"/accounts/{mine}/tokens/{unknown}").status_code == 404


# --- credits and ledger -------------------------------------------------------------------------


def test_grant_credits_returns_the_ledger_entry(admin: Admin) -> None:
    account_id = admin.account()["id"]
    response = admin.grant(account_id, 1234, note="welcome")
    assert response.status_code == 201
    entry = response.json()
    assert set(entry) == ENTRY_FIELDS
    assert entry["kind"] == "grant"
    assert (entry["amount"], entry["amount_nanos"]) == ("12.34", 12_340_000_000)
    assert entry["balance_after"] == "12.34"
    assert (entry["note"], entry["reference"]) == ("welcome", None)
    assert admin.http.get(f"/accounts/{account_id}").json()["balance"] == "12.34"
    second = admin.grant(account_id, 1).json()
    assert (second["amount"], second["balance_after"]) == ("0.01", "12.35")


def test_grant_with_a_reference_credits_once(admin: Admin) -> None:
    account_id = admin.account()["id"]
    first = admin.grant(account_id, 500, reference="promo-2026")
    again = admin.grant(account_id, 500, reference="promo-2026")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    account = admin.http.get(f"/accounts/{account_id}").json()
    assert account["balance"] == "5.00"
    assert len(admin.http.get(f"/accounts/{account_id}/ledger").json()["entries"]) == 1


def test_a_reference_reused_for_a_different_amount_is_409(admin: Admin) -> None:
    account_id = admin.account()["id"]
    admin.grant(account_id, 500, reference="promo-2027")
    clash = admin.grant(account_id, 700, reference="promo-2027")
    assert clash.status_code == 409
    assert clash.json()["error"]["code"] == "reference_reused"
    assert admin.http.get(f"/accounts/{account_id}").json()["balance"] == "5.00"


def test_credits_for_an_unknown_account_are_404(admin: Admin) -> None:
    response = admin.grant(UNKNOWN_ACCOUNT, 100)
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "account_not_found",
        "message": f"Account {UNKNOWN_ACCOUNT} does not exist.",
        "param": None,
    }


def test_ledger_is_newest_first_with_balance_after_and_pages(admin: Admin) -> None:
    account_id = admin.account()["id"]
    for cents in (100, 250, 5, 1000, 45):
        admin.grant(account_id, cents)
    page = admin.http.get(f"/accounts/{account_id}/ledger", params={"limit": 2}).json()
    assert (page["account_id"], page["balance"], page["balance_nanos"]) == (
        account_id,
        "14.00",
        14_000_000_000,
    )
    assert [(e["amount"], e["balance_after"]) for e in page["entries"]] == [
        ("0.45", "14.00"),
        ("10.00", "13.55"),
    ]
    rest = admin.http.get(
        f"/accounts/{account_id}/ledger", params={"limit": 10, "before": page["next_before"]}
    ).json()
    assert [(e["amount"], e["balance_after"]) for e in rest["entries"]] == [
        ("0.05", "3.55"),
        ("2.50", "3.50"),
        ("1.00", "1.00"),
    ]
    assert rest["next_before"] is None
    seqs = [e["seq"] for e in page["entries"] + rest["entries"]]
    assert seqs == sorted(seqs, reverse=True)


def test_ledger_of_an_account_without_entries(admin: Admin) -> None:
    account_id = admin.account()["id"]
    body = admin.http.get(f"/accounts/{account_id}/ledger").json()
    assert (body["entries"], body["next_before"], body["balance"]) == ([], None, "0.00")


# --- the operator token ---------------------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/accounts", {"name": "x"}),
    ("GET", "/accounts", None),
    ("GET", "/accounts/{a}", None),
    ("POST", "/accounts/{a}/disable", None),
    ("POST", "/accounts/{a}/enable", None),
    ("POST", "/accounts/{a}/tokens", {"name": "x", "permissions": ["run"]}),
    ("GET", "/accounts/{a}/tokens", None),
    ("DELETE", "/accounts/{a}/tokens/{t}", None),
    ("POST", "/accounts/{a}/tokens/{t}/revoke", None),
    ("POST", "/accounts/{a}/credits", {"amount_cents": 100, "note": "x"}),
    ("GET", "/accounts/{a}/ledger", None),
]


def test_every_endpoint_needs_the_operator_token(admin: Admin) -> None:
    account_id = admin.account()["id"]
    token = admin.token(account_id, "run", "read", "edit")
    before = admin.snapshot()
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {
            "Authorization": f"Bearer {token['token']}"
        },  # an account's tg_ token is not an admin token
        {"Authorization": "Bearer tgop_0123456789abcdefnotarealoperatortokenatall000000"},
    ]
    for method, path, body in ENDPOINTS:
        url = f"{admin.url}/admin/v1" + path.format(a=account_id, t=token["id"])
        for headers in bad_headers:
            response = httpx.request(method, url, json=body, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            error = response.json()["error"]
            assert error["code"] in {"missing_token", "invalid_token"}
        # Even a malformed body is refused as unauthenticated first, never parsed.
        garbage = httpx.request(
            method, url, content=b"{nope", headers={"content-type": "application/json"}
        )
        assert garbage.status_code == 401
    assert admin.snapshot() == before


def test_an_account_token_is_not_an_admin_token(admin: Admin) -> None:
    account_id = admin.account()["id"]
    secret = admin.token(account_id, "run", "read", "edit")["token"]
    response = httpx.get(
        f"{admin.url}/admin/v1/accounts", headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


def test_a_generated_operator_token_is_accepted(admin: Admin) -> None:
    minted = mint_token(OPERATOR_PREFIX)

    async def store_it() -> None:
        store = Store(admin.settings.database.url)
        try:
            await migrate(store)
            await token_repo.insert_operator_token(store, minted.token_id, minted.token_hash)
        finally:
            await store.close()

    asyncio.run(store_it())
    response = httpx.get(
        f"{admin.url}/admin/v1/accounts", headers={"Authorization": f"Bearer {minted.token}"}
    )
    assert response.status_code == 200


def test_without_any_operator_token_configured_the_admin_api_refuses_all(
    start_admin: Callable[..., Any],
) -> None:
    with start_admin(TOLLGATE_ADMIN_TOKEN="") as running:
        response = running.http.get("/accounts")
        assert response.status_code == 401
