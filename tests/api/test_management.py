"""The gateways management API, driven by the official `cloudflare` SDK against a real server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import cloudflare
import httpx
import pytest

from tests.support.server import serve_in_thread
from tollgate.app import TollgateApp, create_app
from tollgate.operator import issue_token
from tollgate.settings import Settings
from tollgate.store import Store
from tollgate.store import accounts as account_repo

REQUIRED: dict[str, Any] = {
    "cache_invalidate_on_update": False,
    "cache_ttl": 0,
    "collect_logs": True,
    "rate_limiting_interval": 0,
    "rate_limiting_limit": 0,
}
OTHER_ACCOUNT_ID = "0123456789abcdef0123456789abcdef"  # well-formed, not the caller's


@dataclass
class Tokens:
    full: str  # run, read, edit
    read_only: str
    run_only: str


@dataclass
class Running:
    base: str
    app: TollgateApp
    account_id: str
    tokens: Tokens
    other_account_id: str
    other_token: str

    clients: dict[str, cloudflare.Cloudflare] = field(default_factory=dict)

    def client(self, token: str | None = None) -> cloudflare.Cloudflare:
        token = token or self.tokens.full
        if token not in self.clients:  # one client per token: building one costs ~10 ms
            self.clients[token] = cloudflare.Cloudflare(
                api_token=token, base_url=f"{self.base}/client/v4", max_retries=0
            )
        return self.clients[token]

    def create(self, gateway_id: str, **settings: Any) -> Any:
        return self.client().ai_gateway.create(
            account_id=self.account_id, id=gateway_id, **{**REQUIRED, **settings}
        )

    def ids(self) -> list[str]:
        listed = self.client().ai_gateway.list(account_id=self.account_id, per_page=50)
        return sorted(g.id for g in listed)

    def raw(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {token or self.tokens.full}"}
        url = f"{self.base}/client/v4/accounts/{self.account_id}/ai-gateway{path}"
        return httpx.request(method, url, headers=headers, **kw)


async def _seed(database_url: str) -> tuple[str, Tokens, str, str]:
    store = Store(database_url)
    try:
        account = await account_repo.create_account(store, "management tests")
        other = await account_repo.create_account(store, "someone else")

        async def token(account_id: str, *permissions: str) -> str:
            _, secret = await issue_token(
                store, account_id, name="t", permissions=frozenset(permissions)
            )
            return secret

        tokens = Tokens(
            full=await token(account.id, "run", "read", "edit"),
            read_only=await token(account.id, "read"),
            run_only=await token(account.id, "run"),
        )
        return account.id, tokens, other.id, await token(other.id, "run", "read", "edit")
    finally:
        await store.close()


@pytest.fixture
def start(make_settings: Callable[..., Settings]) -> Callable[..., AbstractContextManager[Running]]:
    """Start a real gateway (sandbox off: no simulator needed) with two seeded accounts."""

    @contextmanager
    def run(**env: str) -> Iterator[Running]:
        settings = make_settings({"TOLLGATE_SANDBOX__ENABLED": "false", **env})
        app = create_app(settings)
        with serve_in_thread(app) as base:  # the app migrates the database on start-up
            account_id, tokens, other_id, other_token = asyncio.run(_seed(settings.database.url))
            running = Running(base, app, account_id, tokens, other_id, other_token)
            yield running
            for client in running.clients.values():
                client.close()

    return run


@pytest.fixture
def gw(start: Callable[..., AbstractContextManager[Running]]) -> Iterator[Running]:
    with start() as running:
        yield running


# --- the happy path ---------------------------------------------------------------------------


FULL_SETTINGS: dict[str, Any] = {
    "cache_invalidate_on_update": True,
    "cache_ttl": 300,
    "collect_logs": False,
    "rate_limiting_interval": 60,
    "rate_limiting_limit": 100,
    "rate_limiting_technique": "sliding",
    "authentication": False,
    "log_management": 10_000,
    "log_management_strategy": "DELETE_OLDEST",
    "logpush": True,
    "logpush_public_key": "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
    "retry_max_attempts": 3,
    "retry_delay": 250,
    "retry_backoff": "exponential",
    "zdr": True,
    "byok_only": True,
    "workers_ai_billing_mode": "unified",
    "spend_limits": {
        "enabled": True,
        "rules": [
            {
                "id": "daily",
                "limit": 12.5,
                "limit_type": "cost",
                "window": 86400,
                "technique": "fixed",
                "metadata": {"user": {"mode": "partition"}},
                "model": {"mode": "filter", "values": ["openai/gpt-4o-mini"]},
            },
            {"limit": 100, "limit_type": "cost", "window": 2592000},
        ],
    },
    "dlp": {"action": "FLAG", "enabled": True, "profiles": ["p-1"]},
    "otel": [{"url": "https://otel.example.com/v1/traces", "headers": {"x-k": "v"}}],
    "guardrails": {"prompt": {"P1": "BLOCK", "S1": "FLAG"}, "response": {}},
    "stripe": {"authorization": "rk_test_x", "usage_events": [{"payload": "{}"}]},
    "store_id": "0f0e0d0c0b0a09080706050403020100",
    "log_classification": True,
}


def test_create_get_update_delete_round_trip_with_the_sdk(gw: Running) -> None:
    client = gw.client()
    created = client.ai_gateway.create(account_id=gw.account_id, id="prod-1_a", **FULL_SETTINGS)

    assert created.id == "prod-1_a" and created.is_default is False
    assert created.cache_ttl == 300 and created.rate_limiting_limit == 100
    assert created.retry_backoff == "exponential" and created.byok_only is True
    assert created.workers_ai_billing_mode == "unified" and created.log_classification is True
    assert created.store_id == FULL_SETTINGS["store_id"]
    assert created.created_at == created.modified_at
    assert created.created_at.tzinfo is not None
    rules = created.spend_limits.rules if created.spend_limits else None
    assert rules is not None and [r.id for r in rules] == ["daily", "rule-1"]
    assert rules[0].metadata and rules[0].metadata["user"].mode == "partition"
    assert rules[1].technique == "sliding" and rules[1].enabled is True
    assert created.dlp is not None and created.otel and created.guardrails and created.stripe

    fetched = client.ai_gateway.get("prod-1_a", account_id=gw.account_id)
    assert fetched.model_dump() == created.model_dump()

    updated = client.ai_gateway.update(
        "prod-1_a", account_id=gw.account_id, **{**REQUIRED, "cache_ttl": None, "zdr": True}
    )
    # PUT replaces every setting: what the body left out is back to its default.
    assert updated.cache_ttl is None and updated.zdr is True
    assert updated.authentication is True and updated.byok_only is False
    assert updated.rate_limiting_technique == "fixed" and updated.retry_max_attempts == 1
    assert updated.spend_limits is not None and updated.spend_limits.rules == []
    assert updated.dlp is None and updated.otel is None and updated.store_id is None
    assert updated.created_at == created.created_at
    assert updated.modified_at > created.modified_at
    refetched = client.ai_gateway.get("prod-1_a", account_id=gw.account_id)
    assert refetched.model_dump() == updated.model_dump()

    deleted = client.ai_gateway.delete("prod-1_a", account_id=gw.account_id)
    assert deleted.id == "prod-1_a" and deleted.zdr is True
    with pytest.raises(cloudflare.NotFoundError, match="prod-1_a"):
        client.ai_gateway.get("prod-1_a", account_id=gw.account_id)
    with pytest.raises(cloudflare.NotFoundError):
        client.ai_gateway.delete("prod-1_a", account_id=gw.account_id)
    assert gw.ids() == []


def test_optional_settings_take_cloudflares_defaults(gw: Running) -> None:
    created = gw.create("plain")

    assert created.authentication is True and created.collect_logs is True
    assert created.cache_ttl == 0 and created.rate_limiting_limit == 0
    assert created.rate_limiting_technique == "fixed" and created.logpush is False
    assert created.retry_max_attempts == 1 and created.retry_delay == 0
    assert created.zdr is False and created.byok_only is False
    assert created.workers_ai_billing_mode == "postpaid"
    assert created.spend_limits is not None and created.spend_limits.enabled is False
    body = gw.raw("GET", "/gateways/plain").json()
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    assert "dlp" not in body["result"]  # only echoed when given
    assert body["result"]["created_at"].endswith("Z")


def test_creating_default_explicitly_marks_it_default_and_conflicts_when_it_exists(
    gw: Running,
) -> None:
    created = gw.create("default", cache_ttl=60)
    assert created.is_default is True and created.cache_ttl == 60

    with pytest.raises(cloudflare.ConflictError, match="already exists"):
        gw.create("default")
    assert gw.client().ai_gateway.get("default", account_id=gw.account_id).cache_ttl == 60


# --- listing ----------------------------------------------------------------------------------


def test_list_pages_with_cloudflare_defaults_and_auto_pagination(gw: Running) -> None:
    for n in range(23):
        gw.create(f"gw-{n:02d}")
    client = gw.client()

    first = client.ai_gateway.list(account_id=gw.account_id)
    assert len(first.result) == 20
    assert first.result_info is not None and first.result_info.page == 1
    assert first.result_info.per_page == 20
    everything = [g.id for g in client.ai_gateway.list(account_id=gw.account_id)]
    assert sorted(everything) == [f"gw-{n:02d}" for n in range(23)]
    assert len(everything) == len(set(everything))

    small = [g.id for g in client.ai_gateway.list(account_id=gw.account_id, per_page=5)]
    assert small == everything  # newest first, the same order at any page size

    info = gw.raw("GET", "/gateways", params={"page": 5, "per_page": 5}).json()["result_info"]
    assert info == {"page": 5, "per_page": 5, "count": 3, "total_count": 23, "total_pages": 5}
    past_end = gw.raw("GET", "/gateways", params={"page": 9, "per_page": 5}).json()
    assert past_end["result"] == [] and past_end["result_info"]["total_count"] == 23


def test_list_rejects_bad_paging(gw: Running, subtests: pytest.Subtests) -> None:
    for params, name in (
        ({"page": "0"}, "page"),
        ({"per_page": "51"}, "per_page"),
        ({"per_page": "x"}, "per_page"),
        ({"page": "1.5"}, "page"),
    ):
        with subtests.test(params=params):
            response = gw.raw("GET", "/gateways", params=params)
            assert response.status_code == 400
            assert response.json()["errors"][0]["message"].startswith(f"{name} must be")


def test_search_filters_by_id(gw: Running) -> None:
    for gateway_id in ("alpha", "alphabet", "beta", "team_a", "teamxa"):
        gw.create(gateway_id)
    client = gw.client()

    def search(term: str) -> list[str]:
        return sorted(g.id for g in client.ai_gateway.list(account_id=gw.account_id, search=term))

    assert search("alpha") == ["alpha", "alphabet"]
    assert search("ALPHA") == ["alpha", "alphabet"]
    assert search("m_a") == ["team_a"]  # '_' is a literal, not a wildcard
    assert search("zzz") == []


# --- the URL endpoint -------------------------------------------------------------------------


def test_url_for_a_provider_uses_the_requests_base(gw: Running) -> None:
    gw.create("urls")
    urls = gw.client().ai_gateway.urls

    assert urls.get("openai", account_id=gw.account_id, gateway_id="urls") == (
        f"{gw.base}/v1/{gw.account_id}/urls/openai"
    )
    assert urls.get("custom-my-llm", account_id=gw.account_id, gateway_id="urls").endswith(
        "/urls/custom-my-llm"
    )
    # `default` needs no creation: the first authenticated data-plane request creates it.
    assert urls.get("anthropic", account_id=gw.account_id, gateway_id="default").endswith(
        f"/v1/{gw.account_id}/default/anthropic"
    )
    with pytest.raises(cloudflare.NotFoundError, match="Unknown provider 'nope'"):
        urls.get("nope", account_id=gw.account_id, gateway_id="urls")
    with pytest.raises(cloudflare.NotFoundError, match="missing"):
        urls.get("openai", account_id=gw.account_id, gateway_id="missing")
    with pytest.raises(cloudflare.PermissionDeniedError):
        gw.client(gw.tokens.run_only).ai_gateway.urls.get(
            "openai", account_id=gw.account_id, gateway_id="urls"
        )


def test_url_uses_the_configured_public_url(
    start: Callable[..., AbstractContextManager[Running]],
) -> None:
    with start(TOLLGATE_SERVER__PUBLIC_URL="https://ai.example.com/") as gw:
        url = gw.client().ai_gateway.urls.get(
            "google-ai-studio", account_id=gw.account_id, gateway_id="default"
        )
        assert url == f"https://ai.example.com/v1/{gw.account_id}/default/google-ai-studio"


# --- authentication and authorisation ---------------------------------------------------------


def test_missing_or_wrong_token_is_401(gw: Running) -> None:
    url = f"{gw.base}/client/v4/accounts/{gw.account_id}/ai-gateway/gateways"
    missing = httpx.get(url)
    assert missing.status_code == 401
    assert missing.json()["errors"][0]["error_code"] == "missing_token"
    assert missing.json()["success"] is False and missing.json()["result"] is None

    with pytest.raises(cloudflare.AuthenticationError, match="not valid"):
        gw.client("tg_0123456789abcdef" + "x" * 43).ai_gateway.list(account_id=gw.account_id)
    with pytest.raises(cloudflare.AuthenticationError):
        gw.client("not-a-token").ai_gateway.create(
            account_id=gw.account_id, id="sneaky", **REQUIRED
        )
    assert gw.ids() == []


def test_token_of_another_account_is_403_and_reveals_nothing(gw: Running) -> None:
    gw.create("private", cache_ttl=77)
    stranger = gw.client(gw.other_token).ai_gateway

    for call in (
        lambda: stranger.list(account_id=gw.account_id),
        lambda: stranger.get("private", account_id=gw.account_id),
        lambda: stranger.get("does-not-exist", account_id=gw.account_id),
        lambda: stranger.update("private", account_id=gw.account_id, **REQUIRED),
        lambda: stranger.delete("private", account_id=gw.account_id),
        lambda: stranger.create(account_id=gw.account_id, id="planted", **REQUIRED),
    ):
        with pytest.raises(cloudflare.PermissionDeniedError) as caught:
            call()
        text = caught.value.response.text
        assert "private" not in text and "cache_ttl" not in text and "77" not in text
        assert caught.value.body["result"] is None  # type: ignore[index]

    # an account id that exists nowhere is not the token's either
    with pytest.raises(cloudflare.PermissionDeniedError):
        gw.client().ai_gateway.list(account_id=OTHER_ACCOUNT_ID)
    assert gw.ids() == ["private"]
    assert gw.client().ai_gateway.get("private", account_id=gw.account_id).cache_ttl == 77


def test_a_token_without_edit_can_read_but_not_write(gw: Running) -> None:
    gw.create("kept", cache_ttl=5)
    for token in (gw.tokens.read_only, gw.tokens.run_only):
        writer = gw.client(token).ai_gateway
        with pytest.raises(cloudflare.PermissionDeniedError, match="'edit' permission"):
            writer.create(account_id=gw.account_id, id="new-one", **REQUIRED)
        with pytest.raises(cloudflare.PermissionDeniedError, match="'edit' permission"):
            writer.update("kept", account_id=gw.account_id, **{**REQUIRED, "cache_ttl": 9})
        with pytest.raises(cloudflare.PermissionDeniedError, match="'edit' permission"):
            writer.delete("kept", account_id=gw.account_id)

    reader = gw.client(gw.tokens.read_only).ai_gateway
    assert [g.id for g in reader.list(account_id=gw.account_id)] == ["kept"]
    assert reader.get("kept", account_id=gw.account_id).cache_ttl == 5
    with pytest.raises(cloudflare.PermissionDeniedError, match="'read' permission"):
        gw.client(gw.tokens.run_only).ai_gateway.get("kept", account_id=gw.account_id)


def test_malformed_account_id_is_404(gw: Running, subtests: pytest.Subtests) -> None:
    for account_id in ("ABCDEF0123456789ABCDEF0123456789", "short", "x" * 33):
        with subtests.test(account_id=account_id):
            with pytest.raises(cloudflare.NotFoundError, match="32 lowercase hexadecimal") as err:
                gw.client().ai_gateway.list(account_id=account_id)
            assert err.value.body["errors"][0]["error_code"] == "account_not_found"  # type: ignore[index]


# --- validation --------------------------------------------------------------------------------

BAD_CREATES: list[tuple[dict[str, Any], str]] = [
    ({"id": "Upper"}, "id must be 1 to 64 characters"),
    ({"id": "has space"}, "id must be"),
    ({"id": ""}, "id must be"),
    ({"id": "x" * 65}, "id must be"),
    ({"cache_ttl": -1}, "cache_ttl must be an integer of seconds from 0 to 2592000"),
    ({"cache_ttl": 2592001}, "cache_ttl must be"),
    ({"collect_logs": "yes"}, 'collect_logs must be true or false; got "yes"'),
    ({"rate_limiting_limit": -5}, "rate_limiting_limit must be"),
    ({"rate_limiting_interval": 1.5}, "rate_limiting_interval must be"),
    ({"retry_max_attempts": 6}, "retry_max_attempts must be an integer of attempts from 1 to 5"),
    ({"retry_delay": 5001}, "retry_delay must be"),
    ({"retry_backoff": "random"}, 'retry_backoff must be "constant" or "linear"'),
    ({"rate_limiting_technique": "leaky"}, "rate_limiting_technique must be"),
    ({"log_management": 5}, "log_management must be an integer of logs from 10000"),
    ({"workers_ai_billing_mode": "prepaid"}, "workers_ai_billing_mode must be"),
    ({"zdr": 1}, "zdr must be true or false"),
    (
        {"spend_limits": {"rules": [{"limit": 0, "limit_type": "cost", "window": 60}]}},
        "spend_limits.rules[0].limit must be a number of USD above 0",
    ),
]


def test_invalid_fields_are_400_naming_the_field_and_change_nothing(
    gw: Running, subtests: pytest.Subtests
) -> None:
    gw.create("existing")
    for overrides, message in BAD_CREATES:
        with subtests.test(overrides=overrides):
            body = {"id": "fresh", **REQUIRED, **overrides}
            with pytest.raises(cloudflare.BadRequestError, match=re.escape(message)) as caught:
                gw.client().ai_gateway.create(account_id=gw.account_id, **body)
            error = caught.value.body["errors"][0]  # type: ignore[index]
            assert error["error_code"] == "invalid_field"
            assert gw.ids() == ["existing"]


def test_unknown_and_missing_fields_are_400_naming_them(gw: Running) -> None:
    client = gw.client().ai_gateway
    with pytest.raises(cloudflare.BadRequestError, match="unknown field 'colour'"):
        client.create(account_id=gw.account_id, id="a", **REQUIRED, extra_body={"colour": "red"})

    response = gw.raw("POST", "/gateways", json={"id": "a", "cache_ttl": 0})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["error_code"] == "missing_field"
    assert "cache_invalidate_on_update" in error["message"]

    for body, expected in (
        (b"{not json", "not valid JSON"),
        (b"", "body is empty"),
        (b"[1, 2]", "must be a JSON object"),
    ):
        response = gw.raw("POST", "/gateways", content=body)
        assert response.status_code == 400 and expected in response.text
    assert gw.ids() == []


def test_duplicate_id_is_409_and_changes_nothing(gw: Running) -> None:
    gw.create("twin", cache_ttl=10)
    with pytest.raises(cloudflare.ConflictError, match="'twin' already exists"):
        gw.create("twin", cache_ttl=20)
    assert gw.ids() == ["twin"]
    assert gw.client().ai_gateway.get("twin", account_id=gw.account_id).cache_ttl == 10


def test_failed_updates_change_nothing(gw: Running) -> None:
    gw.create("steady", cache_ttl=10)
    client = gw.client().ai_gateway
    before = client.get("steady", account_id=gw.account_id)

    with pytest.raises(cloudflare.BadRequestError, match="retry_delay"):
        client.update("steady", account_id=gw.account_id, **REQUIRED, retry_delay=-1)
    with pytest.raises(cloudflare.BadRequestError, match="id cannot be changed"):
        client.update("steady", account_id=gw.account_id, **REQUIRED, extra_body={"id": "moved"})
    with pytest.raises(cloudflare.NotFoundError, match="'ghost' does not exist"):
        client.update("ghost", account_id=gw.account_id, **REQUIRED)

    assert client.get("steady", account_id=gw.account_id) == before
    assert gw.ids() == ["steady"]


def test_put_accepts_back_the_object_it_read(gw: Running) -> None:
    created = gw.raw("POST", "/gateways", json={"id": "echo", **REQUIRED, "zdr": True})
    read_back = created.json()["result"]
    read_back["cache_ttl"] = 120

    response = gw.raw("PUT", "/gateways/echo", json=read_back)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["cache_ttl"] == 120
    assert response.json()["result"]["zdr"] is True


# --- the data plane sees changes at once --------------------------------------------------------


def test_writes_drop_the_data_planes_cached_gateway(
    gw: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped: list[tuple[str, str]] = []
    cache = gw.app.services.gateways
    original = cache.invalidate

    def record(account_id: str, gateway_id: str) -> None:
        dropped.append((account_id, gateway_id))
        original(account_id, gateway_id)

    monkeypatch.setattr(cache, "invalidate", record)
    client = gw.client().ai_gateway
    gw.create("cached")
    client.update("cached", account_id=gw.account_id, **REQUIRED)
    client.delete("cached", account_id=gw.account_id)

    assert dropped == [(gw.account_id, "cached")] * 3


# --- PostgreSQL --------------------------------------------------------------------------------


@pytest.mark.postgres
def test_round_trip_on_postgresql(
    start: Callable[..., AbstractContextManager[Running]], postgres_url: str
) -> None:
    with start(TOLLGATE_DATABASE_URL=postgres_url) as gw:
        gw.create("pg-one", cache_ttl=30)
        gw.create("pg_two")
        client = gw.client().ai_gateway
        assert [g.id for g in client.list(account_id=gw.account_id, search="PG_")] == ["pg_two"]
        assert client.update("pg-one", account_id=gw.account_id, **REQUIRED).cache_ttl == 0
        assert client.delete("pg-one", account_id=gw.account_id).id == "pg-one"
        assert gw.ids() == ["pg_two"]


def test_unknown_routes_and_methods_answer_in_the_v4_envelope(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings({"TOLLGATE_SANDBOX__ENABLED": "false"})
    with serve_in_thread(create_app(settings)) as url:
        missing = httpx.get(f"{url}/client/v4/accounts/{'a' * 32}/ai-gateway/nothing-here")
        assert missing.status_code == 404
        assert missing.json()["success"] is False
        assert missing.json()["errors"][0]["error_code"] == "route_not_found"
        wrong = httpx.patch(f"{url}/client/v4/accounts/{'a' * 32}/ai-gateway/gateways")
        assert wrong.status_code == 405
        assert wrong.json()["errors"][0]["error_code"] == "method_not_allowed"
        admin = httpx.get(f"{url}/admin/v1/nothing-here")
        assert admin.status_code == 404 and admin.json()["error"]["code"] == "route_not_found"
