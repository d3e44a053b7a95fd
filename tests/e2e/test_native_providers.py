"""Provider-native endpoints for Anthropic, Google AI Studio and the OpenAI-compatible family,
each driven by its official SDK; the managed key is injected the provider's own way."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from tests.e2e.conftest import Gateway, Sim, managed_key
from tollgate.billing.catalog import load_catalog


def last_request(sim: Sim) -> dict[str, object]:
    seen = sim.requests()
    assert seen, "nothing reached the upstream"
    return seen[-1]


def headers_of(request: dict[str, object]) -> dict[str, str]:
    return {k.lower(): v for k, v in request["headers"].items()}  # type: ignore[union-attr]


def anthropic_client(gateway: Gateway, **kwargs: object) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=gateway.account.token, base_url=gateway.base("anthropic"), max_retries=0, **kwargs
    )  # type: ignore[arg-type]


def test_anthropic_messages_with_version_and_beta_passed_through(
    gateway: Gateway, sim: Sim
) -> None:
    client = anthropic_client(gateway, default_headers={"anthropic-beta": "tools-2024-04-04"})
    message = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.content[0].type == "text" and message.usage.input_tokens > 0
    request = last_request(sim)
    assert request["path"] == "/anthropic/v1/messages"
    headers = headers_of(request)
    assert headers["x-api-key"] == managed_key("anthropic")
    assert "authorization" not in headers  # the SDK sent our token there; it was stripped
    assert headers["anthropic-version"]
    assert headers["anthropic-beta"] == "tools-2024-04-04"
    assert not any(gateway.account.token in v for v in headers.values())


def test_anthropic_streaming_with_tools(gateway: Gateway, sim: Sim) -> None:
    tools = [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    with anthropic_client(gateway).messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=200,
        tools=tools,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    tool_use = next(block for block in final.content if block.type == "tool_use")
    assert "city" in tool_use.input  # type: ignore[operator]
    assert final.usage.output_tokens > 0


def test_anthropic_client_own_key_passes_through(gateway: Gateway, sim: Sim) -> None:
    client = anthropic.Anthropic(
        api_key="sk-ant-client-own",
        base_url=gateway.base("anthropic"),
        max_retries=0,
        default_headers={"cf-aig-authorization": f"Bearer {gateway.account.token}"},
    )
    client.messages.create(
        model="claude-sonnet-4-6", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
    )
    headers = headers_of(last_request(sim))
    own = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
    assert own == "sk-ant-client-own"
    assert "cf-aig-authorization" not in headers


def genai_client(gateway: Gateway, api_version: str = "v1beta") -> genai.Client:
    return genai.Client(
        api_key=gateway.account.token,
        http_options=genai_types.HttpOptions(
            base_url=gateway.base("google-ai-studio"), api_version=api_version
        ),
    )


@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
def test_gemini_generate_content(gateway: Gateway, sim: Sim, api_version: str) -> None:
    client = genai_client(gateway, api_version)  # keep a reference: its __del__ closes it
    reply = client.models.generate_content(model="gemini-2.5-flash", contents="Say hi")
    assert reply.text and reply.usage_metadata and reply.usage_metadata.prompt_token_count
    request = last_request(sim)
    assert request["path"] == f"/google/{api_version}/models/gemini-2.5-flash:generateContent"
    headers = headers_of(request)
    assert headers["x-goog-api-key"] == managed_key("google-ai-studio")


def test_gemini_stream_with_sse(gateway: Gateway, sim: Sim) -> None:
    client = genai_client(gateway)
    chunks = list(
        client.models.generate_content_stream(model="gemini-2.5-flash", contents="Tell me a story")
    )
    assert len(chunks) > 1 and "".join(c.text or "" for c in chunks)
    assert "alt=sse" in str(last_request(sim)["query"])


def test_gemini_stream_without_sse_is_a_streamed_json_array(gateway: Gateway, sim: Sim) -> None:
    url = f"{gateway.base('google-ai-studio')}/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    with httpx.stream(
        "POST",
        url,
        headers={"x-goog-api-key": gateway.account.token},
        json={"contents": [{"role": "user", "parts": [{"text": "Tell me a long story"}]}]},
    ) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_bytes())
    import json

    parsed = json.loads(body)
    assert isinstance(parsed, list) and len(parsed) > 1
    assert "alt" not in str(last_request(sim)["query"])


def test_gemini_count_tokens_and_embeddings(gateway: Gateway, sim: Sim) -> None:
    client = genai_client(gateway)
    counted = client.models.count_tokens(model="gemini-2.5-flash", contents="How many tokens?")
    assert counted.total_tokens and counted.total_tokens > 0
    single = client.models.embed_content(model="gemini-embedding-001", contents="one")
    assert single.embeddings and single.embeddings[0].values
    batch = client.models.embed_content(model="gemini-embedding-001", contents=["one", "two"])
    assert batch.embeddings and len(batch.embeddings) == 2
    paths = [str(r["path"]) for r in sim.requests()]
    assert any(p.endswith(":countTokens") for p in paths)
    assert any(p.endswith(":embedContent") or p.endswith(":batchEmbedContents") for p in paths)


def test_gemini_key_in_query_string_is_stripped(gateway: Gateway, sim: Sim) -> None:
    url = f"{gateway.base('google-ai-studio')}/v1beta/models/gemini-2.5-flash:generateContent"
    response = httpx.post(
        url,
        params={"key": gateway.account.token},
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    )
    assert response.status_code == 200, response.text
    request = last_request(sim)
    assert gateway.account.token not in str(request["query"])
    assert headers_of(request)["x-goog-api-key"] == managed_key("google-ai-studio")


@pytest.mark.parametrize(
    ("provider", "path"),
    [
        ("groq", "chat/completions"),
        ("grok", "v1/chat/completions"),
        ("mistral", "v1/chat/completions"),
        ("deepseek", "chat/completions"),
        ("cerebras", "chat/completions"),
        ("perplexity-ai", "chat/completions"),
    ],
)
def test_openai_compatible_family(gateway: Gateway, sim: Sim, provider: str, path: str) -> None:
    base = gateway.base(provider)
    if path.startswith("v1/"):
        base += "/v1"
    model = load_catalog().models(provider=provider)[0].model  # a model the gateway can bill
    client = openai.OpenAI(api_key=gateway.account.token, base_url=base, max_retries=0)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content
    assert headers_of(last_request(sim))["authorization"] == f"Bearer {managed_key(provider)}"


def test_a_provider_without_prices_needs_the_clients_own_key(gateway: Gateway, sim: Sim) -> None:
    # OpenRouter passes its own changing prices through; the catalog cannot bill it.
    managed = openai.OpenAI(
        api_key=gateway.account.token, base_url=gateway.base("openrouter"), max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as caught:
        managed.chat.completions.create(
            model="meta/llama", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "unpriced_model"
    assert sim.requests() == []
    own = openai.OpenAI(
        api_key="sk-or-own",
        base_url=gateway.base("openrouter"),
        max_retries=0,
        default_headers={"cf-aig-authorization": f"Bearer {gateway.account.token}"},
    )
    own.chat.completions.create(model="meta/llama", messages=[{"role": "user", "content": "hi"}])
    assert headers_of(last_request(sim))["authorization"] == "Bearer sk-or-own"


def test_workers_ai_is_the_operators_own_server_with_an_optional_key(
    start_gateway,  # type: ignore[no-untyped-def]
    sim: Sim,
) -> None:
    base = f"{sim.url}/openai"
    # The operator's own models have no public price: the operator sets one.
    prices = json.dumps(
        {
            "workers-ai/llama-3.1-8b-instruct": {
                "provider": "workers-ai",
                "context_window": 131072,
                "max_output_tokens": 8192,
                "input": "0.05",
                "output": "0.10",
            }
        }
    )
    with start_gateway(
        TOLLGATE_PROVIDERS__WORKERS_AI__BASE_URL=base, TOLLGATE_BILLING__PRICE_OVERRIDES=prices
    ) as gateway:
        client = openai.OpenAI(
            api_key=gateway.account.token,
            base_url=f"{gateway.base('workers-ai')}/v1",
            max_retries=0,
        )
        reply = client.chat.completions.create(
            model="llama-3.1-8b-instruct", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        request = last_request(sim)
        assert request["path"] == "/openai/v1/chat/completions"
        assert headers_of(request)["authorization"] == f"Bearer {managed_key('workers-ai')}"

    sim.clear()
    with start_gateway(
        TOLLGATE_PROVIDERS__WORKERS_AI__BASE_URL=base,
        TOLLGATE_PROVIDERS__WORKERS_AI__API_KEY="",
        TOLLGATE_BILLING__PRICE_OVERRIDES=prices,
    ) as gateway:
        client = openai.OpenAI(
            api_key=gateway.account.token,
            base_url=f"{gateway.base('workers-ai')}/v1",
            max_retries=0,
        )
        # The simulator wants a key; a server without auth would answer. What matters here is
        # that the gateway forwarded the request with no credential instead of refusing it.
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(
                model="llama-3.1-8b-instruct", messages=[{"role": "user", "content": "hi"}]
            )
        assert "authorization" not in headers_of(last_request(sim))
