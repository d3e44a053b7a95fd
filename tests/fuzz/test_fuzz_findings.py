"""What the fuzz suite found, each pinned by a focused test (the fuzz itself is random).

- A 405 said `Allow: GET` where GET and POST are served (Starlette names the first route's
  methods), then nothing at all (FastAPI nests included routers).
- The admin API answered 500 for a `before` (ledger) or `page` (accounts) past the database's
  integers.
- `/openapi.json` listed a 422 that is never sent and none of the errors that are; it described
  no success body; it left out the 200 of a replayed credit grant; and it described the logged
  request and response bodies as the v4 envelope.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support.server import serve_in_thread
from tollgate.app import create_app
from tollgate.settings import load_settings

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    directory = tmp_path_factory.mktemp("findings")
    settings = load_settings(
        env={
            "TOLLGATE_DATA_DIR": str(directory),
            "TOLLGATE_DATABASE_URL": f"sqlite:///{directory / 'gateway.db'}",
            "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        }
    )
    with serve_in_thread(create_app(settings)) as url, httpx.Client(base_url=url) as client:
        yield client


@pytest.fixture(scope="module")
def document(api: httpx.Client) -> dict[str, Any]:
    response = api.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/client/v4/accounts/{a}/ai-gateway/gateways", "GET, POST"),
        ("PATCH", "/client/v4/accounts/{a}/ai-gateway/gateways/gw", "GET, PUT, DELETE"),
        ("PUT", "/client/v4/accounts/{a}/ai-gateway/billing/spending-limit", "GET, POST, DELETE"),
        ("GET", "/admin/v1/accounts/{a}/credits", "POST"),
    ],
)
def test_a_405_allows_every_method_of_the_path(
    api: httpx.Client, method: str, path: str, allowed: str
) -> None:
    response = api.request(method, path.format(a="a" * 32), headers=ADMIN)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed


@pytest.mark.parametrize(
    "query",
    ["/accounts/{a}/ledger?before=9223372036854775808", "/accounts?page=1000000001"],
)
def test_admin_integers_past_the_database_are_400_not_500(api: httpx.Client, query: str) -> None:
    created = api.post("/admin/v1/accounts", json={"name": "fuzz"}, headers=ADMIN)
    response = api.get("/admin/v1" + query.format(a=created.json()["id"]), headers=ADMIN)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_field"


def test_the_largest_ledger_cursor_is_still_accepted(api: httpx.Client) -> None:
    created = api.post("/admin/v1/accounts", json={"name": "fuzz"}, headers=ADMIN)
    path = f"/admin/v1/accounts/{created.json()['id']}/ledger?before={2**63 - 1}"
    assert api.get(path, headers=ADMIN).status_code == 200


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    ]


def test_every_operation_documents_its_errors_and_no_422(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        assert "422" not in responses, (method, path)
        expected = "AdminError" if path.startswith("/admin/") else "CloudflareError"
        errors = [code for code in responses if code.startswith("4")]
        assert errors, (method, path)
        if not path.startswith("/stripe/"):
            assert "401" in errors, (method, path)
        for code in errors:
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{expected}"}, (method, path, code)


def test_v4_successes_are_the_envelope_and_log_bodies_are_raw(document: dict[str, Any]) -> None:
    envelope = {"$ref": "#/components/schemas/CloudflareSuccess"}
    for method, path, operation in _operations(document):
        if not path.startswith("/client/v4/"):
            continue
        content = operation["responses"]["200"]["content"]
        if path.endswith(("/request", "/response")):
            assert set(content) == {"application/json", "text/plain"}, path
        else:
            assert content == {"application/json": {"schema": envelope}}, (method, path)


def test_a_replayed_grant_200_is_documented(document: dict[str, Any]) -> None:
    responses = document["paths"]["/admin/v1/accounts/{account_id}/credits"]["post"]["responses"]
    assert {"200", "201"} <= set(responses)
