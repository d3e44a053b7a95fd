"""The custom providers API against a real server (the official `cloudflare` SDK where it has the
call, httpx for PATCH), plus its repository and the data plane's cache on both engines."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import cloudflare
import httpx
import pytest

from tests.support.server import serve_in_thread
from tollgate.app import TollgateApp, create_app
from tollgate.custom_provider_cache import CustomProvider, CustomProviderCache
from tollgate.operator import issue_token
from tollgate.settings import Settings
from tollgate.store import Account, Store
from tollgate.store import accounts as account_repo
from tollgate.store import custom_providers as repo
from tollgate.store.migrate import all_revisions, current_revision, migrate

OTHER_ACCOUNT_ID = "0123456789abcdef0123456789abcdef"  # well-formed, not the caller's
MISSING_ID = "f" * 32


@dataclass
class Running:
    base: str
    app: TollgateApp
    cache: CustomProviderCache
    cache_store: Store
    account_id: str
    full: str  # run, read, edit
    read_only: str
    run_only: str
    other_account_id: str
    other_token: str
    clients: dict[str, cloudflare.Cloudflare] = field(default_factory=dict)

    def sdk(self, token: str | None = None) -> Any:
        token = token or self.full
        if token not in self.clients:
            self.clients[token] = cloudflare.Cloudflare(
                api_token=token, base_url=f"{self.base}/client/v4", max_retries=0
            )
        return self.clients[token].ai_gateway.custom_providers

    def create(self, slug: str, **fields: Any) -> Any:
        body = {"name": f"Provider {slug}", "base_url": f"https://{slug}.example/v1", **fields}
        return self.sdk().create(account_id=self.account_id, slug=slug, **body)

    def raw(self, method: str, path: str = "", token: str | None = None, **kw: Any) -> Any:
        headers = {"authorization": f"Bearer {token or self.full}"}
        url = f"{self.base}/client/v4/accounts/{self.account_id}/ai-gateway/custom-providers"
        return httpx.request(method, url + path, headers=headers, **kw)

    def patch(self, provider_id: str, token: str | None = None, **body: Any) -> Any:
        return self.raw("PATCH", f"/{provider_id}", token, json=body)

    def slugs(self, **params: Any) -> list[str]:
        return [p.slug for p in self.sdk().list(account_id=self.account_id, **params)]


async def _seed(database_url: str) -> tuple[str, str, str, str, str, str]:
    store = Store(database_url)
    try:
        account = await account_repo.create_account(store, "custom provider tests")
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
            await token(account.id, "run"),
            other.id,
            await token(other.id, "run", "read", "edit"),
        )
    finally:
        await store.close()


@pytest.fixture
def start(make_settings: Callable[..., Settings]) -> Callable[..., AbstractContextManager[Running]]:
    """A real gateway with the custom providers router mounted and two seeded accounts.

    The router's cache reads through a store of its own, so a test can resolve through it from
    its own event loop (the server's store belongs to the server's loop).
    """

    @contextmanager
    def run(**env: str) -> Iterator[Running]:
        settings = make_settings({"TOLLGATE_SANDBOX__ENABLED": "false", **env})
        app = create_app(settings)
        cache_store = Store(settings.database.url)
        cache = CustomProviderCache(cache_store, ttl=3600)
        app.services.custom_providers = cache  # the routes invalidate the services' cache
        with serve_in_thread(app) as base:  # the app migrates the database on start-up
            seeded = asyncio.run(_seed(settings.database.url))
            running = Running(base, app, cache, cache_store, *seeded)
            yield running
            for client in running.clients.values():
                client.close()
        asyncio.run(cache_store.close())

    return run


@pytest.fixture
def cp(start: Callable[..., AbstractContextManager[Running]]) -> Iterator[Running]:
    with start() as running:
        yield running


# --- the happy path ---------------------------------------------------------------------------

FULL: dict[str, Any] = {
    "name": "Acme LLM",
    "base_url": "https://llm.acme.example/v1",
    "description": "our fine-tune",
    "link": "https://docs.acme.example",
    "enable": True,
    "beta": True,
    "curl_example": "curl https://...",
    "js_example": "fetch('https://...')",
    "headers": '{"X-Api-Key": "sk-acme", "x-org": "acme"}',
    "position": 2,
}


def test_create_get_list_delete_round_trip_with_the_sdk(cp: Running) -> None:
    sdk = cp.sdk()
    created = sdk.create(account_id=cp.account_id, slug="acme", **FULL)

    assert re.fullmatch(r"[0-9a-f]{32}", created.id)
    assert created.slug == "acme" and created.name == "Acme LLM"
    assert created.base_url == FULL["base_url"] and created.link == FULL["link"]
    assert created.enable is True and created.beta is True and created.position == 2
    assert created.headers == '{"X-Api-Key":"sk-acme","x-org":"acme"}'
    assert created.curl_example == FULL["curl_example"] and created.logo is None
    assert created.created_at == created.modified_at and created.created_at.tzinfo is not None

    fetched = sdk.get(created.id, account_id=cp.account_id)
    assert fetched.model_dump() == created.model_dump()
    listed = list(sdk.list(account_id=cp.account_id))
    assert [p.model_dump() for p in listed] == [created.model_dump()]

    deleted = sdk.delete(created.id, account_id=cp.account_id)
    assert deleted.model_dump() == created.model_dump()
    with pytest.raises(cloudflare.NotFoundError, match=created.id):
        sdk.get(created.id, account_id=cp.account_id)
    with pytest.raises(cloudflare.NotFoundError):
        sdk.delete(created.id, account_id=cp.account_id)
    assert cp.slugs() == []


def test_a_minimal_create_has_every_field_with_cloudflares_defaults(cp: Running) -> None:
    response = cp.raw("POST", json={"name": "n", "slug": "plain", "base_url": "https://p.example"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    result = body["result"]
    assert result["enable"] is False and result["beta"] is False
    for name in ("description", "link", "curl_example", "js_example", "headers", "position"):
        assert result[name] is None
    assert result["logo"] is None and result["created_at"].endswith("Z")


def test_patch_changes_only_the_fields_sent(cp: Running) -> None:
    created = cp.create("patchy", **{k: v for k, v in FULL.items() if k != "name"})

    response = cp.patch(created.id, enable=False, description=None, headers="")
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["enable"] is False and result["description"] is None
    assert result["headers"] is None
    assert result["beta"] is True and result["position"] == 2 and result["slug"] == "patchy"
    assert result["base_url"] == FULL["base_url"] and result["name"] == "Provider patchy"

    fetched = cp.sdk().get(created.id, account_id=cp.account_id)
    assert fetched.enable is False and fetched.headers is None
    assert fetched.created_at == created.created_at and fetched.modified_at > created.modified_at

    renamed = cp.patch(created.id, slug="renamed", base_url="https://new.example/").json()
    assert renamed["result"]["slug"] == "renamed"
    assert renamed["result"]["base_url"] == "https://new.example/"

    # an empty PATCH changes nothing, not even modified_at; an object read back is accepted
    before = cp.raw("GET", f"/{created.id}").json()["result"]
    assert cp.patch(created.id).json()["result"] == before
    echoed = cp.raw("PATCH", f"/{created.id}", json={**before, "name": "Echo"})
    assert echoed.status_code == 200, echoed.text
    assert echoed.json()["result"]["name"] == "Echo"


# --- listing ----------------------------------------------------------------------------------


def test_list_pages_with_cloudflare_defaults_and_auto_pagination(cp: Running) -> None:
    for n in range(23):
        cp.create(f"cp-{n:02d}")

    first = cp.sdk().list(account_id=cp.account_id)
    assert len(first.result) == 20
    assert first.result_info is not None and first.result_info.per_page == 20
    assert cp.slugs() == [f"cp-{n:02d}" for n in range(23)]  # name ASC, every page
    assert cp.slugs(per_page=5) == cp.slugs()

    info = cp.raw("GET", params={"page": 5, "per_page": 5}).json()["result_info"]
    assert info == {"page": 5, "per_page": 5, "count": 3, "total_count": 23, "total_pages": 5}
    assert len(cp.raw("GET", params={"per_page": 100}).json()["result"]) == 23
    past_end = cp.raw("GET", params={"page": 9, "per_page": 5}).json()
    assert past_end["result"] == [] and past_end["result_info"]["total_count"] == 23


def test_list_filters_by_enable_beta_and_search(cp: Running) -> None:
    cp.create("alpha", name="Alpha Models", enable=True)
    cp.create("alphabet", name="Letters", enable=True, beta=True)
    cp.create("beta-one", name="Second", beta=True)
    found = cp.create("team-a", name="Team_A")

    assert cp.slugs(enable=True) == ["alpha", "alphabet"]
    assert cp.slugs(enable=False) == ["beta-one", "team-a"]
    assert cp.slugs(beta=True) == ["alphabet", "beta-one"]
    assert cp.slugs(enable=True, beta=False) == ["alpha"]
    assert cp.slugs(search="ALPHA") == ["alpha", "alphabet"]  # slug or name, any case
    assert cp.slugs(search="letters") == ["alphabet"]
    assert cp.slugs(search="m_a") == ["team-a"]  # '_' is a literal, not a wildcard
    assert cp.slugs(search=found.id[:12]) == ["team-a"]  # by id too
    assert cp.slugs(search="zzz") == []


def test_list_orders_by_name_by_default_and_by_order_by(cp: Running) -> None:
    cp.create("c-slug", name="banana", position=1)
    cp.create("a-slug", name="Cherry")
    cp.create("b-slug", name="apple", position=0)

    def order(order_by: str) -> list[str]:
        result = cp.raw("GET", params={"order_by": order_by}).json()["result"]
        return [p["slug"] for p in result]

    assert cp.slugs() == ["b-slug", "c-slug", "a-slug"]  # name ASC, ignoring case
    assert order("name DESC") == ["a-slug", "c-slug", "b-slug"]
    assert order("slug") == ["a-slug", "b-slug", "c-slug"]
    assert order("position ASC") == ["b-slug", "c-slug", "a-slug"]  # no position: last
    assert order("position DESC") == ["c-slug", "b-slug", "a-slug"]
    assert order("created_at desc") == ["b-slug", "a-slug", "c-slug"]


def test_list_rejects_bad_queries_naming_the_parameter(
    cp: Running, subtests: pytest.Subtests
) -> None:
    for params, name in (
        ({"page": "0"}, "page"),
        ({"per_page": "101"}, "per_page"),
        ({"per_page": "x"}, "per_page"),
        ({"enable": "yes"}, "enable"),
        ({"beta": "1"}, "beta"),
        ({"order_by": "base_url ASC"}, "order_by"),
        ({"search": "s" * 201}, "search"),
    ):
        with subtests.test(params=params):
            response = cp.raw("GET", params=params)
            assert response.status_code == 400
            assert response.json()["errors"][0]["message"].startswith(f"{name} must be")


# --- validation --------------------------------------------------------------------------------

# (body overrides, message fragment); each is refused on create and on PATCH
BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"slug": "Has-Caps"}, "slug must be 1 to 64 characters of lowercase letters"),
    ({"slug": "x" * 65}, "slug must be"),
    ({"slug": "under_score"}, "slug must be"),
    ({"name": ""}, "name must be a non-empty string"),
    ({"base_url": "http://llm.example"}, "base_url must be an https:// URL: http:// is refused"),
    ({"base_url": "https://u:p@llm.example"}, "base_url must not contain a user name"),
    ({"base_url": "https://llm.example/#x"}, "base_url must not contain a fragment"),
    ({"base_url": "https:///v1"}, "base_url must be an https:// URL with a host"),
    ({"base_url": "https://llm.example/?k=1"}, "base_url must not contain a query string"),
    ({"base_url": "https://169.254.169.254/"}, "base_url must point at a public host"),
    ({"enable": "true"}, "enable must be true or false"),
    ({"beta": 0}, "beta must be true or false"),
    ({"position": -1}, "position must be an integer from 0"),
    ({"link": "not a url"}, "link must be an http:// or https:// URL"),
    ({"description": 12}, "description must be a string"),
    ({"headers": {"x-api-key": "k"}}, "headers must be a JSON object of header names"),
    ({"headers": "{nope"}, "headers must be a JSON object"),
    ({"headers": '{"Host": "evil.example"}'}, "headers cannot set 'Host'"),
    ({"headers": '{"x-a": "a\\r\\nb"}'}, "headers header 'x-a' must have a value"),
    ({"headers": '{"cf-aig-authorization": "x"}'}, "cf-aig-* headers are for the gateway"),
]


def test_invalid_fields_are_400_naming_the_field_and_change_nothing(
    cp: Running, subtests: pytest.Subtests
) -> None:
    kept = cp.create("kept", enable=True)
    before = cp.raw("GET", f"/{kept.id}").json()["result"]
    for overrides, message in BAD_FIELDS:
        field_name = next(iter(overrides))
        with subtests.test(overrides=overrides):
            body = {"name": "n", "slug": "fresh", "base_url": "https://f.example", **overrides}
            created = cp.raw("POST", json=body)
            assert created.status_code == 400, created.text
            error = created.json()["errors"][0]
            assert message in error["message"] and error["error_code"] == "invalid_field"
            patched = cp.patch(kept.id, **overrides)
            assert patched.status_code == 400, patched.text
            assert message in patched.json()["errors"][0]["message"]
            assert field_name in patched.json()["errors"][0]["message"]
            assert cp.slugs() == ["kept"]
            assert cp.raw("GET", f"/{kept.id}").json()["result"] == before


def test_unknown_missing_and_malformed_bodies_are_400(cp: Running) -> None:
    with pytest.raises(cloudflare.BadRequestError, match="unknown field 'colour'") as caught:
        cp.create("a", extra_body={"colour": "red"})
    assert caught.value.body["errors"][0]["error_code"] == "unknown_field"  # type: ignore[index]

    missing = cp.raw("POST", json={"name": "n", "slug": "a"})
    assert missing.status_code == 400
    assert missing.json()["errors"][0]["error_code"] == "missing_field"
    assert "'base_url'" in missing.json()["errors"][0]["message"]

    with_id = cp.raw(
        "POST", json={"id": "a" * 32, "name": "n", "slug": "a", "base_url": "https://a.b"}
    )
    assert with_id.status_code == 400 and "id is assigned by tollgate" in with_id.text

    for body, expected in (
        (b"{not json", "not valid JSON"),
        (b"", "body is empty"),
        (b"[1, 2]", "must be a JSON object"),
    ):
        assert cp.raw("POST", content=body).status_code == 400
        assert expected in cp.raw("POST", content=body).text
    kept = cp.create("kept")
    moved = cp.patch(kept.id, id=MISSING_ID)
    assert moved.status_code == 400 and "id cannot be changed" in moved.text
    assert cp.slugs() == ["kept"]


def test_a_duplicate_slug_is_409_and_changes_nothing(cp: Running) -> None:
    first = cp.create("twin", name="First")
    with pytest.raises(cloudflare.ConflictError, match="'twin' is already used") as caught:
        cp.create("twin", name="Second")
    assert first.id in caught.value.response.text

    other = cp.create("other")
    clash = cp.patch(other.id, slug="twin", name="Changed")
    assert clash.status_code == 409 and clash.json()["errors"][0]["error_code"] == "already_exists"
    assert cp.slugs() == ["twin", "other"]  # by name: "First", "Provider other"
    assert cp.sdk().get(other.id, account_id=cp.account_id).name == "Provider other"

    # slugs are unique per account: another account may use the same one
    theirs = cp.sdk(cp.other_token).create(
        account_id=cp.other_account_id, slug="twin", name="Theirs", base_url="https://t.example"
    )
    assert theirs.slug == "twin"


def test_http_and_private_base_urls_are_refused_by_default(cp: Running) -> None:
    refusals = {
        "http://llm.example/v1": "allow_http",
        "https://127.0.0.1:8000/v1": "allowed_private_networks",
        "https://localhost/v1": "allowed_private_networks",
    }
    for url, setting in refusals.items():
        with pytest.raises(cloudflare.BadRequestError, match="base_url") as caught:
            cp.create("local", base_url=url)
        assert setting in caught.value.response.text
    assert cp.slugs() == []


def test_http_base_urls_are_accepted_when_the_operator_allows_them(
    start: Callable[..., AbstractContextManager[Running]],
) -> None:
    with start(
        TOLLGATE_CUSTOM_PROVIDERS__ALLOW_HTTP="true",
        TOLLGATE_UPSTREAM__ALLOWED_PRIVATE_NETWORKS="127.0.0.0/8,::1/128",
    ) as cp:
        created = cp.create("vllm", base_url="http://127.0.0.1:8000/v1")
        assert created.base_url == "http://127.0.0.1:8000/v1"
        patched = cp.patch(created.id, base_url="http://localhost:11434")
        assert patched.status_code == 200 and patched.json()["result"]["base_url"].startswith(
            "http://localhost"
        )
        refused = cp.patch(created.id, base_url="http://u:p@localhost:11434")
        assert refused.status_code == 400 and "user name or password" in refused.text


# --- authentication and authorisation ---------------------------------------------------------


def test_missing_or_wrong_token_is_401(cp: Running) -> None:
    url = f"{cp.base}/client/v4/accounts/{cp.account_id}/ai-gateway/custom-providers"
    missing = httpx.get(url)
    assert missing.status_code == 401
    assert missing.json()["errors"][0]["error_code"] == "missing_token"
    with pytest.raises(cloudflare.AuthenticationError, match="not valid"):
        cp.sdk("tg_0123456789abcdef" + "x" * 43).list(account_id=cp.account_id)
    sneaky = httpx.post(url, json={"name": "n", "slug": "s", "base_url": "bad"})
    assert sneaky.status_code == 401  # authentication comes before the body
    assert cp.slugs() == []


def test_token_of_another_account_is_403_and_reveals_nothing(cp: Running) -> None:
    private = cp.create("private", name="Secret Name", headers='{"x-api-key": "sk-hidden"}')
    stranger = cp.sdk(cp.other_token)
    calls: list[Callable[[], Any]] = [
        lambda: stranger.list(account_id=cp.account_id),
        lambda: stranger.get(private.id, account_id=cp.account_id),
        lambda: stranger.get(MISSING_ID, account_id=cp.account_id),
        lambda: stranger.delete(private.id, account_id=cp.account_id),
        lambda: stranger.create(
            account_id=cp.account_id, slug="planted", name="x", base_url="https://x.example"
        ),
    ]
    for call in calls:
        with pytest.raises(cloudflare.PermissionDeniedError) as caught:
            call()
        text = caught.value.response.text
        assert "Secret" not in text and "sk-hidden" not in text and "private" not in text
    patched = cp.patch(private.id, cp.other_token, name="Hijacked")
    assert patched.status_code == 403 and "Secret" not in patched.text

    with pytest.raises(cloudflare.PermissionDeniedError):
        cp.sdk().list(account_id=OTHER_ACCOUNT_ID)  # an account id that exists nowhere
    assert cp.slugs() == ["private"]
    assert cp.sdk().get(private.id, account_id=cp.account_id).name == "Secret Name"


def test_a_token_without_edit_can_read_but_not_write(cp: Running) -> None:
    kept = cp.create("kept")
    for token in (cp.read_only, cp.run_only):
        writer = cp.sdk(token)
        with pytest.raises(cloudflare.PermissionDeniedError, match="'edit' permission"):
            writer.create(account_id=cp.account_id, slug="new", name="n", base_url="https://n.ex")
        with pytest.raises(cloudflare.PermissionDeniedError, match="'edit' permission"):
            writer.delete(kept.id, account_id=cp.account_id)
        patched = cp.patch(kept.id, token, name="changed")
        assert patched.status_code == 403 and "'edit' permission" in patched.text

    reader = cp.sdk(cp.read_only)
    assert [p.slug for p in reader.list(account_id=cp.account_id)] == ["kept"]
    assert reader.get(kept.id, account_id=cp.account_id).name == "Provider kept"
    with pytest.raises(cloudflare.PermissionDeniedError, match="'read' permission"):
        cp.sdk(cp.run_only).get(kept.id, account_id=cp.account_id)


def test_malformed_account_id_is_404_and_unknown_ids_are_404(cp: Running) -> None:
    with pytest.raises(cloudflare.NotFoundError, match="32 lowercase hexadecimal"):
        cp.sdk().list(account_id="ABCDEF0123456789ABCDEF0123456789")
    for call in (
        lambda: cp.sdk().get(MISSING_ID, account_id=cp.account_id),
        lambda: cp.sdk().delete("not-an-id", account_id=cp.account_id),
    ):
        with pytest.raises(cloudflare.NotFoundError) as caught:
            call()
        assert caught.value.body["errors"][0]["error_code"] == "custom_provider_not_found"  # type: ignore[index]
    missing = cp.patch(MISSING_ID, name="x")
    assert missing.status_code == 404 and "does not exist" in missing.text


# --- the data plane's cache ---------------------------------------------------------------------


def test_writes_invalidate_the_cached_provider_under_old_and_new_slugs(
    cp: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped: list[tuple[str, str]] = []
    original = cp.cache.invalidate

    def record(account_id: str, slug: str) -> None:
        dropped.append((account_id, slug))
        original(account_id, slug)

    monkeypatch.setattr(cp.cache, "invalidate", record)
    created = cp.create("cached")
    assert cp.patch(created.id, enable=True).status_code == 200
    assert cp.patch(created.id, slug="moved").status_code == 200
    cp.sdk().delete(created.id, account_id=cp.account_id)
    assert cp.patch(created.id, name="x").status_code == 404  # nothing to drop

    a = cp.account_id
    assert dropped == [(a, "cached"), (a, "cached"), (a, "cached"), (a, "moved"), (a, "moved")]


def test_the_data_planes_cache_sees_every_write_at_once(cp: Running) -> None:
    """The cache keeps entries for an hour here, so only invalidation can explain a change."""

    async def scenario() -> None:
        resolve = cp.cache.resolve
        assert await resolve(cp.account_id, "live") is None  # a miss, cached
        created = await asyncio.to_thread(
            cp.create, "live", base_url="https://live.example/v1/", headers='{"X-Key": "k"}'
        )
        assert await resolve(cp.account_id, "live") == CustomProvider(
            slug="live",
            base_url="https://live.example/v1",
            headers=(("x-key", "k"),),
            enable=False,
        )
        await asyncio.to_thread(cp.patch, created.id, enable=True)
        found = await resolve(cp.account_id, "live")
        assert found is not None and found.enable is True
        await asyncio.to_thread(cp.patch, created.id, slug="renamed")
        assert await resolve(cp.account_id, "live") is None
        renamed = await resolve(cp.account_id, "renamed")
        assert renamed is not None and renamed.enable is True
        await asyncio.to_thread(cp.sdk().delete, created.id, account_id=cp.account_id)
        assert await resolve(cp.account_id, "renamed") is None
        assert await resolve(cp.other_account_id, "renamed") is None

    async def run() -> None:
        try:
            await scenario()
        finally:
            await cp.cache_store.close()  # in the loop that used it

    asyncio.run(run())


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.mark.postgres
def test_round_trip_on_postgresql(
    start: Callable[..., AbstractContextManager[Running]], postgres_url: str
) -> None:
    with start(TOLLGATE_DATABASE_URL=postgres_url) as cp:
        one = cp.create("pg-one", name="Zeta", enable=True)
        cp.create("pg-two", name="alpha")
        assert cp.slugs() == ["pg-two", "pg-one"]
        assert cp.slugs(search="ZET", enable=True) == ["pg-one"]
        with pytest.raises(cloudflare.ConflictError):
            cp.create("pg-two")
        assert cp.patch(one.id, slug="pg-two").status_code == 409
        assert cp.patch(one.id, position=4).json()["result"]["position"] == 4
        assert cp.sdk().delete(one.id, account_id=cp.account_id).slug == "pg-one"
        assert cp.slugs() == ["pg-two"]


# --- the repository, on SQLite and PostgreSQL ---------------------------------------------------


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await migrate(store)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def account(store: Store) -> Account:
    return await account_repo.create_account(store, "repo test account")


def fields(slug: str, **more: Any) -> dict[str, Any]:
    return {"slug": slug, "name": f"N {slug}", "base_url": f"https://{slug}.example", **more}


async def test_migration_0002_creates_the_table(store: Store, account: Account) -> None:
    assert "0002" in all_revisions()
    assert await current_revision(store) == all_revisions()[-1]
    page = await repo.list_custom_providers(store, account.id)
    assert page.total == 0  # the table exists and is empty


async def test_repo_round_trips_by_id_and_slug(store: Store, account: Account) -> None:
    created = await repo.insert_custom_provider(
        store, account.id, fields("one", headers='{"a":"b"}', position=3, beta=True)
    )
    assert re.fullmatch(r"[0-9a-f]{32}", created.id)
    assert (created.enable, created.beta, created.position) == (False, True, 3)
    assert created.created_at.utcoffset() == timedelta(0)
    assert await repo.get_custom_provider(store, account.id, created.id) == created
    assert await repo.get_custom_provider_by_slug(store, account.id, "one") == created
    assert await repo.get_custom_provider(store, OTHER_ACCOUNT_ID, created.id) is None
    assert await repo.get_custom_provider_by_slug(store, account.id, "two") is None


async def test_repo_slugs_are_unique_per_account(store: Store, account: Account) -> None:
    other = await account_repo.create_account(store, "other")
    await repo.insert_custom_provider(store, account.id, fields("same"))
    with pytest.raises(repo.SlugTaken):
        await repo.insert_custom_provider(store, account.id, fields("same"))
    await repo.insert_custom_provider(store, other.id, fields("same"))
    assert (await repo.list_custom_providers(store, account.id)).total == 1


async def test_repo_lists_with_filters_order_and_paging(store: Store, account: Account) -> None:
    for slug, name, enable, position in (
        ("b", "beta", True, None),
        ("a", "Alpha", False, 2),
        ("c", "gamma_x", True, 1),
    ):
        await repo.insert_custom_provider(
            store, account.id, fields(slug, name=name, enable=enable, position=position)
        )

    async def slugs(**kw: Any) -> list[str]:
        return [r.slug for r in (await repo.list_custom_providers(store, account.id, **kw)).items]

    assert await slugs() == ["a", "b", "c"]
    assert await slugs(enable=True) == ["b", "c"]
    assert await slugs(search="A_X") == ["c"]
    assert await slugs(search="%") == []
    assert await slugs(order_by="position") == ["c", "a", "b"]
    assert await slugs(order_by="name", descending=True) == ["c", "b", "a"]
    page = await repo.list_custom_providers(store, account.id, offset=1, limit=1)
    assert page.total == 3 and [r.slug for r in page.items] == ["b"]
    with pytest.raises(ValueError, match="cannot order"):
        await slugs(order_by="base_url")


async def test_repo_updates_return_before_and_after(store: Store, account: Account) -> None:
    created = await repo.insert_custom_provider(store, account.id, fields("old"))
    await repo.insert_custom_provider(store, account.id, fields("taken"))

    changed = await repo.update_custom_provider(
        store, account.id, created.id, {"slug": "new", "enable": True, "link": None}
    )
    assert changed is not None
    before, after = changed
    assert before == created and after.slug == "new" and after.enable is True
    assert after.modified_at > created.modified_at and after.created_at == created.created_at
    assert await repo.update_custom_provider(store, account.id, created.id, {}) == (after, after)
    with pytest.raises(repo.SlugTaken):
        await repo.update_custom_provider(store, account.id, created.id, {"slug": "taken"})
    assert await repo.get_custom_provider(store, account.id, created.id) == after
    assert await repo.update_custom_provider(store, account.id, MISSING_ID, {"beta": True}) is None
    with pytest.raises(ValueError, match="not custom provider fields: id"):
        await repo.update_custom_provider(store, account.id, created.id, {"id": "x"})


async def test_repo_deletes_and_returns_the_row(store: Store, account: Account) -> None:
    created = await repo.insert_custom_provider(store, account.id, fields("gone"))
    assert await repo.delete_custom_provider(store, account.id, created.id) == created
    assert await repo.delete_custom_provider(store, account.id, created.id) is None
    assert await repo.get_custom_provider_by_slug(store, account.id, "gone") is None


# --- the cache, on its own ---------------------------------------------------------------------


async def test_cache_keeps_hits_and_misses_until_invalidated_or_expired(
    store: Store, account: Account
) -> None:
    cache = CustomProviderCache(store, ttl=3600)
    assert await cache.resolve(account.id, "x") is None
    created = await repo.insert_custom_provider(store, account.id, fields("x", enable=True))
    assert await cache.resolve(account.id, "x") is None  # the miss is cached
    cache.invalidate(account.id, "x")
    assert await cache.resolve(account.id, "x") == CustomProvider(
        "x", "https://x.example", (), True
    )
    await repo.update_custom_provider(store, account.id, created.id, {"enable": False})
    assert (await cache.resolve(account.id, "x")) == CustomProvider(
        "x", "https://x.example", (), True
    )  # still cached
    expiring = CustomProviderCache(store, ttl=0)
    found = await expiring.resolve(account.id, "x")
    assert found is not None and found.enable is False  # disabled providers are returned


async def test_cache_does_not_keep_a_lookup_that_raced_an_invalidation(
    store: Store, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = CustomProviderCache(store, ttl=3600)
    created = await repo.insert_custom_provider(store, account.id, fields("race", enable=True))
    real_lookup = repo.get_custom_provider_by_slug

    async def lookup_then_disable(*args: Any) -> Any:
        seen = await real_lookup(*args)
        await repo.update_custom_provider(store, account.id, created.id, {"enable": False})
        cache.invalidate(account.id, "race")  # what the API does after its write
        return seen

    monkeypatch.setattr(repo, "get_custom_provider_by_slug", lookup_then_disable)
    stale = await cache.resolve(account.id, "race")
    assert stale is not None and stale.enable is True
    monkeypatch.setattr(repo, "get_custom_provider_by_slug", real_lookup)
    fresh = await cache.resolve(account.id, "race")
    assert fresh is not None and fresh.enable is False  # the stale answer was not kept
