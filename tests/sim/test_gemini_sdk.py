"""The simulated Gemini API, driven by the official ``google-genai`` SDK."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from google import genai
from google.genai import errors, types

PROMPT = "Say hello to the simulator"  # 7 tokens + 4 = 11
FLASH = "gemini-2.0-flash"  # no thinking
THINKING = "gemini-2.5-flash"
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Current weather for a city",
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={
            "city": types.Schema(type=types.Type.STRING),
            "days": types.Schema(type=types.Type.INTEGER),
        },
        required=["city"],
    ),
)


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def reply(model: str) -> str:
    return f"This is a simulated reply from {model} to: Say hello to the simulator"


def test_generate_content_text_and_usage(gemini: genai.Client) -> None:
    response = gemini.models.generate_content(model=FLASH, contents=PROMPT)
    assert response.text == reply(FLASH)
    assert response.candidates and response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count == 11
    assert usage.candidates_token_count == tokens(reply(FLASH))
    assert usage.thoughts_token_count is None
    assert usage.total_token_count == 11 + tokens(reply(FLASH))
    assert response.model_version == FLASH


def test_thinking_model_reports_thoughts_beside_candidates(gemini: genai.Client) -> None:
    response = gemini.models.generate_content(model=THINKING, contents=PROMPT)
    usage = response.usage_metadata
    assert usage is not None
    assert usage.thoughts_token_count == 32
    assert usage.candidates_token_count == tokens(reply(THINKING))
    assert usage.total_token_count == 11 + tokens(reply(THINKING)) + 32

    off = gemini.models.generate_content(
        model=THINKING,
        contents=PROMPT,
        config=types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=0)),
    )
    assert off.usage_metadata is not None and off.usage_metadata.thoughts_token_count is None

    capped = gemini.models.generate_content(
        model="gemini-3-pro-preview",
        contents=PROMPT,
        config=types.GenerateContentConfig(
            thinking_config=types.ThinkingConfig(thinking_budget=10)
        ),
    )
    assert capped.usage_metadata is not None
    assert capped.usage_metadata.thoughts_token_count == 10


def test_cached_tokens_are_inside_the_prompt_count(gemini: genai.Client) -> None:
    response = gemini.models.generate_content(model=FLASH, contents="w" * 4096)
    usage = response.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count == 1028
    assert usage.cached_content_token_count == 514
    assert usage.total_token_count == 1028 + (usage.candidates_token_count or 0)


def test_max_output_tokens_truncates_with_max_tokens(gemini: genai.Client) -> None:
    response = gemini.models.generate_content(
        model=FLASH, contents=PROMPT, config=types.GenerateContentConfig(max_output_tokens=3)
    )
    assert (
        response.candidates
        and response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    )
    assert response.text == reply(FLASH)[:12]
    assert response.usage_metadata is not None
    assert response.usage_metadata.candidates_token_count == 3


def test_stream_chunks_carry_cumulative_usage(gemini: genai.Client) -> None:
    chunks = list(
        gemini.models.generate_content_stream(
            model=THINKING,
            contents=PROMPT,
            config=types.GenerateContentConfig(system_instruction="Be brief."),
        )
    )
    assert len(chunks) > 3
    assert "".join(c.text or "" for c in chunks) == reply(THINKING)
    counts = [c.usage_metadata.candidates_token_count for c in chunks if c.usage_metadata]
    assert counts == sorted(counts) and len(counts) == len(chunks)
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata is not None
    assert last.usage_metadata.prompt_token_count == tokens("Be brief.") + 4 + 11
    assert last.usage_metadata.candidates_token_count == tokens(reply(THINKING))
    assert last.usage_metadata.thoughts_token_count == 32
    assert all(c.candidates and c.candidates[0].finish_reason is None for c in chunks[:-1])


def test_function_call_from_declaration(gemini: genai.Client) -> None:
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])])
    response = gemini.models.generate_content(model=FLASH, contents="weather?", config=config)
    assert response.function_calls is not None
    [call] = response.function_calls
    assert call.name == "get_weather"
    assert call.args == {"city": "sim-city", "days": 1}

    streamed = list(
        gemini.models.generate_content_stream(
            model=FLASH, contents="weather in parallel", config=config
        )
    )
    calls = [c for chunk in streamed for c in (chunk.function_calls or [])]
    assert [c.name for c in calls] == ["get_weather", "get_weather"]


def test_function_response_gets_a_text_answer(gemini: genai.Client) -> None:
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])])
    contents = [
        types.Content(role="user", parts=[types.Part(text="weather?")]),
        types.Content(
            role="model",
            parts=[types.Part(function_call=types.FunctionCall(name="get_weather", args={}))],
        ),
        types.Content(
            role="user",
            parts=[
                types.Part(
                    function_response=types.FunctionResponse(
                        name="get_weather", response={"result": "sunny"}
                    )
                )
            ],
        ),
    ]
    response = gemini.models.generate_content(model=FLASH, contents=contents, config=config)
    assert response.function_calls is None
    assert response.text == (
        f'This is a simulated reply from {FLASH} using the tool result: {{"result":"sunny"}}'
    )


def test_count_tokens(gemini: genai.Client) -> None:
    counted = gemini.models.count_tokens(model=FLASH, contents=PROMPT)
    assert counted.total_tokens == 11


def test_embed_content(gemini: genai.Client) -> None:
    single = gemini.models.embed_content(model="text-embedding-004", contents="alpha")
    assert single.embeddings is not None
    [embedding] = single.embeddings
    assert embedding.values is not None and len(embedding.values) == 768
    assert math.isclose(sum(v * v for v in embedding.values), 1.0, rel_tol=1e-4)

    many = gemini.models.embed_content(
        model="gemini-embedding-001",
        contents=["alpha", "beta"],
        config=types.EmbedContentConfig(output_dimensionality=16),
    )
    assert many.embeddings is not None
    assert [len(e.values or []) for e in many.embeddings] == [16, 16]
    assert many.embeddings[0].values != many.embeddings[1].values


def test_embed_content_rest_endpoint(http: httpx.Client) -> None:
    response = http.post(
        "/google/v1beta/models/text-embedding-004:embedContent",
        headers={"x-goog-api-key": "k"},
        json={"content": {"parts": [{"text": "alpha"}]}, "outputDimensionality": 4},
    )
    assert response.status_code == 200
    body = response.json()
    assert len(body["embedding"]["values"]) == 4
    assert body["usageMetadata"]["promptTokenCount"] == tokens("alpha")


@pytest.mark.parametrize(
    ("status", "exception", "grpc_status"),
    [
        (429, errors.ClientError, "RESOURCE_EXHAUSTED"),
        (400, errors.ClientError, "INVALID_ARGUMENT"),
        (500, errors.ServerError, "INTERNAL"),
        (503, errors.ServerError, "UNAVAILABLE"),
    ],
)
def test_simulated_errors_map_to_sdk_exceptions(
    gemini: genai.Client, status: int, exception: type[errors.APIError], grpc_status: str
) -> None:
    config = types.GenerateContentConfig(
        http_options=types.HttpOptions(headers={"x-sim-error": str(status)})
    )
    with pytest.raises(exception) as caught:
        gemini.models.generate_content(model=FLASH, contents=PROMPT, config=config)
    assert caught.value.code == status
    assert caught.value.status == grpc_status


def test_invalid_key_is_a_400_api_key_invalid(sim) -> None:  # type: ignore[no-untyped-def]
    client = genai.Client(
        api_key="sim-invalid-key",
        http_options=types.HttpOptions(base_url=sim.urls["google-ai-studio"]),
    )
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=FLASH, contents=PROMPT)
    client.close()
    assert caught.value.code == 400
    assert caught.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_key_in_query_and_v1(http: httpx.Client) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
    ok = http.post(f"/google/v1/models/{FLASH}:generateContent?key=abc", json=body)
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("application/json")
    missing = http.post(f"/google/v1/models/{FLASH}:generateContent", json=body)
    assert missing.status_code == 403
    assert missing.json()["error"]["status"] == "PERMISSION_DENIED"
    bad_version = http.post(f"/google/v2/models/{FLASH}:generateContent?key=abc", json=body)
    assert bad_version.status_code == 404


def test_stream_without_alt_sse_is_one_json_array(http: httpx.Client) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
        "generationConfig": {"maxOutputTokens": 100},
    }
    headers = {"x-goog-api-key": "k", "x-sim-chunks": "3"}
    as_array = http.post(
        f"/google/v1beta/models/{FLASH}:streamGenerateContent", headers=headers, json=body
    )
    chunks = json.loads(as_array.text)
    assert isinstance(chunks, list) and len(chunks) == 3
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert text == reply(FLASH)

    as_sse = http.post(
        f"/google/v1beta/models/{FLASH}:streamGenerateContent?alt=sse", headers=headers, json=body
    )
    assert as_sse.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line[6:]) for line in as_sse.text.splitlines() if line.startswith("data: ")
    ]
    assert [e["usageMetadata"] for e in events] == [c["usageMetadata"] for c in chunks]
