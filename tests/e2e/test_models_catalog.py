"""The model catalog: /ai/models/search through the cloudflare SDK, and /compat/models."""

from __future__ import annotations

import cloudflare
import httpx
import openai

from tests.e2e.conftest import Gateway, Sim


def test_models_search_with_the_cloudflare_sdk(gateway: Gateway, sim: Sim) -> None:
    client = cloudflare.Cloudflare(
        api_token=gateway.account.token, base_url=f"{gateway.url}/client/v4", max_retries=0
    )
    everything = list(client.ai.models.list(account_id=gateway.account.account_id, per_page=20))
    assert len(everything) > 40  # auto-pagination walked every page
    ids = [m["id"] for m in everything]  # type: ignore[index]
    assert len(ids) == len(set(ids))
    anthropic_only = list(
        client.ai.models.list(account_id=gateway.account.account_id, author="anthropic")
    )
    assert anthropic_only and all(m["provider"] == "anthropic" for m in anthropic_only)  # type: ignore[index]
    first = anthropic_only[0]
    assert set(first) >= {"id", "provider", "context_window", "max_output_tokens", "pricing"}  # type: ignore[arg-type]
    assert first["pricing"]["currency"] == "USD" and first["pricing"]["input"] > 0  # type: ignore[index]
    searched = list(client.ai.models.list(account_id=gateway.account.account_id, search="mini"))
    assert searched and all("mini" in m["id"] for m in searched)  # type: ignore[index]


def test_models_search_needs_read_on_the_account(gateway: Gateway, sim: Sim) -> None:
    url = f"{gateway.url}/client/v4/accounts/{gateway.account.account_id}/ai/models/search"
    assert httpx.get(url).status_code == 401
    other = f"{gateway.url}/client/v4/accounts/{'f' * 32}/ai/models/search"
    response = httpx.get(other, headers={"authorization": f"Bearer {gateway.account.token}"})
    assert response.status_code == 403 and response.json()["success"] is False


def test_compat_models_lists_provider_prefixed_ids(gateway: Gateway, sim: Sim) -> None:
    client = openai.OpenAI(
        api_key=gateway.account.token, base_url=gateway.base("compat"), max_retries=0
    )
    ids = [model.id for model in client.models.list()]
    assert "openai/gpt-4o-mini" in ids
    assert any(i.startswith("anthropic/") for i in ids)
    assert any(i.startswith("google-ai-studio/") for i in ids)
    assert sim.requests() == []
