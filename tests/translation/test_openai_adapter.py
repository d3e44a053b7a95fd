"""The OpenAI Chat Completions upstream adapter, over OpenAI's documented examples."""

from __future__ import annotations

import orjson
import pytest

from tests.translation.helpers import (
    byte_by_byte,
    fixture_bytes,
    fixture_json,
    parse_all,
    parse_in_pieces,
    random_splits,
)
from tollgate.canonical import (
    ChatRequest,
    Finish,
    FinishReason,
    Message,
    StreamError,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageUpdate,
)
from tollgate.errors import InvalidRequest, UpstreamUnavailable
from tollgate.formats import openai_chat
from tollgate.providers.openai import ADAPTER, OpenAIChatAdapter, usage_from_response

STREAMS = ["stream_basic.sse", "stream_usage.sse", "stream_tool_calls.sse"]


def built(request: ChatRequest, adapter: OpenAIChatAdapter = ADAPTER) -> dict:
    call = adapter.build_request(request)
    assert (call.method, call.path) == ("POST", "chat/completions")
    assert call.headers == {"content-type": "application/json"}
    return orjson.loads(call.body)


@pytest.mark.parametrize(
    "name", ["request_basic.json", "request_tools.json", "request_tool_results.json"]
)
def test_documented_requests_survive_format_then_adapter_unchanged(name: str) -> None:
    body = fixture_json("openai", name)
    assert built(openai_chat.parse_request(body)) == body


def test_documented_vision_request_keeps_the_url_and_re_encodes_the_data_url() -> None:
    body = fixture_json("openai", "request_vision.json")
    out = built(openai_chat.parse_request(body))
    assert out["messages"] == body["messages"]
    assert out["max_completion_tokens"] == 300 and "max_tokens" not in out


def test_streaming_always_asks_for_usage_and_max_completion_tokens_wins() -> None:
    out = built(openai_chat.parse_request(fixture_json("openai", "request_options.json")))
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assert out["max_completion_tokens"] == 2048
    assert out["reasoning_effort"] == "low"
    assert out["response_format"]["json_schema"]["name"] == "calendar_event"
    assert (out["stop"], out["temperature"], out["top_p"], out["n"]) == (["\n\n"], 0.2, 0.9, 1)


def test_vendor_quirks_are_constructor_rows() -> None:
    request = ChatRequest("m", (Message("user", (TextPart("hi"),)),), max_tokens=5, stream=True)
    vendor = OpenAIChatAdapter("deepseek", max_tokens_field="max_tokens", stream_usage_option=False)
    out = built(request, vendor)
    assert out["max_tokens"] == 5 and "stream_options" not in out


def test_top_k_is_refused_saying_which_provider() -> None:
    request = ChatRequest("m", (Message("user", (TextPart("hi"),)),), top_k=3)
    with pytest.raises(InvalidRequest, match="top_k is not supported by openai") as caught:
        ADAPTER.build_request(request)
    assert caught.value.param == "top_k"


def test_reasoning_budget_from_anthropic_clients_becomes_an_effort() -> None:
    base = ChatRequest("o4-mini", (Message("user", (TextPart("hi"),)),))
    for budget, effort in [(1024, "low"), (5000, "medium"), (20000, "high")]:
        request = ChatRequest(base.model, base.messages, reasoning_budget=budget)
        assert built(request)["reasoning_effort"] == effort


def test_parse_documented_text_response() -> None:
    response = ADAPTER.parse_response(200, fixture_bytes("openai", "response_basic.json"))
    assert response.id == "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"
    assert response.created == 1741569952
    (choice,) = response.choices
    assert choice.message.parts == (TextPart("Hello! How can I assist you today?"),)
    assert choice.finish_reason is FinishReason.STOP
    assert response.usage == Usage(input_tokens=19, output_tokens=10)


def test_parse_documented_tool_call_response_keeps_the_id() -> None:
    response = ADAPTER.parse_response(200, fixture_bytes("openai", "response_tool_calls.json"))
    (choice,) = response.choices
    assert choice.message.parts == (
        ToolCall("call_abc123", "get_current_weather", '{\n"location": "Boston, MA"\n}'),
    )
    assert choice.finish_reason is FinishReason.TOOL_CALLS


def test_usage_cached_inside_prompt_and_reasoning_inside_completion() -> None:
    data = fixture_json("openai", "response_reasoning_cached.json")
    assert usage_from_response(data) == Usage(
        input_tokens=2006, output_tokens=300, cached_input_tokens=1920, reasoning_tokens=192
    )


def test_usage_vendor_variants() -> None:
    deepseek = {
        "usage": {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 64}
    }
    assert usage_from_response(deepseek).cached_input_tokens == 64
    # xAI-style: reasoning reported beside completion tokens (total proves it)
    beside = {
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 335,
            "completion_tokens_details": {"reasoning_tokens": 320},
        }
    }
    assert usage_from_response(beside) == Usage(10, 325, reasoning_tokens=320)
    assert usage_from_response({"usage": None}) == Usage()


def test_documented_tool_call_stream() -> None:
    events = parse_all(ADAPTER.stream_parser(), fixture_bytes("openai", "stream_tool_calls.sse"))
    assert events[0] == StreamStart("chatcmpl-123", "gpt-4o-mini")
    assert events[1] == ToolCallStart(0, "call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather")
    arguments = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    assert orjson.loads(arguments) == {"location": "Paris, France"}
    assert events[-2:] == [
        UsageUpdate(Usage(input_tokens=64, output_tokens=17)),
        Finish(FinishReason.TOOL_CALLS),
    ]


def test_usage_chunk_after_finish_still_precedes_the_finish_event() -> None:
    events = parse_all(ADAPTER.stream_parser(), fixture_bytes("openai", "stream_usage.sse"))
    assert [type(e).__name__ for e in events] == [
        "StreamStart",
        "TextDelta",
        "TextDelta",
        "UsageUpdate",
        "Finish",
    ]


@pytest.mark.parametrize("name", STREAMS)
def test_streams_are_independent_of_chunk_boundaries(name: str) -> None:
    data = fixture_bytes("openai", name)
    whole = parse_all(ADAPTER.stream_parser(), data)
    for seed in range(25):
        assert parse_in_pieces(ADAPTER.stream_parser(), random_splits(data, seed)) == whole
    assert parse_in_pieces(ADAPTER.stream_parser(), byte_by_byte(data)) == whole


@pytest.mark.parametrize("name", STREAMS)
def test_every_truncation_ends_in_an_error_or_a_finish_never_silence(name: str) -> None:
    data = fixture_bytes("openai", name)
    for cut in range(0, len(data), 7):
        events = parse_all(ADAPTER.stream_parser(), data[:cut])
        assert isinstance(events[-1], StreamError | Finish), (cut, events[-1:])
    before_finish = data[: data.index(b'"finish_reason": "')]
    assert isinstance(parse_all(ADAPTER.stream_parser(), before_finish)[-1], StreamError)


def test_whole_tool_call_in_one_fragment_and_missing_index() -> None:
    chunk = {
        "id": "c",
        "model": "m",
        "choices": [
            {
                "delta": {
                    "tool_calls": [{"id": "t1", "function": {"name": "f", "arguments": "{}"}}]
                },
                "finish_reason": "tool_calls",
            }
        ],
    }
    data = b"data: " + orjson.dumps(chunk) + b"\n\n"
    events = parse_all(ADAPTER.stream_parser(), data)
    assert events[1:] == [
        ToolCallStart(0, "t1", "f"),
        ToolCallDelta(0, "{}"),
        Finish(FinishReason.TOOL_CALLS),
    ]


def test_in_band_error_stops_the_stream() -> None:
    data = b'data: {"id":"c","choices":[{"delta":{"content":"x"}}]}\n\n'
    data += b'data: {"error":{"message":"The server had an error","type":"server_error"}}\n\n'
    data += b'data: {"id":"c","choices":[{"delta":{"content":"ignored"}}]}\n\n'
    events = parse_all(ADAPTER.stream_parser(), data)
    assert events[1] == TextDelta("x")
    assert events[2:] == [StreamError("The server had an error", 502, "server_error")]


def test_parse_error_documented_and_odd_bodies() -> None:
    info = ADAPTER.parse_error(401, fixture_bytes("openai", "error_invalid_key.json"))
    assert info.status == 401 and info.type == "invalid_request_error"
    assert info.message.startswith("Incorrect API key provided")
    assert ADAPTER.parse_error(422, b'{"detail": "bad field"}').message == "bad field"
    assert (
        ADAPTER.parse_error(502, b"<html>Bad gateway</html>").message == "<html>Bad gateway</html>"
    )


def test_parse_response_refuses_error_statuses_and_garbage() -> None:
    with pytest.raises(UpstreamUnavailable, match="401"):
        ADAPTER.parse_response(401, fixture_bytes("openai", "error_invalid_key.json"))
    with pytest.raises(UpstreamUnavailable, match="not valid JSON"):
        ADAPTER.parse_response(200, b"{truncated")


def test_usage_observer_on_raw_bytes_at_any_split() -> None:
    data = fixture_bytes("openai", "stream_tool_calls.sse")
    for pieces in ([data], byte_by_byte(data), *(random_splits(data, s) for s in range(10))):
        observer = ADAPTER.observe_stream_usage()
        for piece in pieces:
            observer.feed(piece)
        assert observer.usage == Usage(input_tokens=64, output_tokens=17)


def test_usage_observer_ignores_usage_text_inside_content() -> None:
    observer = ADAPTER.observe_stream_usage()
    content = 'the "usage": {"prompt_tokens": 999}'
    chunk = {"choices": [{"delta": {"content": content}}], "usage": None}
    observer.feed(b"data: " + orjson.dumps(chunk) + b"\n\n")
    assert observer.usage is None
