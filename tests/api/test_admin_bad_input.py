"""Bad input to the admin API: always a clear 400 (or 404 for an unknown account), never a change.

Each case sends one bad request and compares everything the admin API can see before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api.test_admin import UNKNOWN_ACCOUNT, Admin, admin, start_admin  # noqa: F401


@pytest.fixture
def seeded(admin: Admin) -> Iterator[tuple[Admin, str, Any]]:  # noqa: F811
    account_id = admin.account("victim")["id"]
    admin.token(account_id, "run")
    admin.grant(account_id, 100)
    yield admin, account_id, admin.snapshot()


def _error(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "param"}
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    return dict(error)


MALFORMED = [
    (b"{not json", "application/json", "invalid_json"),
    (b"", "application/json", "invalid_json"),
    (b"[1, 2]", "application/json", "invalid_json"),
    (b'"a string"', "application/json", "invalid_json"),
    (b"null", "application/json", "invalid_json"),
    (b'{"name": "x"}', "text/plain", "invalid_json"),
    (b"name=x", "application/x-www-form-urlencoded", "invalid_json"),
]
POSTS = ["/accounts", "/accounts/{a}/tokens", "/accounts/{a}/credits"]


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize(("content", "content_type", "code"), MALFORMED)
def test_malformed_bodies_are_400_and_change_nothing(
    seeded: tuple[Admin, str, Any], path: str, content: bytes, content_type: str, code: str
) -> None:
    api, account_id, before = seeded
    response = api.http.post(
        path.format(a=account_id), content=content, headers={"content-type": content_type}
    )
    error = _error(response)
    assert error["code"] in {code, "missing_field"}, error
    assert api.snapshot() == before


ACCOUNT_BODIES = [
    ({}, "missing_field", "name"),
    ({"name": ""}, "invalid_field", "name"),
    ({"name": "   "}, "invalid_field", "name"),
    ({"name": None}, "invalid_field", "name"),
    ({"name": 42}, "invalid_field", "name"),
    ({"name": ["a"]}, "invalid_field", "name"),
    ({"name": "x" * 201}, "invalid_field", "name"),
    ({"name": "ok", "owner": "me"}, "unknown_field", "owner"),
]


@pytest.mark.parametrize(("body", "code", "param"), ACCOUNT_BODIES)
def test_bad_account_bodies(
    seeded: tuple[Admin, str, Any], body: dict[str, Any], code: str, param: str
) -> None:
    api, _, before = seeded
    error = _error(api.http.post("/accounts", json=body))
    assert (error["code"], error["param"]) == (code, param)
    assert param in error["message"]
    assert api.snapshot() == before


_PAST = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
TOKEN_BODIES = [
    ({"permissions": ["run"]}, "missing_field", "name"),
    ({"name": "t"}, "missing_field", "permissions"),
    ({"name": "t", "permissions": []}, "invalid_field", "permissions"),
    ({"name": "t", "permissions": ["api"]}, "invalid_field", "permissions"),
    ({"name": "t", "permissions": ["run", "Run"]}, "invalid_field", "permissions"),
    ({"name": "t", "permissions": "run"}, "invalid_field", "permissions"),
    ({"name": "t", "permissions": "run,read"}, "invalid_field", "permissions"),
    ({"name": "t", "permissions": [1]}, "invalid_field", "permissions.0"),
    ({"name": "t", "permissions": ["run"], "expires_at": _PAST}, "invalid_field", "expires_at"),
    (
        {"name": "t", "permissions": ["run"], "expires_at": "2001-01-01"},
        "invalid_field",
        "expires_at",
    ),
    (
        {"name": "t", "permissions": ["run"], "expires_at": "tomorrow"},
        "invalid_field",
        "expires_at",
    ),
    (
        {"name": "t", "permissions": ["run"], "expires_at": 4102444800},
        "invalid_field",
        "expires_at",
    ),
    ({"name": "t", "permissions": ["run"], "expires_at": True}, "invalid_field", "expires_at"),
    ({"name": "t", "permissions": ["run"], "scopes": []}, "unknown_field", "scopes"),
    ({"name": 7, "permissions": ["run"]}, "invalid_field", "name"),
]


@pytest.mark.parametrize(("body", "code", "param"), TOKEN_BODIES)
def test_bad_token_bodies(
    seeded: tuple[Admin, str, Any], body: dict[str, Any], code: str, param: str
) -> None:
    api, account_id, before = seeded
    error = _error(api.http.post(f"/accounts/{account_id}/tokens", json=body))
    assert (error["code"], error["param"]) == (code, param)
    assert api.snapshot() == before


def test_past_expiry_message_says_what_to_do(seeded: tuple[Admin, str, Any]) -> None:
    api, account_id, _ = seeded
    body = {"name": "t", "permissions": ["run"], "expires_at": "2001-01-01T00:00:00Z"}
    error = _error(api.http.post(f"/accounts/{account_id}/tokens", json=body))
    assert "in the past" in error["message"] and "future" in error["message"]


CREDIT_BODIES = [
    ({"note": "x"}, "missing_field", "amount_cents"),
    ({"amount_cents": 0}, "invalid_field", "amount_cents"),
    ({"amount_cents": -100}, "invalid_field", "amount_cents"),
    ({"amount_cents": 1.5}, "invalid_field", "amount_cents"),
    ({"amount_cents": 100.0}, "invalid_field", "amount_cents"),
    ({"amount_cents": "100"}, "invalid_field", "amount_cents"),
    ({"amount_cents": True}, "invalid_field", "amount_cents"),
    ({"amount_cents": None}, "invalid_field", "amount_cents"),
    ({"amount_cents": [100]}, "invalid_field", "amount_cents"),
    ({"amount_cents": 10**12}, "invalid_field", "amount_cents"),
    ({"amount_cents": 10**30}, "invalid_field", "amount_cents"),
    ({"amount_cents": 100, "note": 5}, "invalid_field", "note"),
    ({"amount_cents": 100, "note": "x" * 501}, "invalid_field", "note"),
    ({"amount_cents": 100, "reference": ""}, "invalid_field", "reference"),
    ({"amount_cents": 100, "reference": 12}, "invalid_field", "reference"),
    ({"amount_cents": 100, "amount": 5}, "unknown_field", "amount"),
    ({"amount": 100}, "missing_field", "amount_cents"),
]


@pytest.mark.parametrize(("body", "code", "param"), CREDIT_BODIES)
def test_bad_credit_bodies(
    seeded: tuple[Admin, str, Any], body: dict[str, Any], code: str, param: str
) -> None:
    api, account_id, before = seeded
    error = _error(api.http.post(f"/accounts/{account_id}/credits", json=body))
    assert (error["code"], error["param"]) == (code, param)
    assert api.snapshot() == before


@pytest.mark.parametrize(
    "raw",
    [
        b'{"amount_cents": NaN}',
        b'{"amount_cents": Infinity}',
        b'{"amount_cents": 1e400}',
        b'{"amount_cents": 1' + b"0" * 5000 + b"}",
    ],
)
def test_non_finite_or_absurd_numbers_are_refused(
    seeded: tuple[Admin, str, Any], raw: bytes
) -> None:
    api, account_id, before = seeded
    response = api.http.post(
        f"/accounts/{account_id}/credits", content=raw, headers={"content-type": "application/json"}
    )
    _error(response)
    assert api.snapshot() == before


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/accounts", {"per_page": 101}, "per_page"),
        ("/accounts", {"per_page": 0}, "per_page"),
        ("/accounts", {"page": 0}, "page"),
        ("/accounts", {"page": "two"}, "page"),
        ("/accounts/{a}/ledger", {"limit": 0}, "limit"),
        ("/accounts/{a}/ledger", {"limit": 201}, "limit"),
        ("/accounts/{a}/ledger", {"before": "x"}, "before"),
        ("/accounts/{a}/ledger", {"before": -1}, "before"),
    ],
)
def test_bad_paging_is_400(
    seeded: tuple[Admin, str, Any], path: str, params: dict[str, Any], param: str
) -> None:
    api, account_id, _ = seeded
    error = _error(api.http.get(path.format(a=account_id), params=params))
    assert (error["code"], error["param"]) == ("invalid_field", param)


UNKNOWN_ACCOUNT_CALLS = [
    ("GET", "/accounts/{u}", None),
    ("POST", "/accounts/{u}/disable", None),
    ("POST", "/accounts/{u}/enable", None),
    ("POST", "/accounts/{u}/tokens", {"name": "x", "permissions": ["run"]}),
    ("GET", "/accounts/{u}/tokens", None),
    ("DELETE", "/accounts/{u}/tokens/0123456789abcdef", None),
    ("POST", "/accounts/{u}/tokens/0123456789abcdef/revoke", None),
    ("POST", "/accounts/{u}/credits", {"amount_cents": 100}),
    ("GET", "/accounts/{u}/ledger", None),
]


@pytest.mark.parametrize(("method", "path", "body"), UNKNOWN_ACCOUNT_CALLS)
@pytest.mark.parametrize("unknown", [UNKNOWN_ACCOUNT, "nope", "0" * 31])
def test_unknown_account_is_404_everywhere_and_changes_nothing(
    seeded: tuple[Admin, str, Any], method: str, path: str, body: Any, unknown: str
) -> None:
    api, _, before = seeded
    response = api.http.request(method, path.format(u=unknown), json=body)
    assert _error(response, 404)["code"] == "account_not_found"
    assert api.snapshot() == before
