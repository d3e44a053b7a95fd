"""End to end in memory: one client format in, another provider's wire out, and back.

Every stream test feeds the upstream fixture in random pieces and renders each event as it
comes, the way the gateway relays a stream, then checks the result with the client's own SDK.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.translation.helpers import (
    anthropic_sdk_accumulate,
    fixture_bytes,
    fixture_json,
    openai_sdk_accumulate,
    random_splits,
    sse_payloads,
)
from tollgate.canonical import with_fetched_images
from tollgate.formats import anthropic_messages, openai_chat
from tollgate.providers import anthropic, google, openai
from tollgate.providers.base import NeedsFetch, ProviderAdapter


def relay(
    adapter: ProviderAdapter,
    renderer: openai_chat.StreamRenderer | anthropic_messages.StreamRenderer,
    upstream: bytes,
    seed: int = 0,
) -> bytes:
    """Feed upstream bytes in pieces; render every event at once, as the gateway does."""
    parser = adapter.stream_parser()
    out = b""
    for piece in random_splits(upstream, seed):
        for event in parser.feed(piece):
            out += renderer.render(event)
    for event in parser.close():
        out += renderer.render(event)
    return out + renderer.close()


# --- requests -------------------------------------------------------------------------------


def test_openai_tool_conversation_becomes_an_anthropic_request() -> None:
    request = openai_chat.parse_request(fixture_json("openai", "request_tool_results.json"))
    body = orjson.loads(anthropic.ADAPTER.build_request(request, default_max_tokens=4096).body)
    assert body["system"] == "You are a weather bot."
    assert body["max_tokens"] == 4096
    paris, bogota = {"location": "Paris, France"}, {"location": "Bogotá, Colombia"}
    assert body["messages"] == [
        {"role": "user", "content": "What's the weather like in Paris and Bogotá today?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_12345xyz", "name": "get_weather", "input": paris},
                {"type": "tool_use", "id": "call_67890abc", "name": "get_weather", "input": bogota},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_12345xyz", "content": "14"},
                {"type": "tool_result", "tool_use_id": "call_67890abc", "content": "18"},
            ],
        },
    ]  # fmt: skip
    assert body["tools"][0]["input_schema"]["additionalProperties"] is False
    assert body["tools"][0]["strict"] is True


def test_openai_options_become_anthropic_options() -> None:
    request = openai_chat.parse_request(fixture_json("openai", "request_options.json"))
    body = orjson.loads(anthropic.ADAPTER.build_request(request).body)
    assert body["system"] == "Extract the event information."
    assert body["max_tokens"] == 2048 and body["stream"] is True
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048 - 1}
    assert body["output_config"]["format"]["type"] == "json_schema"
    assert (body["stop_sequences"], body["temperature"], body["top_p"]) == (["\n\n"], 0.2, 0.9)
    assert body["metadata"] == {"user_id": "user-1234"}


def test_openai_vision_request_to_anthropic_and_to_gemini() -> None:
    request = openai_chat.parse_request(fixture_json("openai", "request_vision.json"))
    body = orjson.loads(anthropic.ADAPTER.build_request(request).body)
    sources = [block["source"]["type"] for block in body["messages"][0]["content"][1:]]
    assert sources == ["url", "base64"]
    with pytest.raises(NeedsFetch) as caught:
        google.ADAPTER.build_request(request)
    (url,) = caught.value.urls
    fetched = with_fetched_images(request, {url: (b"\xff\xd8\xff\xe0", "image/jpeg")})
    parts = orjson.loads(google.ADAPTER.build_request(fetched).body)["contents"][0]["parts"]
    assert [next(iter(part)) for part in parts] == ["text", "inlineData", "inlineData"]


def test_anthropic_request_becomes_a_gemini_request() -> None:
    request = anthropic_messages.parse_request(
        fixture_json("anthropic", "request_tool_result.json")
    )
    request = type(request)(**{**_fields(request), "model": "gemini-2.5-flash"})
    body = orjson.loads(google.ADAPTER.build_request(request).body)
    assert body["systemInstruction"] == {
        "parts": [{"text": "You are a helpful weather assistant."}]
    }
    assert [content["role"] for content in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"output": "15 degrees"}}}
    ]
    assert body["generationConfig"] == {"maxOutputTokens": 1024}


def test_anthropic_request_becomes_an_openai_request() -> None:
    request = anthropic_messages.parse_request(
        fixture_json("anthropic", "request_thinking_image.json")
    )
    body = orjson.loads(openai.ADAPTER.build_request(request).body)
    assert body["max_completion_tokens"] == 16000
    assert body["reasoning_effort"] == "high"  # a 10000-token budget
    content = body["messages"][0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,iVBOR")
    assert content[1]["image_url"]["url"].startswith("https://upload.wikimedia.org/")


def _fields(request: Any) -> dict[str, Any]:
    return {name: getattr(request, name) for name in request.__dataclass_fields__}


# --- non-streaming responses ----------------------------------------------------------------


def test_gemini_function_call_response_to_openai() -> None:
    response = google.ADAPTER.parse_response(
        200, fixture_bytes("google", "response_function_call.json")
    )
    rendered = openai_chat.render_response(response, created=1700000000)
    choice = rendered["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_0",
            "type": "function",
            "function": {
                "name": "find_theaters",
                "arguments": '{"movie":"Barbie","location":"Mountain View, CA"}',
            },
        }
    ]


def test_anthropic_cache_usage_rendered_for_openai_clients() -> None:
    response = anthropic.ADAPTER.parse_response(
        200, fixture_bytes("anthropic", "response_cache_usage.json")
    )
    usage = openai_chat.render_response(response)["usage"]
    assert usage["prompt_tokens"] == 21 + 188086
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 188086}


def test_openai_reasoning_response_rendered_for_anthropic_clients() -> None:
    response = openai.ADAPTER.parse_response(
        200, fixture_bytes("openai", "response_reasoning_cached.json")
    )
    rendered = anthropic_messages.render_response(response)
    assert rendered["usage"] == {
        "input_tokens": 2006 - 1920,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1920,
        "output_tokens": 300,
    }


# --- streams --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_anthropic_tool_stream_to_openai_chunks(seed: int) -> None:
    upstream = fixture_bytes("anthropic", "stream_tool_use.sse")
    data = relay(
        anthropic.ADAPTER, openai_chat.StreamRenderer(include_usage=True, created=1), upstream, seed
    )
    completion = openai_sdk_accumulate(data)  # also asserts the stream ends with [DONE]
    message = completion.choices[0].message
    assert message.content == "Okay, let's check the weather for San Francisco, CA:"
    (call,) = message.tool_calls or []
    assert (call.id, call.function.name) == ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")
    assert orjson.loads(call.function.arguments) == {
        "location": "San Francisco, CA",
        "unit": "fahrenheit",
    }
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (472, 89)
    deltas = [
        p["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
        for _, p in sse_payloads(data)[:-1]
        if p["choices"] and "tool_calls" in p["choices"][0]["delta"]
    ]
    assert len(deltas) > 5  # argument deltas stream through, not one blob at the end


def test_anthropic_thinking_stream_to_openai_chunks() -> None:
    upstream = fixture_bytes("anthropic", "stream_thinking.sse")
    data = relay(anthropic.ADAPTER, openai_chat.StreamRenderer(), upstream)
    payloads = sse_payloads(data)
    reasoning = "".join(
        p["choices"][0]["delta"].get("reasoning_content", "")
        for _, p in payloads[:-1]
        if p["choices"]
    )
    assert reasoning.startswith("Let me solve this step by step")
    assert openai_sdk_accumulate(data).choices[0].message.content == "27 * 453 = 12,231"


@pytest.mark.parametrize("seed", range(5))
def test_gemini_parallel_calls_stream_to_anthropic_events(seed: int) -> None:
    upstream = fixture_bytes("google", "stream_parallel_calls.sse")
    data = relay(google.ADAPTER, anthropic_messages.StreamRenderer(), upstream, seed)
    names = [name for name, _ in sse_payloads(data)]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    message = anthropic_sdk_accumulate(data)
    assert [(block.type, getattr(block, "name", None)) for block in message.content] == [
        ("tool_use", "power_disco_ball"),
        ("tool_use", "start_music"),
        ("tool_use", "dim_lights"),
    ]
    assert message.content[1].input == {"energetic": True, "loud": True}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (60, 164)


def test_gemini_thinking_stream_to_anthropic_events() -> None:
    upstream = fixture_bytes("google", "stream_thinking_text.sse")
    message = anthropic_sdk_accumulate(
        relay(google.ADAPTER, anthropic_messages.StreamRenderer(), upstream)
    )
    thinking, text = message.content
    assert thinking.type == "thinking" and text.type == "text"
    assert text.text == "The sum of the first 50 prime numbers is 5117."
    assert message.id == "resp-thinking-1" and message.stop_reason == "end_turn"


def test_openai_tool_stream_to_anthropic_events() -> None:
    upstream = fixture_bytes("openai", "stream_tool_calls.sse")
    message = anthropic_sdk_accumulate(
        relay(openai.ADAPTER, anthropic_messages.StreamRenderer(), upstream)
    )
    (tool,) = message.content
    assert tool.type == "tool_use" and tool.input == {"location": "Paris, France"}
    assert (message.usage.input_tokens, message.usage.output_tokens) == (64, 17)


def test_legacy_gemini_stream_to_openai_chunks() -> None:
    upstream = fixture_bytes("google", "stream_legacy_crlf.sse")
    completion = openai_sdk_accumulate(
        relay(google.ADAPTER, openai_chat.StreamRenderer(), upstream)
    )
    content = completion.choices[0].message.content or ""
    assert content.startswith("In the quaint") and content.endswith("stronger than ever.")
    assert completion.choices[0].finish_reason == "stop"


def test_truncated_anthropic_stream_becomes_an_openai_in_band_error_then_done() -> None:
    upstream = fixture_bytes("anthropic", "stream_tool_use.sse")
    cut = upstream[: upstream.index(b"event: message_delta")]
    payloads = sse_payloads(relay(anthropic.ADAPTER, openai_chat.StreamRenderer(), cut))
    assert payloads[-1] == (None, "[DONE]")
    error = payloads[-2][1]["error"]
    assert error["message"].startswith("The upstream stream ended before it was complete")
    assert error["type"] == "api_error"


def test_truncated_gemini_stream_becomes_an_anthropic_error_event() -> None:
    upstream = fixture_bytes("google", "stream_thinking_text.sse")
    cut = upstream[: upstream.rindex(b"data: ")]
    payloads = sse_payloads(relay(google.ADAPTER, anthropic_messages.StreamRenderer(), cut))
    names = [name for name, _ in payloads]
    assert "message_stop" not in names
    assert payloads[-1][0] == "error"
    assert payloads[-1][1]["error"]["type"] == "api_error"


def test_anthropic_overload_mid_stream_reaches_openai_clients() -> None:
    upstream = fixture_bytes("anthropic", "stream_overloaded.sse")
    payloads = sse_payloads(relay(anthropic.ADAPTER, openai_chat.StreamRenderer(), upstream))
    assert payloads[-2][1]["error"]["code"] == "overloaded_error"
    assert payloads[-1] == (None, "[DONE]")
