"""An account's custom provider on the data plane: `custom-{slug}` natively and on /compat."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx
import openai
import pytest

from tests.e2e.conftest import Gateway, Sim


@pytest.fixture
def custom_gateway(
    start_gateway: Callable[..., AbstractContextManager[Gateway]], sim: Sim
) -> Iterator[Gateway]:
    # The simulator listens on loopback over http, which the operator must allow.
    with start_gateway(
        TOLLGATE_CUSTOM_PROVIDERS__ALLOW_HTTP="true",
        TOLLGATE_UPSTREAM__ALLOWED_PRIVATE_NETWORKS="127.0.0.0/8",
    ) as gateway:
        created = httpx.post(
            f"{gateway.url}/client/v4/accounts/{gateway.account.account_id}"
            "/ai-gateway/custom-providers",
            headers={"authorization": f"Bearer {gateway.account.token}"},
            json={
                "name": "My LLM",
                "slug": "my-llm",
                "base_url": f"{sim.url}/openai/v1",
                "enable": True,
                "headers": json.dumps({"authorization": "Bearer sk-stored-key", "x-team": "ml"}),
            },
        )
        assert created.status_code == 200, created.text
        yield gateway


def test_native_custom_provider_uses_its_base_url_and_stored_headers(
    custom_gateway: Gateway, sim: Sim
) -> None:
    client = openai.OpenAI(
        api_key=custom_gateway.account.token,
        base_url=custom_gateway.base("custom-my-llm"),
        max_retries=0,
    )
    reply = client.chat.completions.create(
        model="local-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content
    request = sim.requests()[-1]
    assert request["path"] == "/openai/v1/chat/completions"
    headers = request["headers"]
    assert headers["authorization"] == "Bearer sk-stored-key"  # type: ignore[index]
    assert headers["x-team"] == "ml"  # type: ignore[index]
    assert custom_gateway.account.token not in json.dumps(headers)


def test_compat_routes_custom_models(custom_gateway: Gateway, sim: Sim) -> None:
    client = openai.OpenAI(
        api_key=custom_gateway.account.token, base_url=custom_gateway.base("compat"), max_retries=0
    )
    reply = client.chat.completions.create(
        model="custom-my-llm/local-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content
    request = sim.requests()[-1]
    assert json.loads(str(request["body"]))["model"] == "local-model"
    assert request["headers"]["authorization"] == "Bearer sk-stored-key"  # type: ignore[index]


def test_unknown_or_disabled_custom_provider_is_404(custom_gateway: Gateway, sim: Sim) -> None:
    before = len(sim.requests())
    url = f"{custom_gateway.base('custom-nope')}/chat/completions"
    response = httpx.post(
        url,
        headers={"authorization": f"Bearer {custom_gateway.account.token}"},
        json={"model": "m", "messages": []},
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "provider_not_found"
    assert len(sim.requests()) == before
