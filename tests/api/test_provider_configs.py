"""The provider_configs API (stored BYOK keys) against a real server, on SQLite and PostgreSQL:
the official `cloudflare` SDK for create and list, httpx for get, PUT and DELETE (not in the SDK).
Every refusal is checked to change nothing."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import cloudflare
import httpx
import pytest

from tests.support.server import serve_in_thread
from tollgate.app import create_app
from tollgate.operator import issue_token
from tollgate.settings import Settings
from tollgate.store import Store
from tollgate.store import accounts as account_repo

MASTER_KEY = base64.b64encode(b"k" * 32).decode()
SECRET = "sk-proj-abcdefghijklmnopqrstuvwxyz"


@dataclass
class Api:
    base: str
    account_id: str
    full: str
    read_only: str
    other_account_id: str
    other_token: str

    def sdk(self, token: str | None = None) -> Any:
        client = cloudflare.Cloudflare(
            api_token=token or self.full, base_url=f"{self.base}/client/v4", max_retries=0
        )
        return client.ai_gateway.provider_configs

    def create(self, gateway_id: str = "default", token: str | None = None, **fields: Any) -> Any:
        body = {"alias": "default", "default_config": False, "provider_slug": "openai"}
        body.update(fields)
        return self.sdk(token).create(gateway_id, account_id=self.account_id, **body)

    def raw(
        self, method: str, path: str = "", gateway_id: str = "default", token: str | None = None,
        **kw: Any,
    ) -> httpx.Response:  # fmt: skip
        url = (
            f"{self.base}/client/v4/accounts/{self.account_id}/ai-gateway/gateways/{gateway_id}"
            f"/provider_configs{path}"
        )
        headers = {"authorization": f"Bearer {token or self.full}"}
        return httpx.request(method, url, headers=headers, **kw)

    def listed(self, gateway_id: str = "default") -> list[dict[str, Any]]:
        response = self.raw("GET", gateway_id=gateway_id)
        assert response.status_code == 200, response.text
        return list(response.json()["result"])


async def _seed(database_url: str) -> tuple[str, str, str, str, str]:
    store = Store(database_url)
    try:
        account = await account_repo.create_account(store, "stored keys")
        other = await account_repo.create_account(store, "someone else")

        async def token(account_id: str, *permissions: str) -> str:
            _, secret = await issue_token(
                store, account_id, name="t", permissions=frozenset(permissions)
            )
            return secret

        return (
            account.id,
            await token(account.id, "run", "read", "edit"),
            await token(account.id, "read"),
            other.id,
            await token(other.id, "run", "read", "edit"),
        )
    finally:
        await store.close()


@pytest.fixture
def start(
    make_settings: Callable[..., Settings], database_url: str
) -> Callable[..., AbstractContextManager[Api]]:
    @contextmanager
    def run(**env: str) -> Iterator[Api]:
        settings = make_settings(
            {"TOLLGATE_SANDBOX__ENABLED": "false", "TOLLGATE_DATABASE_URL": database_url, **env}
        )
        with serve_in_thread(create_app(settings)) as base:  # migrates on start-up
            yield Api(base, *asyncio.run(_seed(database_url)))

    return run


@pytest.fixture
def api(start: Callable[..., AbstractContextManager[Api]]) -> Iterator[Api]:
    with start(TOLLGATE_OPERATOR__MASTER_KEY=MASTER_KEY) as running:
        yield running


def test_create_list_get_update_delete_with_the_sdk(api: Api) -> None:
    created = api.create(secret=SECRET, rate_limit=10, rate_limit_period=30)
    assert created.provider_slug == "openai" and created.alias == "default"
    assert created.gateway_id == "default" and created.default_config is False
    assert created.secret_preview == "sk-...wxyz" and len(created.secret_id) == 32
    assert created.rate_limit == 10 and created.rate_limit_period == 30
    assert created.modified_at.tzinfo is not None

    second = api.create(secret="sk-ant-0123456789abcdef", provider_slug="anthropic")
    third = api.create(secret="short-key", alias="b", default_config=True)
    assert third.secret_preview == "********"  # a short key shows nothing
    listed = list(api.sdk().list("default", account_id=api.account_id, per_page=1))
    assert [c.id for c in listed] == [second.id, third.id, created.id]  # provider, then alias

    fetched = api.raw("GET", f"/{created.id}").json()["result"]
    assert fetched == created.model_dump(mode="json") | {"modified_at": fetched["modified_at"]}
    assert set(fetched) == {
        "id", "gateway_id", "alias", "default_config", "provider_slug", "secret_id",
        "secret_preview", "rate_limit", "rate_limit_period", "modified_at",
    }  # fmt: skip

    # marking another key of the provider the default unmarks the previous default
    updated = api.raw("PUT", f"/{created.id}", json={"default_config": True, "rate_limit": None})
    assert updated.status_code == 200, updated.text
    assert updated.json()["result"]["default_config"] is True
    assert updated.json()["result"]["rate_limit"] is None
    assert updated.json()["result"]["secret_id"] == created.secret_id  # the key did not change
    by_id = {c["id"]: c for c in api.listed()}
    assert by_id[third.id]["default_config"] is False
    assert by_id[second.id]["default_config"] is False

    # a read-back object can be sent as the PUT body
    assert api.raw("PUT", f"/{created.id}", json=by_id[created.id]).status_code == 200

    deleted = api.raw("DELETE", f"/{created.id}")
    assert deleted.status_code == 200 and deleted.json()["result"]["id"] == created.id
    assert api.raw("GET", f"/{created.id}").status_code == 404
    assert api.raw("DELETE", f"/{created.id}").status_code == 404
    assert {c["id"] for c in api.listed()} == {second.id, third.id}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"provider_slug": "openia"}, "provider_slug"),
        ({"provider_slug": "custom-mine"}, "provider_slug"),
        ({"alias": "has space"}, "alias"),
        ({"alias": ""}, "alias"),
        ({"default_config": "yes"}, "default_config"),
        ({"rate_limit": -1}, "rate_limit"),
        ({"rate_limit_period": 0}, "rate_limit_period"),
        ({"secret": ""}, "secret"),
        ({"secret": "sk-line\nbreak"}, "secret"),
        ({"secret": 42}, "secret"),
        ({"secret_id": "abc"}, "secret_id"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_create_bodies_are_400s_naming_the_field_and_store_nothing(
    api: Api, fields: dict[str, Any], named: str
) -> None:
    body = {"provider_slug": "openai", "secret": SECRET, **fields}
    response = api.raw("POST", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["errors"][0]
    assert named in error["message"]
    assert "sk-line" not in response.text and SECRET not in response.text
    assert api.listed() == []


def test_missing_secret_and_missing_provider_are_named(api: Api) -> None:
    with pytest.raises(cloudflare.BadRequestError, match="secret is required"):
        api.create()  # the SDK sends no secret
    response = api.raw("POST", json={"secret": SECRET})
    assert response.status_code == 400 and "provider_slug is required" in response.text
    assert api.raw("POST", json=["not", "an", "object"]).status_code == 400
    assert api.listed() == []


def test_a_duplicate_alias_is_a_409(api: Api) -> None:
    api.create(secret=SECRET)
    with pytest.raises(cloudflare.APIStatusError) as conflict:
        api.create(secret="sk-other-0123456789abcdef")
    assert conflict.value.status_code == 409 and "alias 'default'" in str(conflict.value)
    assert len(api.listed()) == 1
    api.create(secret=SECRET, provider_slug="anthropic")  # another provider may use the alias


def test_bad_updates_change_nothing(api: Api) -> None:
    created = api.create(secret=SECRET)
    other = api.create(secret=SECRET, alias="other")
    before = api.listed()
    for body, status, named in (
        ({"provider_slug": "anthropic"}, 400, "provider_slug"),
        ({"secret": "  "}, 400, "secret"),
        ({"alias": "other"}, 409, "alias"),
        ({"default_config": 1}, 400, "default_config"),
        ({"nope": 1}, 400, "nope"),
    ):
        response = api.raw("PUT", f"/{created.id}", json=body)
        assert response.status_code == status, (body, response.text)
        assert named in response.json()["errors"][0]["message"]
    assert api.listed() == before
    assert api.raw("PUT", "/" + "f" * 32, json={"secret": SECRET}).status_code == 404
    assert other.id in {c["id"] for c in before}


def test_permissions_accounts_and_gateways(api: Api) -> None:
    created = api.create(secret=SECRET)
    with pytest.raises(cloudflare.PermissionDeniedError):
        api.create(token=api.read_only, secret=SECRET, alias="ro")
    assert api.raw("GET", f"/{created.id}", token=api.read_only).status_code == 200
    assert api.raw("DELETE", f"/{created.id}", token=api.read_only).status_code == 403
    # a token of another account sees nothing of this one
    with pytest.raises(cloudflare.PermissionDeniedError):
        list(api.sdk(api.other_token).list("default", account_id=api.account_id))
    assert api.raw("GET", f"/{created.id}", token=api.other_token).status_code == 403
    response = httpx.get(api.raw("GET").request.url)  # no token at all
    assert response.status_code == 401
    # a gateway that does not exist
    with pytest.raises(cloudflare.NotFoundError, match="missing-gw"):
        api.create("missing-gw", secret=SECRET)
    assert api.raw("GET", gateway_id="missing-gw").status_code == 404
    assert api.raw("GET", f"/{created.id}", gateway_id="missing-gw").status_code == 404
    assert [c["id"] for c in api.listed()] == [created.id]


def test_storing_a_key_without_a_master_key_names_the_setting(
    start: Callable[..., AbstractContextManager[Api]],
) -> None:
    with start() as api:
        with pytest.raises(cloudflare.APIStatusError) as refused:
            api.create(secret=SECRET)
        assert refused.value.status_code == 503
        assert "operator.master_key" in str(refused.value)
        assert "TOLLGATE_OPERATOR__MASTER_KEY" in str(refused.value)
        assert SECRET not in str(refused.value.response.text)
        assert api.listed() == []
