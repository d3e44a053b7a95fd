"""The Unified API (`/compat`) and the REST surface (`/client/v4/accounts/{id}/ai/v1`), driven
by the official SDKs against a live gateway whose providers are the simulator."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.e2e.conftest import Gateway, Sim, managed_key
from tests.e2e.test_billing_cost import books
from tests.support.gateways import REQUIRED_GATEWAY_FIELDS

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
# One model per provider family: native OpenAI, Anthropic, Google, an OpenAI-compatible vendor.
FAMILIES = [
    ("openai/gpt-4o-mini", "/openai/v1/chat/completions", "authorization"),
    ("anthropic/claude-sonnet-4-6", "/anthropic/v1/messages", "x-api-key"),
    (
        "google-ai-studio/gemini-2.5-flash",
        "/google/v1beta/models/gemini-2.5-flash:",
        "x-goog-api-key",
    ),
    ("groq/llama-3.3-70b-versatile", "/openai/v1/chat/completions", "authorization"),
]


def compat(gateway: Gateway, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=gateway.account.token, base_url=gateway.base("compat"), max_retries=0, **kwargs
    )  # type: ignore[arg-type]


def upstream(sim: Sim) -> dict[str, object]:
    seen = sim.requests()
    assert len(seen) == 1, [r["path"] for r in seen]
    return seen[0]


@pytest.mark.parametrize(("model", "path", "key_header"), FAMILIES)
def test_compat_chat_for_each_family(
    gateway: Gateway, sim: Sim, model: str, path: str, key_header: str
) -> None:
    reply = compat(gateway).chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ],
        max_tokens=50,
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    request = upstream(sim)
    assert str(request["path"]).startswith(path)
    headers = request["headers"]
    slug = model.split("/")[0]
    assert gateway.account.token not in json.dumps(headers)
    assert managed_key(slug) in headers[key_header]  # type: ignore[index]
    body = json.loads(str(request["body"]))
    assert model.split("/", 1)[1] in json.dumps(body) or model.split("/", 1)[1] in str(
        request["path"]
    )


@pytest.mark.parametrize(("model", "path", "key_header"), FAMILIES)
def test_compat_streaming_with_tools_for_each_family(
    gateway: Gateway, sim: Sim, model: str, path: str, key_header: str
) -> None:
    stream = compat(gateway).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in chunks:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                if call.function and call.function.name:
                    entry["name"] = call.function.name
                if call.function and call.function.arguments:
                    entry["arguments"] += call.function.arguments
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather"
    assert "city" in json.loads(calls[0]["arguments"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_compat_tool_result_round_trip_to_anthropic(gateway: Gateway, sim: Sim) -> None:
    reply = compat(gateway).chat.completions.create(
        model="anthropic/claude-sonnet-4-6",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21C"},
        ],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert reply.choices[0].message.content
    sent = json.loads(str(upstream(sim)["body"]))
    assert sent["messages"][1]["content"][0]["type"] == "tool_use"
    assert sent["messages"][2]["content"][0]["type"] == "tool_result"


def test_compat_model_without_provider_prefix_is_400(gateway: Gateway, sim: Sim) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        compat(gateway).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "invalid_model"
    assert "{provider}/{model}" in caught.value.message
    assert sim.requests() == []


def test_compat_unknown_provider_is_404(gateway: Gateway, sim: Sim) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        compat(gateway).chat.completions.create(
            model="nope/some-model", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "provider_not_found"
    assert sim.requests() == []


def test_compat_feature_the_provider_lacks_is_400(gateway: Gateway, sim: Sim) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        compat(gateway).chat.completions.create(
            model="anthropic/claude-sonnet-4-6",
            messages=[{"role": "user", "content": "x"}],
            n=2,
        )
    assert "n" in caught.value.message
    assert sim.requests() == []


def test_compat_unfetchable_image_url_is_400(gateway: Gateway, sim: Sim) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        compat(gateway).chat.completions.create(
            model="google-ai-studio/gemini-2.5-flash",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://nonexistent.invalid/cat.png"},
                        },
                    ],
                }
            ],
        )
    assert caught.value.code == "image_fetch_failed"
    assert sim.requests() == []


def test_compat_upstream_error_keeps_status_and_message(gateway: Gateway, sim: Sim) -> None:
    # Translated requests carry no client headers upstream, so the simulator's control rides
    # in the prompt.
    with pytest.raises(openai.InternalServerError) as caught:
        compat(gateway).chat.completions.create(
            model="anthropic/claude-sonnet-4-6",
            messages=[{"role": "user", "content": "x [sim error=529]"}],
        )
    assert caught.value.status_code == 529
    direct = httpx.post(
        f"{sim.url}/anthropic/v1/messages",
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01", "x-sim-error": "529"},
        json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    ).json()
    assert caught.value.body["message"] == direct["error"]["message"]  # type: ignore[index]


def test_compat_mid_stream_drop_becomes_an_in_band_error(gateway: Gateway, sim: Sim) -> None:
    response = httpx.post(
        f"{gateway.base('compat')}/chat/completions",
        headers={"authorization": f"Bearer {gateway.account.token}"},
        json={
            "model": "anthropic/claude-sonnet-4-6",
            "stream": True,
            "messages": [{"role": "user", "content": "a long story please [sim drop-after=3]"}],
        },
    )
    assert response.status_code == 200
    events = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2]


def test_compat_client_own_key_is_sent_the_providers_way(gateway: Gateway, sim: Sim) -> None:
    client = openai.OpenAI(
        api_key="sk-ant-own-key",
        base_url=gateway.base("compat"),
        max_retries=0,
        default_headers={"cf-aig-authorization": f"Bearer {gateway.account.token}"},
    )
    client.chat.completions.create(
        model="anthropic/claude-sonnet-4-6", messages=[{"role": "user", "content": "x"}]
    )
    headers = upstream(sim)["headers"]
    assert headers["x-api-key"] == "sk-ant-own-key"  # type: ignore[index]
    assert "authorization" not in headers  # type: ignore[operator]


def rest_base(gateway: Gateway) -> str:
    return f"{gateway.url}/client/v4/accounts/{gateway.account.account_id}/ai/v1"


@pytest.mark.parametrize(
    "model", ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4-6", "google/gemini-2.5-flash"]
)
def test_rest_chat_completions_with_the_openai_sdk(gateway: Gateway, sim: Sim, model: str) -> None:
    client = openai.OpenAI(
        api_key=gateway.account.token, base_url=rest_base(gateway), max_retries=0
    )
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}]
    )
    assert reply.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize(
    "model", ["anthropic/claude-sonnet-4-6", "openai/gpt-4o-mini", "google/gemini-2.5-flash"]
)
def test_rest_messages_with_the_anthropic_sdk(gateway: Gateway, sim: Sim, model: str) -> None:
    client = anthropic.Anthropic(
        api_key=gateway.account.token,
        base_url=rest_base(gateway).removesuffix("/v1"),
        max_retries=0,
    )
    message = client.messages.create(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "hello"}]
    )
    assert message.content[0].type == "text" and message.content[0].text  # type: ignore[union-attr]
    assert message.usage.output_tokens > 0
    with client.messages.stream(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_rest_gateway_is_chosen_by_header(gateway: Gateway, sim: Sim) -> None:
    client = openai.OpenAI(
        api_key=gateway.account.token,
        base_url=rest_base(gateway),
        max_retries=0,
        default_headers={"cf-aig-gateway-id": "missing-gateway"},
    )
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "gateway_not_found"
    assert sim.requests() == []


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("openai/text-embedding-3-small", "/openai/v1/embeddings"),
        (
            "google-ai-studio/gemini-embedding-001",
            "/google/v1beta/models/gemini-embedding-001:batchEmbedContents",
        ),
    ],
)
def test_compat_embeddings(gateway: Gateway, sim: Sim, model: str, path: str) -> None:
    result = compat(gateway).embeddings.create(model=model, input=["first text", "second text"])
    assert [item.index for item in result.data] == [0, 1]
    assert len(result.data[0].embedding) > 0
    assert result.usage.prompt_tokens > 0
    assert upstream(sim)["path"] == path


def test_compat_embeddings_for_a_provider_without_them_is_400(gateway: Gateway, sim: Sim) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        compat(gateway).embeddings.create(model="anthropic/claude-sonnet-4-6", input="x")
    assert caught.value.code == "unsupported_feature"
    assert sim.requests() == []


def test_rest_responses_for_openai_models(gateway: Gateway, sim: Sim) -> None:
    client = openai.OpenAI(
        api_key=gateway.account.token, base_url=rest_base(gateway), max_retries=0
    )
    response = client.responses.create(model="openai/gpt-4o-mini", input="Write one line")
    assert response.output_text
    sent = json.loads(str(upstream(sim)["body"]))
    assert sent["model"] == "gpt-4o-mini"
    sim.clear()
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="anthropic/claude-sonnet-4-6", input="x")
    assert caught.value.code == "unsupported_feature"
    assert sim.requests() == []


@pytest.mark.parametrize("fault", ["drop-after", "garble-after"])
@pytest.mark.parametrize(
    "model", ["anthropic/claude-sonnet-4-6", "google-ai-studio/gemini-2.5-flash"]
)
def test_compat_truncated_or_invalid_upstream_sse_ends_in_band(
    gateway: Gateway, sim: Sim, fault: str, model: str
) -> None:
    response = httpx.post(
        f"{gateway.base('compat')}/chat/completions",
        headers={"authorization": f"Bearer {gateway.account.token}"},
        json={
            "model": model,
            "stream": True,
            # A prompt directive: the one control that survives translation to every provider.
            "messages": [{"role": "user", "content": f"a long story please [sim {fault}=3]"}],
        },
    )
    assert response.status_code == 200
    events = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))
    assert error["error"]["message"]
    assert len(sim.requests()) == 1  # not retried


def test_compat_invalid_upstream_json_is_502(gateway: Gateway, sim: Sim) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        compat(gateway).chat.completions.create(
            model="anthropic/claude-sonnet-4-6",
            messages=[{"role": "user", "content": "x [sim drop-after=1]"}],
        )
    assert caught.value.status_code == 502
    assert len(sim.requests()) == 1


def test_rest_ai_run_wraps_the_answer_in_cloudflares_envelope(gateway: Gateway, sim: Sim) -> None:
    url = f"{gateway.url}/client/v4/accounts/{gateway.account.account_id}/ai/run"
    auth = {"authorization": f"Bearer {gateway.account.token}"}
    for model in ("openai/gpt-4o-mini", "anthropic/claude-sonnet-4-6"):
        response = httpx.post(
            url, headers=auth, json={"model": model, "input": {"prompt": "Say hello"}}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["state"] == "Completed"
        assert body["gatewayMetadata"] == {"keySource": "Unified"}
        assert body["result"]["choices"][0]["message"]["content"]
    streamed = httpx.post(
        url,
        headers=auth,
        json={
            "model": "openai/gpt-4o-mini",
            "input": {"messages": [{"role": "user", "content": "hi"}], "stream": True},
        },
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    data_lines = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert data_lines[-1] == "data: [DONE]"
    assert ": cf-aig-cost=" in streamed.text  # the cost follows as an SSE comment
    bad = httpx.post(url, headers=auth, json={"model": "openai/gpt-4o-mini", "input": "hi"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


def test_rest_ai_run_embeds_texts_in_the_envelope(gateway: Gateway) -> None:
    url = f"{gateway.url}/client/v4/accounts/{gateway.account.account_id}/ai/run"
    auth = {"authorization": f"Bearer {gateway.account.token}"}
    for model, inputs, count in (
        ("openai/text-embedding-3-small", {"text": ["one", "two"]}, 2),  # Workers AI's input
        ("openai/text-embedding-3-small", {"input": "one", "dimensions": 8}, 1),  # OpenAI's
        ("google-ai-studio/gemini-embedding-001", {"text": "one"}, 1),
    ):
        response = httpx.post(url, headers=auth, json={"model": model, "input": inputs})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["state"] == "Completed" and body["gatewayMetadata"]["keySource"] == "Unified"
        vectors = body["result"]["data"]
        assert len(vectors) == count and all(v["embedding"] for v in vectors)
        assert float(response.headers["cf-aig-cost"]) > 0
    both = httpx.post(
        url,
        headers=auth,
        json={"model": "openai/text-embedding-3-small", "input": {"text": "a", "input": "b"}},
    )
    assert both.status_code == 400 and both.json()["error"]["param"] == "input.text"


@pytest.mark.parametrize(
    ("base", "model"),
    [
        ("openai", "gpt-4o-mini"),
        ("compat", "anthropic/claude-sonnet-4-6"),
        ("compat", "google-ai-studio/gemini-2.5-flash"),
    ],
)
def test_streams_are_flushed_chunk_by_chunk(
    gateway: Gateway, sim: Sim, base: str, model: str
) -> None:
    import time

    # The simulator waits 400 ms between frames; a relay that buffered would deliver the first
    # piece only at the end, after more than a second.
    prompt = "one two three four five six [sim chunk-delay-ms=400 chunks=4]"
    started = time.monotonic()
    arrivals: list[float] = []
    with httpx.stream(
        "POST",
        f"{gateway.base(base)}/chat/completions",
        headers={"authorization": f"Bearer {gateway.account.token}"},
        json={"model": model, "stream": True, "messages": [{"role": "user", "content": prompt}]},
        timeout=30,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 3
    assert arrivals[0] < arrivals[-1] - 0.7  # the first text arrived long before the last


def test_a_gateway_without_authentication_never_bills_an_anonymous_caller(
    gateway: Gateway, sim: Sim
) -> None:
    """With `authentication` off, a caller without a token may use its own provider key (it
    pays). The REST surface never uses a client's key, so there an anonymous caller would be
    billed to the account's credits: it is refused, and nothing is sent or charged."""
    account = gateway.account.account_id
    management = f"{gateway.url}/client/v4/accounts/{account}/ai-gateway/gateways"
    owner = {"authorization": f"Bearer {gateway.account.token}"}
    created = httpx.post(
        management,
        headers=owner,
        json={**REQUIRED_GATEWAY_FIELDS, "id": "open", "authentication": False},
    )
    assert created.status_code == 200, created.text
    before = books(gateway)
    sim.clear()
    rest = httpx.post(
        f"{gateway.url}/client/v4/accounts/{account}/ai/v1/chat/completions",
        headers={"x-api-key": "sk-anyone", "cf-aig-gateway-id": "open"},
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert rest.status_code == 401, rest.text
    assert "cf-aig-cost" not in rest.headers and sim.requests() == []
    byok = httpx.post(
        f"{gateway.url}/v1/{account}/open/compat/chat/completions",
        headers={"authorization": "Bearer sk-client-own-key"},
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert byok.status_code == 200, byok.text
    assert "cf-aig-cost" not in byok.headers  # the client's own key paid
    [upstream] = sim.requests()
    assert upstream["headers"]["authorization"] == "Bearer sk-client-own-key"  # type: ignore[index]
    after = books(gateway)
    assert (after.balance_nanos, after.entries) == (before.balance_nanos, before.entries)
