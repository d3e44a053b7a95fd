"""The Logs API through the official `cloudflare` SDK (`client.ai_gateway.logs`), on SQLite and
PostgreSQL: list with filters and ordering, get, edit, delete by filters, and bad input.

The logs are seeded straight into the store, so every filter has a known answer; the traffic
side (what a request writes) is tested in tests/e2e/test_logs.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cloudflare
import httpx
import pytest

from tests.support.accounts import add_token, seed_account
from tests.support.server import serve_in_thread
from tollgate.app import create_app
from tollgate.settings import Settings
from tollgate.store import Store
from tollgate.store import logs as log_repo
from tollgate.store.logs import LogRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NANOS = 1_000_000_000


def record(n: int, account_id: str, gateway_id: str = "default", **fields: Any) -> LogRecord:
    base = LogRecord(
        id=f"{n:032x}",
        account_id=account_id,
        gateway_id=gateway_id,
        created_at=T0 + timedelta(minutes=n),
        provider="openai",
        model="gpt-4o-mini",
        path="chat/completions",
        request_type="native",
        status_code=200,
        success=True,
        cached=False,
        duration_ms=100 * n,
        tokens_in=10 * n,
        tokens_out=n,
        cost_nanos=n * NANOS // 100,  # n cents
        cost_estimated=False,
        custom_cost=False,
        credential_source="unified",
        zdr=False,
        metadata=None,
        event_id=None,
        step=None,
        user_agent="test",
        request_content_type="application/json",
        response_content_type="application/json",
        request_size=2,
        response_size=2,
        payload_collected=True,
        request_body=b'{"q":1}',
        request_complete=True,
        response_body=b'{"a":1}',
        response_complete=True,
    )
    return dataclasses.replace(base, **fields)


@dataclass
class Api:
    base: str
    account_id: str
    token: str
    read_only: str
    other_token: str
    client: Any

    @property
    def logs(self) -> Any:
        return self.client.ai_gateway.logs

    def ids(self, **params: Any) -> list[int]:
        page = self.logs.list("default", account_id=self.account_id, per_page=50, **params)
        return [int(log.id, 16) for log in page.result]

    def raw(self, method: str, path: str = "", token: str | None = None, **kw: Any) -> Any:
        url = f"{self.base}/client/v4/accounts/{self.account_id}/ai-gateway/gateways/default/logs"
        headers = {"authorization": f"Bearer {token or self.token}"}
        return httpx.request(method, url + path, headers=headers, **kw)


def seed(database_url: str, account_id: str) -> None:
    records = [
        record(1, account_id, metadata='{"user":"ada","plan":"pro"}', event_id="evt-1"),
        record(2, account_id, provider="anthropic", model="claude-sonnet-4-6", cached=True),
        record(3, account_id, success=False, status_code=429, cost_nanos=None, tokens_in=None),
        record(4, account_id, metadata='{"user":"bob","n":5}', credential_source="byok"),
        record(5, account_id, request_type="compat", feedback=1, score=0.5),
        record(6, account_id, gateway_id="other"),  # another gateway: never listed here
    ]

    async def insert() -> None:
        store = Store(database_url)
        try:
            await log_repo.insert_logs(store, records)
        finally:
            await store.close()

    asyncio.run(insert())


@pytest.fixture
def start(
    make_settings: Callable[..., Settings], database_url: str
) -> Callable[[], AbstractContextManager[Api]]:
    @contextmanager
    def run() -> Iterator[Api]:
        settings = make_settings(
            {"TOLLGATE_DATABASE_URL": database_url, "TOLLGATE_SANDBOX__ENABLED": "false"}
        )
        with serve_in_thread(create_app(settings)) as base:
            owner = seed_account(database_url)
            reader = add_token(database_url, owner.account_id, permissions=frozenset({"read"}))
            stranger = seed_account(database_url, name="stranger")
            seed(database_url, owner.account_id)
            client = cloudflare.Cloudflare(
                api_token=owner.token, base_url=f"{base}/client/v4", max_retries=0
            )
            yield Api(base, owner.account_id, owner.token, reader, stranger.token, client)
            client.close()

    return run


@pytest.fixture
def api(start: Callable[[], AbstractContextManager[Api]]) -> Iterator[Api]:
    with start() as running:
        yield running


# --- list -------------------------------------------------------------------------------------


def test_list_is_newest_first_with_cloudflares_fields_and_stats(api: Api) -> None:
    page = api.logs.list("default", account_id=api.account_id)
    assert [int(log.id, 16) for log in page.result] == [5, 4, 3, 2, 1]
    first = page.result[-1]
    assert first.provider == "openai" and first.model == "gpt-4o-mini"
    assert first.path == "chat/completions" and first.duration == 100
    assert first.cost == pytest.approx(0.01) and first.tokens_in == 10
    assert first.created_at == T0 + timedelta(minutes=1)
    assert first.metadata == '{"user":"ada","plan":"pro"}'
    info = api.raw("GET").json()["result_info"]
    assert info["total_count"] == 5 and info["count"] == 5
    assert info["min_cost"] == pytest.approx(0.01) and info["max_cost"] == pytest.approx(0.05)
    assert info["max_duration"] == 500 and info["max_total_tokens"] == 55


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"success": False}, [3]),
        ({"cached": True}, [2]),
        ({"provider": "anthropic"}, [2]),
        ({"model": "gpt-4o-mini"}, [5, 4, 3, 1]),
        ({"feedback": 1}, [5]),
        ({"min_cost": 0.02, "max_cost": 0.04}, [4, 2]),
        ({"min_duration": 300}, [5, 4, 3]),
        ({"max_tokens_in": 20}, [2, 1]),
        ({"min_total_tokens": 44}, [5, 4]),
        ({"start_date": T0 + timedelta(minutes=2), "end_date": T0 + timedelta(minutes=3)}, [3, 2]),
        ({"search": "ada"}, [1]),
        ({"order_by": "provider", "order_by_direction": "asc"}, [2, 1, 3, 4, 5]),
        ({"order_by": "created_at", "direction": "asc"}, [1, 2, 3, 4, 5]),
    ],
)
def test_list_parameters(api: Api, params: dict[str, Any], expected: list[int]) -> None:
    assert api.ids(**params) == expected


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([{"key": "provider", "operator": "eq", "value": ["anthropic", "nobody"]}], [2]),
        ([{"key": "provider", "operator": "neq", "value": ["openai"]}], [2]),
        ([{"key": "model", "operator": "contains", "value": ["SONNET"]}], [2]),
        ([{"key": "cost", "operator": "gt", "value": [0.03]}], [5, 4]),
        ([{"key": "tokens", "operator": "lt", "value": [25]}], [3, 2, 1]),
        ([{"key": "duration", "operator": "eq", "value": [200]}], [2]),
        ([{"key": "success", "operator": "eq", "value": [False]}], [3]),
        ([{"key": "event_id", "operator": "eq", "value": ["evt-1"]}], [1]),
        ([{"key": "event_id", "operator": "eq", "value": [None]}], [5, 4, 3, 2]),
        ([{"key": "metadata.key", "operator": "eq", "value": ["plan"]}], [1]),
        ([{"key": "metadata.value", "operator": "eq", "value": ["bob"]}], [4]),
        ([{"key": "metadata.value", "operator": "eq", "value": [5]}], [4]),
        ([{"key": "metadata.value", "operator": "neq", "value": ["ada"]}], [5, 4, 3, 2]),
        ([{"key": "wholesale", "operator": "eq", "value": [False]}], [4]),
        ([{"key": "compatibilityMode", "operator": "eq", "value": [True]}], [5]),
        ([{"key": "created_at", "operator": "gt", "value": ["2026-01-01T00:03:30Z"]}], [5, 4]),
        (
            [
                {"key": "provider", "operator": "eq", "value": ["openai"]},
                {"key": "cost", "operator": "lt", "value": [0.03]},
            ],
            [1],
        ),
    ],
)
def test_filters(api: Api, filters: list[dict[str, Any]], expected: list[int]) -> None:
    assert api.ids(filters=filters) == expected


def test_filters_as_json_and_one_after_the_other(api: Api) -> None:
    """The forms a curl user may send: the SDK's own grouped form is tested above."""
    json_form = '[{"key":"provider","operator":"eq","value":["openai","anthropic"]},'
    json_form += '{"key":"duration","operator":"lt","value":[250]}]'
    response = api.raw("GET", "", params={"filters": json_form})
    assert [int(log["id"], 16) for log in response.json()["result"]] == [2, 1]
    sequential = (
        "filters.key=provider&filters.operator=eq&filters.value=openai&filters.value=anthropic"
        "&filters.key=duration&filters.operator=gt&filters.value=350"
    )
    response = api.raw("GET", f"?{sequential}")
    assert [int(log["id"], 16) for log in response.json()["result"]] == [5, 4]


def test_pagination_walks_every_page_and_stops(api: Api) -> None:
    pages = api.logs.list("default", account_id=api.account_id, per_page=2)
    assert [int(log.id, 16) for log in pages] == [5, 4, 3, 2, 1]  # the SDK follows page + 1


# --- get, edit, bodies ---------------------------------------------------------------------


def test_get_has_the_heads_and_the_bodies_come_back_as_json(api: Api) -> None:
    log = api.logs.get(f"{1:032x}", account_id=api.account_id, gateway_id="default")
    assert log.request_head == '{"q":1}' and log.request_head_complete is True
    assert log.response_head == '{"a":1}'
    body = api.logs.request(f"{1:032x}", account_id=api.account_id, gateway_id="default")
    assert body == {"q": 1}
    assert api.logs.response(f"{1:032x}", account_id=api.account_id, gateway_id="default") == {
        "a": 1
    }


def test_edit_sets_feedback_score_and_metadata(api: Api) -> None:
    log_id = f"{2:032x}"
    api.logs.edit(
        log_id,
        account_id=api.account_id,
        gateway_id="default",
        feedback=-1,
        score=42.5,
        metadata={"reviewed": True},
    )
    extra = api.raw("GET", f"/{log_id}").json()["result"]
    assert extra["feedback"] == -1 and extra["score"] == 42.5
    assert extra["metadata"] == '{"reviewed":true}'
    api.logs.edit(log_id, account_id=api.account_id, gateway_id="default", metadata=None)
    assert api.logs.get(log_id, account_id=api.account_id, gateway_id="default").metadata is None
    assert api.ids(feedback=0) == [2]


@pytest.mark.parametrize(
    "body",
    [
        {"feedback": 2},
        {"feedback": "up"},
        {"score": "high"},
        {"metadata": {"nested": {"a": 1}}},
        {"metadata": {str(i): i for i in range(6)}},
        {"rating": 5},
        {},
    ],
)
def test_a_bad_edit_is_a_400_and_changes_nothing(api: Api, body: dict[str, Any]) -> None:
    log_id = f"{1:032x}"
    before = api.raw("GET", f"/{log_id}").json()["result"]
    response = api.raw("PATCH", f"/{log_id}", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["message"]
    assert api.raw("GET", f"/{log_id}").json()["result"] == before


# --- delete ---------------------------------------------------------------------------------


def test_delete_by_filters_deletes_only_the_matches(api: Api) -> None:
    result = api.logs.delete(
        "default",
        account_id=api.account_id,
        filters=[{"key": "provider", "operator": "eq", "value": ["openai"]}],
        order_by="created_at",
        order_by_direction="asc",
        limit=2,
    )
    assert result.success is True
    assert api.ids() == [5, 4, 2]  # the two oldest openai logs (1 and 3) went
    api.logs.delete(
        "default",
        account_id=api.account_id,
        filters=[{"key": "cached", "operator": "eq", "value": [True]}],
    )
    assert api.ids() == [5, 4]
    assert api.raw("GET", "", params={"per_page": 1}).json()["result_info"]["total_count"] == 2


# --- bad input and strangers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("filters.key=colour&filters.operator=eq&filters.value=red", "colour"),
        ("filters.key=model&filters.operator=like&filters.value=gpt", "like"),
        ("filters.key=cost&filters.operator=contains&filters.value=1", "contains"),
        ("filters.key=cost&filters.operator=gt&filters.value=cheap", "cheap"),
        ("filters.key=cost&filters.operator=gt&filters.value=1&filters.value=2", "one value"),
        ("filters.key=dlp_action&filters.operator=eq&filters.value=BLOCK", "dlp_action"),
        ("filters.operator=eq", "filters.key"),
        (
            "filters.key=model&filters.key=provider&filters.operator=eq&filters.operator=eq"
            "&filters.value=a&filters.value=b&filters.value=c",
            "ambiguous",
        ),
        ('filters=[{"key":"model","op":"eq"}]', "op"),
        ("colour=red", "colour"),
        ("order_by=cost", "order_by"),
        ("direction=sideways", "sideways"),
        ("min_cost=lots", "min_cost"),
        ("start_date=yesterday", "start_date"),
        ("success=maybe", "success"),
        ("per_page=51", "per_page"),
    ],
)
def test_a_bad_list_query_is_a_400_naming_what_is_wrong(api: Api, query: str, named: str) -> None:
    response = api.raw("GET", f"?{query}")
    assert response.status_code == 400, response.text
    assert named in response.json()["errors"][0]["message"]


def test_a_bad_delete_query_is_a_400_and_deletes_nothing(api: Api) -> None:
    response = api.raw("DELETE", "?filters.key=colour&filters.operator=eq&filters.value=x")
    assert response.status_code == 400 and "colour" in response.text
    assert api.raw("DELETE", "?limit=0").status_code == 400
    assert api.ids() == [5, 4, 3, 2, 1]


def test_unknown_log_and_gateway_are_404(api: Api) -> None:
    with pytest.raises(cloudflare.NotFoundError, match="does not exist"):
        api.logs.get("f" * 32, account_id=api.account_id, gateway_id="default")
    with pytest.raises(cloudflare.NotFoundError):
        api.logs.edit("f" * 32, account_id=api.account_id, gateway_id="default", score=1)
    with pytest.raises(cloudflare.NotFoundError, match="Gateway 'nope'"):
        api.logs.list("nope", account_id=api.account_id)


def test_permissions_and_foreign_accounts(api: Api) -> None:
    log_id = f"{1:032x}"
    assert api.raw("GET", f"/{log_id}", token=api.read_only).status_code == 200
    assert api.raw("PATCH", f"/{log_id}", token=api.read_only, json={"score": 1}).status_code == 403
    assert api.raw("DELETE", "", token=api.read_only).status_code == 403
    for method, path in (("GET", ""), ("GET", f"/{log_id}"), ("DELETE", "")):
        assert api.raw(method, path, token=api.other_token).status_code == 403
    assert api.raw("GET", "", token="tg_bogus").status_code == 401
    assert api.ids() == [5, 4, 3, 2, 1]
