"""The Anthropic Messages upstream adapter, over Anthropic's documented examples."""

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
    ImagePart,
    Message,
    ReasoningDelta,
    ReasoningPart,
    ResponseFormat,
    StreamError,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolResult,
    Usage,
    UsageUpdate,
)
from tollgate.errors import InvalidRequest
from tollgate.formats import anthropic_messages
from tollgate.providers.anthropic import ADAPTER, usage_from_response

STREAMS = ["stream_basic.sse", "stream_tool_use.sse", "stream_thinking.sse"]
HELLO = (Message("user", (TextPart("Hello"),)),)


def built(request: ChatRequest, **kwargs: int) -> dict:
    call = ADAPTER.build_request(request, **kwargs)
    assert (call.method, call.path) == ("POST", "v1/messages")
    assert call.headers["anthropic-version"] == "2023-06-01"
    return orjson.loads(call.body)


@pytest.mark.parametrize(
    "name", ["request_tool_use.json", "request_tool_result.json", "request_thinking_image.json"]
)
def test_documented_requests_survive_format_then_adapter_unchanged(name: str) -> None:
    body = fixture_json("anthropic", name)
    assert built(anthropic_messages.parse_request(body)) == body


def test_max_tokens_from_request_else_per_call_default_else_refused() -> None:
    assert built(ChatRequest("claude", HELLO, max_tokens=10))["max_tokens"] == 10
    assert built(ChatRequest("claude", HELLO), default_max_tokens=64000)["max_tokens"] == 64000
    with pytest.raises(InvalidRequest, match="max_tokens is required by anthropic") as caught:
        ADAPTER.build_request(ChatRequest("claude", HELLO))
    assert caught.value.param == "max_tokens"


def test_n_greater_than_one_is_refused_saying_so() -> None:
    with pytest.raises(InvalidRequest, match="n > 1 is not supported by anthropic") as caught:
        ADAPTER.build_request(ChatRequest("claude", HELLO, n=2, max_tokens=5))
    assert caught.value.param == "n"


def test_json_object_is_refused_and_json_schema_goes_to_output_config() -> None:
    with pytest.raises(InvalidRequest, match="json_object is not supported by anthropic"):
        ADAPTER.build_request(
            ChatRequest("c", HELLO, max_tokens=5, response_format=ResponseFormat("json_object"))
        )
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    request = ChatRequest(
        "c", HELLO, max_tokens=5, response_format=ResponseFormat("json_schema", schema=schema)
    )
    assert built(request)["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_effort_becomes_a_thinking_budget_that_fits_under_max_tokens() -> None:
    request = ChatRequest("c", HELLO, max_tokens=4000, reasoning_effort="high")
    assert built(request)["thinking"] == {"type": "enabled", "budget_tokens": 3999}
    request = ChatRequest("c", HELLO, max_tokens=20000, reasoning_effort="low")
    assert built(request)["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert "thinking" not in built(ChatRequest("c", HELLO, max_tokens=9, reasoning_effort="none"))
    with pytest.raises(InvalidRequest, match="thinking budget of at least 1024"):
        ADAPTER.build_request(ChatRequest("c", HELLO, max_tokens=500, reasoning_effort="low"))


def test_parallel_tool_results_and_following_text_share_one_user_turn() -> None:
    calls = (ToolCall("call_1", "f", '{"a": 1}'), ToolCall("call_2", "f", ""))
    messages = (
        Message("user", (TextPart("go"),)),
        Message("assistant", (ReasoningPart("unsigned"), *calls)),
        Message("tool", (ToolResult("call_1", "one"),)),
        Message("tool", (ToolResult("call_2", "boom", is_error=True),)),
        Message("user", (TextPart("and?"),)),
    )
    out = built(ChatRequest("c", messages, max_tokens=5, parallel_tool_calls=False))
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
            {"type": "tool_use", "id": "call_2", "name": "f", "input": {}},
        ],
    }
    assert out["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "one"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "boom", "is_error": True},
            {"type": "text", "text": "and?"},
        ],
    }
    assert "tool_choice" not in out  # no tools declared: nothing to restrict


def test_tool_choice_mapping_and_disable_parallel() -> None:
    from tollgate.canonical import Tool

    tools = (Tool("f", parameters={"type": "object"}),)
    for mode, expected in [("auto", "auto"), ("required", "any"), ("none", "none")]:
        request = ChatRequest("c", HELLO, max_tokens=5, tools=tools, tool_choice=ToolChoice(mode))
        assert built(request)["tool_choice"] == {"type": expected}
    request = ChatRequest(
        "c", HELLO, max_tokens=5, tools=tools, tool_choice=ToolChoice("tool", "f"),
        parallel_tool_calls=False,
    )  # fmt: skip
    assert built(request)["tool_choice"] == {
        "type": "tool",
        "name": "f",
        "disable_parallel_tool_use": True,
    }


def test_invalid_tool_arguments_are_refused_naming_the_field() -> None:
    messages = (Message("assistant", (ToolCall("t", "f", "{not json"),)),)
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.parts\[0\]\.arguments"):
        ADAPTER.build_request(ChatRequest("c", messages, max_tokens=5))


def test_images_inline_and_by_url_without_fetching() -> None:
    parts = (ImagePart(data=b"\x89PNG", media_type="image/png"), ImagePart(url="https://x/y.jpg"))
    out = built(ChatRequest("c", (Message("user", parts),), max_tokens=5))
    assert out["messages"][0]["content"] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw=="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}},
    ]


def test_parse_documented_responses() -> None:
    response = ADAPTER.parse_response(200, fixture_bytes("anthropic", "response_tool_use.json"))
    assert response.usage is None  # the documented example has none
    (choice,) = response.choices
    assert choice.finish_reason is FinishReason.TOOL_CALLS
    assert choice.message.parts[1] == ToolCall(
        "toolu_01A09q90qw90lq917835lq9",
        "get_weather",
        '{"location":"San Francisco, CA","unit":"celsius"}',
    )
    thinking = ADAPTER.parse_response(200, fixture_bytes("anthropic", "response_thinking.json"))
    first = thinking.choices[0].message.parts[0]
    assert (
        isinstance(first, ReasoningPart) and first.signature and first.signature.startswith("WaUj")
    )


def test_usage_cache_reads_and_writes_are_beside_input_tokens() -> None:
    data = fixture_json("anthropic", "response_cache_usage.json")
    assert usage_from_response(data) == Usage(
        input_tokens=21 + 188086, output_tokens=393, cache_write_input_tokens=188086
    )
    basic = fixture_json("anthropic", "response_basic.json")
    assert usage_from_response(basic) == Usage(input_tokens=2095, output_tokens=503)
    thinking = fixture_json("anthropic", "response_thinking.json")
    assert usage_from_response(thinking).reasoning_tokens == 250


def test_documented_tool_use_stream() -> None:
    events = parse_all(ADAPTER.stream_parser(), fixture_bytes("anthropic", "stream_tool_use.sse"))
    assert events[0] == StreamStart("msg_014p7gG3wDgGV9EUtLvnow3U", "claude-sonnet-4-5-20250929")
    assert events[1] == UsageUpdate(Usage(input_tokens=472, output_tokens=2))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    # Block index 1 is the first TOOL call: ordinal 0.
    assert ToolCallStart(0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather") in events
    arguments = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    assert orjson.loads(arguments) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    # message_delta output is cumulative; input comes from message_start.
    assert events[-2:] == [
        UsageUpdate(Usage(input_tokens=472, output_tokens=89)),
        Finish(FinishReason.TOOL_CALLS),
    ]


def test_documented_thinking_stream_without_usage() -> None:
    events = parse_all(ADAPTER.stream_parser(), fixture_bytes("anthropic", "stream_thinking.sse"))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert reasoning.endswith("10,800 + 1,350 + 81 = 12,231")
    assert not any(isinstance(e, UsageUpdate) for e in events)
    assert events[-2:] == [TextDelta("27 * 453 = 12,231"), Finish(FinishReason.STOP)]


def test_in_band_overloaded_error_keeps_its_529() -> None:
    events = parse_all(ADAPTER.stream_parser(), fixture_bytes("anthropic", "stream_overloaded.sse"))
    assert events[-1] == StreamError("Overloaded", 529, "overloaded_error")


@pytest.mark.parametrize("name", STREAMS)
def test_streams_are_independent_of_chunk_boundaries(name: str) -> None:
    data = fixture_bytes("anthropic", name)
    whole = parse_all(ADAPTER.stream_parser(), data)
    for seed in range(25):
        assert parse_in_pieces(ADAPTER.stream_parser(), random_splits(data, seed)) == whole
    assert parse_in_pieces(ADAPTER.stream_parser(), byte_by_byte(data)) == whole


@pytest.mark.parametrize("name", STREAMS)
def test_a_stream_cut_before_message_stop_ends_in_an_error(name: str) -> None:
    data = fixture_bytes("anthropic", name)
    stop = data.index(b"event: message_stop")
    for cut in range(0, stop, 11):
        events = parse_all(ADAPTER.stream_parser(), data[:cut])
        assert events[-1] == StreamError(
            "The upstream stream ended before it was complete; retry the request."
        )


def test_parse_error_documented() -> None:
    info = ADAPTER.parse_error(404, fixture_bytes("anthropic", "error_not_found.json"))
    assert info == (404, "The requested resource could not be found.", "not_found_error")


def test_usage_observer_merges_message_start_and_message_delta() -> None:
    data = fixture_bytes("anthropic", "stream_tool_use.sse")
    for pieces in ([data], byte_by_byte(data), *(random_splits(data, s) for s in range(10))):
        observer = ADAPTER.observe_stream_usage()
        for piece in pieces:
            observer.feed(piece)
        assert observer.usage == Usage(input_tokens=472, output_tokens=89)
