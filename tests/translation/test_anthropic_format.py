"""Anthropic Messages as the client format: parse, render, stream, errors."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import Message as AnthropicMessage

from tests.translation.helpers import (
    anthropic_sdk_accumulate,
    fixture_bytes,
    fixture_json,
    sse_payloads,
)
from tollgate.canonical import (
    ChatResponse,
    Choice,
    Finish,
    FinishReason,
    ImagePart,
    Instruction,
    Message,
    ReasoningDelta,
    ReasoningPart,
    ResponseFormat,
    StreamError,
    StreamEvent,
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
from tollgate.providers.anthropic import ADAPTER


def test_parse_documented_tool_result_turn_splits_results_first() -> None:
    request = anthropic_messages.parse_request(
        fixture_json("anthropic", "request_tool_result.json")
    )
    assert request.system == (Instruction("system", "You are a helpful weather assistant."),)
    assert request.messages[1].parts[1] == ToolCall(
        "toolu_01A09q90qw90lq917835lq9",
        "get_weather",
        '{"location":"San Francisco, CA","unit":"celsius"}',
    )
    assert request.messages[2] == Message(
        "tool", (ToolResult("toolu_01A09q90qw90lq917835lq9", "15 degrees"),)
    )


def test_parse_mixed_user_turn_keeps_results_ahead_of_text() -> None:
    body = {
        "model": "c",
        "max_tokens": 5,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "also this"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                        "is_error": True,
                    },
                ],
            }
        ],
    }
    request = anthropic_messages.parse_request(body)
    assert request.messages == (
        Message("tool", (ToolResult("t1", "ab", is_error=True),)),
        Message("user", (TextPart("also this"),)),
    )


def test_parse_thinking_images_and_options() -> None:
    request = anthropic_messages.parse_request(
        fixture_json("anthropic", "request_thinking_image.json")
    )
    assert request.reasoning_budget == 10000 and request.max_tokens == 16000
    inline, by_url, _ = request.messages[0].parts
    assert isinstance(inline, ImagePart) and inline.media_type == "image/png" and inline.data
    assert isinstance(by_url, ImagePart) and by_url.url and by_url.data is None
    body = {
        "model": "c",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
        "system": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "thinking": {"type": "adaptive"},
        "output_config": {
            "effort": "high",
            "format": {"type": "json_schema", "schema": {"type": "object"}},
        },
        "stop_sequences": ["END"],
        "top_k": 5,
        "metadata": {"user_id": "u-1"},
    }
    request = anthropic_messages.parse_request(body)
    assert request.tool_choice == ToolChoice("required") and request.parallel_tool_calls is False
    assert request.reasoning_effort == "high" and request.reasoning_budget is None
    assert request.response_format == ResponseFormat("json_schema", schema={"type": "object"})
    assert (request.stop, request.top_k, request.user) == (("END",), 5, "u-1")


MESSAGES = [{"role": "user", "content": "x"}]
BAD_INPUT = [
    ({"max_tokens": 5, "messages": MESSAGES}, "model"),
    ({"model": "c", "messages": MESSAGES}, "max_tokens"),
    ({"model": "c", "max_tokens": 5, "messages": "hi"}, "messages"),
    (
        {"model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
        "messages[0].role",
    ),
    (
        {
            "model": "c",
            "max_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "!!"},
                        }
                    ],
                }
            ],
        },
        "messages[0].content[0].source.data",
    ),
    (
        {
            "model": "c",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "tool_result"}]}],
        },
        "messages[0].content[0].tool_use_id",
    ),
    (
        {"model": "c", "max_tokens": 5, "messages": MESSAGES, "thinking": {"type": "enabled"}},
        "thinking.budget_tokens",
    ),
    (
        {"model": "c", "max_tokens": 5, "messages": MESSAGES, "tool_choice": {"type": "maybe"}},
        "tool_choice.type",
    ),
    (
        {"model": "c", "max_tokens": 5, "messages": MESSAGES, "tools": [{"name": "f"}]},
        "tools[0].input_schema",
    ),
]


@pytest.mark.parametrize(("body", "param"), BAD_INPUT)
def test_bad_input_is_refused_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        anthropic_messages.parse_request(body)
    assert caught.value.param == param and caught.value.message.startswith(param)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0].type",
        ),
    ],
)
def test_unsupported_features_are_refused_saying_which(extra: dict[str, Any], param: str) -> None:
    body = {"model": "c", "max_tokens": 5, "messages": MESSAGES, **extra}
    with pytest.raises(InvalidRequest, match="not supported when translating") as caught:
        anthropic_messages.parse_request(body)
    assert caught.value.param == param


@pytest.mark.parametrize(
    "name", ["response_basic.json", "response_tool_use.json", "response_thinking.json"]
)
def test_render_response_round_trips_documented_responses(name: str) -> None:
    documented = fixture_json("anthropic", name)
    parsed = ADAPTER.parse_response(200, fixture_bytes("anthropic", name))
    rendered = anthropic_messages.render_response(parsed)
    AnthropicMessage.model_validate(rendered)
    assert rendered["content"] == documented["content"]
    assert (rendered["id"], rendered["stop_reason"]) == (
        documented["id"],
        documented["stop_reason"],
    )


def test_render_usage_puts_cache_tokens_beside_input() -> None:
    response = ChatResponse(
        "r",
        "gemini",
        (Choice(0, Message("assistant", (TextPart("x"),)), FinishReason.CONTENT_FILTER),),
        Usage(100, 9, cached_input_tokens=60, cache_write_input_tokens=10),
    )
    rendered = anthropic_messages.render_response(response)
    assert rendered["stop_reason"] == "refusal"
    assert rendered["usage"] == {
        "input_tokens": 30,
        "cache_creation_input_tokens": 10,
        "cache_read_input_tokens": 60,
        "output_tokens": 9,
    }


def test_broken_tool_arguments_stay_visible() -> None:
    response = ChatResponse(
        "r",
        "m",
        (Choice(0, Message("assistant", (ToolCall("t", "f", "{oops"),)), FinishReason.TOOL_CALLS),),
    )
    block = anthropic_messages.render_response(response)["content"][0]
    assert block["input"] == {"_raw_arguments": "{oops"}


EVENTS: list[StreamEvent] = [
    StreamStart("resp-1", "gemini-2.5-flash"),
    ReasoningDelta("Let me "),
    ReasoningDelta("think."),
    TextDelta("Calling "),
    TextDelta("tools."),
    ToolCallStart(0, "call_0", "get_weather"),
    ToolCallDelta(0, '{"location": "Paris"}'),
    ToolCallStart(1, "call_1", "get_time"),
    ToolCallDelta(1, "{}"),
    UsageUpdate(Usage(50, 20, cached_input_tokens=10)),
    Finish(FinishReason.TOOL_CALLS),
]


def render_all(events: list[StreamEvent]) -> bytes:
    renderer = anthropic_messages.StreamRenderer()
    return b"".join(renderer.render(event) for event in events) + renderer.close()


def test_stream_is_the_exact_documented_event_sequence() -> None:
    names = [name for name, _ in sse_payloads(render_all(EVENTS))]
    block = ["content_block_start", "content_block_delta"]
    assert names == [
        "message_start",
        *block, "content_block_delta", "content_block_stop",  # thinking
        *block, "content_block_delta", "content_block_stop",  # text
        *block, "content_block_stop",  # tool 0
        *block, "content_block_stop",  # tool 1
        "message_delta",
        "message_stop",
    ]  # fmt: skip


def test_stream_accumulates_in_the_anthropic_sdk() -> None:
    message = anthropic_sdk_accumulate(render_all(EVENTS))
    thinking, text, tool0, tool1 = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Let me think."
    assert text.type == "text" and text.text == "Calling tools."
    assert tool0.type == "tool_use" and (tool0.id, tool0.input) == ("call_0", {"location": "Paris"})
    assert tool1.type == "tool_use" and tool1.input == {}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (40, 10)
    assert message.usage.output_tokens == 20


def test_stream_error_in_band_and_nothing_after() -> None:
    renderer = anthropic_messages.StreamRenderer()
    data = renderer.render(StreamStart("m", "x")) + renderer.render(TextDelta("par"))
    data += renderer.render(StreamError("The upstream stream ended before it was complete."))
    data += renderer.render(TextDelta("dropped")) + renderer.close()
    payloads = sse_payloads(data)
    assert payloads[-1] == (
        "error",
        {
            "type": "error",
            "error": {
                "type": "api_error",
                "message": "The upstream stream ended before it was complete.",
            },
        },
    )
    overloaded = anthropic_messages.StreamRenderer().render(
        StreamError("Overloaded", 529, "overloaded_error")
    )
    assert sse_payloads(overloaded)[0][1]["error"]["type"] == "overloaded_error"
    gateway = anthropic_messages.StreamRenderer().render_error(
        402, "insufficient_credits", "Top up."
    )
    assert sse_payloads(gateway)[0][1]["error"]["type"] == "billing_error"


def test_render_error_body() -> None:
    assert anthropic_messages.render_error_body(429, "rate_limited", "Slow down.") == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Slow down.", "code": "rate_limited"},
    }


def test_reasoning_signature_round_trip_through_parse() -> None:
    body = {
        "model": "c",
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "t", "signature": "s"},
                    {"type": "redacted_thinking", "data": "x"},
                ],
            },
        ],
    }
    request = anthropic_messages.parse_request(body)
    assert request.messages[1].parts == (ReasoningPart("t", "s"),)
