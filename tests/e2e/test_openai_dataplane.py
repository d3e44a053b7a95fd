"""The OpenAI data plane, driven by the official `openai` SDK through a real gateway.

Every test checks what actually reached the upstream (the simulator records each request).
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.e2e.conftest import MANAGED_OPENAI_KEY, Gateway, Sim
from tests.support.accounts import seed_account_async
from tollgate.store import Store
from tollgate.store import gateways as gateway_repo


def client_for(gateway: Gateway, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=kwargs.pop("api_key", gateway.account.token),  # type: ignore[arg-type]
        base_url=kwargs.pop("base_url", gateway.openai_base()),  # type: ignore[arg-type]
        max_retries=0,
        **kwargs,  # type: ignore[arg-type]
    )


def upstream_headers(sim: Sim) -> dict[str, str]:
    seen = sim.requests()
    assert len(seen) == 1, seen
    return {k.lower(): v for k, v in seen[0]["headers"].items()}  # type: ignore[union-attr]


def assert_no_gateway_secrets(headers: dict[str, str], token: str) -> None:
    assert not any(name.startswith("cf-") for name in headers), headers
    assert all(token not in value for value in headers.values()), headers


def test_chat_completion_with_managed_key(gateway: Gateway, sim: Sim) -> None:
    # Every gateway header stays at the gateway, Cloudflare's legacy cache names included.
    gateway_only = {"cf-aig-metadata": '{"team": "a"}', "cf-skip-cache": "true"}
    reply = client_for(gateway).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello"}],
        extra_headers={**gateway_only, "cf-cache-ttl": "120"},
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.total_tokens > 0
    headers = upstream_headers(sim)
    assert headers["authorization"] == f"Bearer {MANAGED_OPENAI_KEY}"
    assert_no_gateway_secrets(headers, gateway.account.token)
    assert sim.requests()[0]["path"] == "/openai/v1/chat/completions"


def test_streaming_chat_relays_every_chunk(gateway: Gateway, sim: Sim) -> None:
    stream = client_for(gateway).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Tell me a story"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_responses_api_plain_and_streamed(gateway: Gateway, sim: Sim) -> None:
    client = client_for(gateway)
    response = client.responses.create(model="gpt-4o-mini", input="Write one line")
    assert response.output_text
    events = list(client.responses.create(model="gpt-4o-mini", input="Again", stream=True))
    assert events[-1].type == "response.completed"
    paths = [r["path"] for r in sim.requests()]
    assert paths == ["/openai/v1/responses", "/openai/v1/responses"]


def test_embeddings(gateway: Gateway, sim: Sim) -> None:
    result = client_for(gateway).embeddings.create(
        model="text-embedding-3-small", input=["one", "two"]
    )
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0


def test_gateway_token_in_cf_header_and_client_key_passes_through(
    gateway: Gateway, sim: Sim
) -> None:
    client = client_for(
        gateway,
        api_key="sk-client-own-key",
        default_headers={
            "cf-aig-authorization": f"Bearer {gateway.account.token}",
            "cf-aig-metadata": '{"user": "u1"}',
            "OpenAI-Organization": "org-client",
        },
    )
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    headers = upstream_headers(sim)
    assert headers["authorization"] == "Bearer sk-client-own-key"  # BYOK pass-through
    assert headers["openai-organization"] == "org-client"  # provider headers do reach it
    assert_no_gateway_secrets(headers, gateway.account.token)


def test_upstream_status_body_and_headers_come_back_unchanged(gateway: Gateway, sim: Sim) -> None:
    client = client_for(gateway, default_headers={"x-sim-error": "429"})
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 429
    assert caught.value.response.headers.get("retry-after")
    direct = httpx.post(
        f"{sim.url}/openai/v1/chat/completions",
        headers={"authorization": "Bearer k", "x-sim-error": "429"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    )
    assert caught.value.response.json() == direct.json()


def test_first_authenticated_request_creates_the_default_gateway(
    gateway: Gateway, sim: Sim
) -> None:
    async def default_gateway() -> object:
        store = Store(gateway.database_url)
        try:
            return await gateway_repo.get_gateway(store, gateway.account.account_id, "default")
        finally:
            await store.close()

    import asyncio

    assert asyncio.run(default_gateway()) is None
    client_for(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    record = asyncio.run(default_gateway())
    assert record is not None and record.is_default  # type: ignore[attr-defined]
    assert record.config["authentication"] is True  # type: ignore[attr-defined]


def test_requests_to_a_missing_named_gateway_get_404(gateway: Gateway, sim: Sim) -> None:
    client = client_for(gateway, base_url=gateway.openai_base(gateway="no-such-gateway"))
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "gateway_not_found"
    assert sim.requests() == []


def test_another_accounts_token_is_forbidden(gateway: Gateway, sim: Sim) -> None:
    import asyncio

    other = asyncio.run(seed_account_async(gateway.database_url, name="other"))
    client = client_for(gateway, api_key=other.token)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "wrong_account"
    assert sim.requests() == []


def test_streamed_error_mid_stream_is_reported_in_band(gateway: Gateway, sim: Sim) -> None:
    response = httpx.post(
        f"{gateway.openai_base()}/chat/completions",
        headers={"authorization": f"Bearer {gateway.account.token}", "x-sim-drop-after": "2"},
        json={
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "a long story please"}],
        },
    )
    assert response.status_code == 200
    assert "upstream_stream_broken" in response.text
    assert "data: [DONE]" not in response.text


def test_sandbox_header_is_absent_outside_sandbox_mode(gateway: Gateway, sim: Sim) -> None:
    raw = client_for(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    assert "x-tollgate-sandbox" not in raw.headers
    assert json.loads(raw.text)["object"] == "chat.completion"


def test_a_body_cut_short_before_relay_is_502(gateway: Gateway, sim: Sim) -> None:
    client = client_for(gateway, default_headers={"x-sim-drop-after": "1"})
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"
    assert len(sim.requests()) == 1
