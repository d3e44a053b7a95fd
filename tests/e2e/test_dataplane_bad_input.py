"""Bad input on the data plane: each case gets a clear error in OpenAI's format, never reaches
the upstream, and leaves no state behind (not even the auto-created `default` gateway)."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import Gateway, Sim
from tests.support.accounts import add_token, revoke, seed_account_async
from tests.support.server import free_port
from tollgate.store import Store
from tollgate.store import gateways as gateway_repo

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def gateway_count(gateway: Gateway) -> int:
    async def count() -> int:
        store = Store(gateway.database_url)
        try:
            page = await gateway_repo.list_gateways(store, gateway.account.account_id)
            return page.total
        finally:
            await store.close()

    return asyncio.run(count())


def assert_refused(
    response: httpx.Response, status: int, code: str, gateway: Gateway, sim: Sim
) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"] and error["type"]
    assert sim.requests() == [], "a refused request reached the upstream"
    assert gateway_count(gateway) == 0, "a refused request left a gateway behind"


def post(gateway: Gateway, token: str | None, **kwargs: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))  # type: ignore[arg-type]
    url = kwargs.pop("url", f"{gateway.openai_base()}/chat/completions")
    return httpx.post(url, headers=headers, **kwargs)  # type: ignore[arg-type]


def test_malformed_json(gateway: Gateway, sim: Sim) -> None:
    response = post(
        gateway,
        gateway.account.token,
        content=b'{"model": ',
        headers={"content-type": "application/json"},
    )
    assert_refused(response, 400, "invalid_json", gateway, sim)


def test_json_that_is_not_an_object(gateway: Gateway, sim: Sim) -> None:
    response = post(gateway, gateway.account.token, json=["not", "an", "object"])
    assert_refused(response, 400, "invalid_json", gateway, sim)


def test_wrong_content_type(gateway: Gateway, sim: Sim) -> None:
    response = post(
        gateway, gateway.account.token, content=b"model=gpt", headers={"content-type": "text/plain"}
    )
    assert_refused(response, 400, "invalid_content_type", gateway, sim)


def test_body_over_the_limit_is_413(
    start_gateway: Callable[..., AbstractContextManager[Gateway]], sim: Sim
) -> None:
    with start_gateway(TOLLGATE_SERVER__MAX_BODY_BYTES="4096") as gateway:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        response = post(gateway, gateway.account.token, json=big)
        assert_refused(response, 413, "request_too_large", gateway, sim)

        # Chunked upload (no content-length) is cut off too.
        def chunks():  # type: ignore[no-untyped-def]
            for _ in range(10):
                yield b"x" * 1000

        response = post(
            gateway,
            gateway.account.token,
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert_refused(response, 413, "request_too_large", gateway, sim)


def test_default_body_limit_is_10_mb(gateway: Gateway, sim: Sim) -> None:
    big = b'{"model":"gpt-4o-mini","pad":"' + b"x" * (10 * 1024 * 1024) + b'"}'
    response = post(
        gateway, gateway.account.token, content=big, headers={"content-type": "application/json"}
    )
    assert_refused(response, 413, "request_too_large", gateway, sim)


def test_unknown_account_in_path(gateway: Gateway, sim: Sim) -> None:
    url = f"{gateway.openai_base(account_id='0' * 32)}/chat/completions"
    response = post(gateway, gateway.account.token, json=CHAT, url=url)
    assert_refused(response, 403, "wrong_account", gateway, sim)


def test_malformed_account_id(gateway: Gateway, sim: Sim) -> None:
    url = f"{gateway.openai_base(account_id='not-an-account')}/chat/completions"
    response = post(gateway, gateway.account.token, json=CHAT, url=url)
    assert_refused(response, 404, "account_not_found", gateway, sim)


def test_unknown_gateway(gateway: Gateway, sim: Sim) -> None:
    url = f"{gateway.openai_base(gateway='missing')}/chat/completions"
    response = post(gateway, gateway.account.token, json=CHAT, url=url)
    assert response.status_code == 404 and response.json()["error"]["code"] == "gateway_not_found"
    assert sim.requests() == []


def test_unknown_provider(gateway: Gateway, sim: Sim) -> None:
    url = f"{gateway.url}/v1/{gateway.account.account_id}/default/nope/chat/completions"
    response = post(gateway, gateway.account.token, json=CHAT, url=url)
    assert_refused(response, 404, "provider_not_found", gateway, sim)


@pytest.mark.parametrize(
    "tail",
    [
        "/../../admin/v1/accounts",
        "/chat/../../../etc/passwd",
        "/%2e%2e/%2e%2e/admin",
        "/chat%2fcompletions",
        "/chat/..%5c..%5cx",
    ],
)
def test_path_traversal_in_provider_path(gateway: Gateway, sim: Sim, tail: str) -> None:
    # http.client sends the path exactly as written (httpx would normalise the dots away).
    target = urlsplit(gateway.url)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
    path = f"/v1/{gateway.account.account_id}/default/openai{tail}"
    conn.request(
        "POST",
        path,
        body=b'{"model":"gpt-4o-mini"}',
        headers={
            "authorization": f"Bearer {gateway.account.token}",
            "content-type": "application/json",
        },
    )
    raw = conn.getresponse()
    body = raw.read()
    conn.close()
    response = httpx.Response(
        raw.status, content=body, headers={"content-type": "application/json"}
    )
    assert_refused(response, 400, "invalid_path", gateway, sim)


def test_missing_token(gateway: Gateway, sim: Sim) -> None:
    assert_refused(post(gateway, None, json=CHAT), 401, "missing_token", gateway, sim)


@pytest.mark.parametrize(
    "token", ["tg_notarealtoken", "tg_" + "0" * 16 + "x" * 43, "garbage", "Bearer"]
)
def test_invalid_token(gateway: Gateway, sim: Sim, token: str) -> None:
    response = post(gateway, None, json=CHAT, headers={"cf-aig-authorization": f"Bearer {token}"})
    assert_refused(response, 401, "invalid_token", gateway, sim)


def test_expired_token(gateway: Gateway, sim: Sim) -> None:
    expired = add_token(
        gateway.database_url,
        gateway.account.account_id,
        permissions=frozenset({"run"}),
        expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    assert_refused(post(gateway, expired, json=CHAT), 401, "expired_token", gateway, sim)


def test_revoked_token(gateway: Gateway, sim: Sim) -> None:
    revoke(gateway.database_url, gateway.account.account_id, gateway.account.token_id)
    response = post(gateway, gateway.account.token, json=CHAT)
    assert_refused(response, 401, "revoked_token", gateway, sim)


def test_another_accounts_token(gateway: Gateway, sim: Sim) -> None:
    other = asyncio.run(seed_account_async(gateway.database_url, name="other"))
    assert_refused(post(gateway, other.token, json=CHAT), 403, "wrong_account", gateway, sim)


def test_token_without_run(gateway: Gateway, sim: Sim) -> None:
    read_only = add_token(
        gateway.database_url, gateway.account.account_id, permissions=frozenset({"read", "edit"})
    )
    response = post(gateway, read_only, json=CHAT)
    assert_refused(response, 403, "missing_permission", gateway, sim)


def test_upstream_down_is_502_with_the_cause(
    start_gateway: Callable[..., AbstractContextManager[Gateway]], sim: Sim
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    with start_gateway(TOLLGATE_PROVIDERS__OPENAI__BASE_URL=closed) as gateway:
        response = post(gateway, gateway.account.token, json=CHAT)
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "upstream_unreachable"
        assert "could not connect" in error["message"] and "openai" in error["message"]


def test_upstream_slow_is_504(
    start_gateway: Callable[..., AbstractContextManager[Gateway]], sim: Sim
) -> None:
    with start_gateway(TOLLGATE_UPSTREAM__FIRST_BYTE_TIMEOUT_SECONDS="0.3") as gateway:
        response = post(
            gateway, gateway.account.token, json=CHAT, headers={"x-sim-latency-ms": "3000"}
        )
        assert response.status_code == 504
        error = response.json()["error"]
        assert error["code"] == "upstream_timeout"
        assert "0.3 s" in error["message"]
