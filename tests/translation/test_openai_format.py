"""OpenAI Chat Completions as the client format: parse, render, stream, errors."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from tests.translation.helpers import (
    fixture_bytes,
    fixture_json,
    openai_sdk_accumulate,
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
from tollgate.formats import openai_chat
from tollgate.providers.openai import ADAPTER


def test_parse_developer_and_system_messages_are_lifted_in_order() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "one"},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": [{"type": "text", "text": "two"}]},
        ],
    }
    request = openai_chat.parse_request(body)
    assert request.system == (Instruction("system", "one"), Instruction("developer", "two"))
    assert request.messages == (Message("user", (TextPart("hi"),)),)


def test_parse_documented_vision_request_decodes_the_data_url() -> None:
    request = openai_chat.parse_request(fixture_json("openai", "request_vision.json"))
    text, by_url, inline = request.messages[0].parts
    assert text == TextPart("What's in this image?")
    assert isinstance(by_url, ImagePart) and by_url.url and by_url.data is None
    assert isinstance(inline, ImagePart) and inline.media_type == "image/png"
    assert inline.data and inline.data.startswith(b"\x89PNG") and inline.detail == "low"
    assert request.max_tokens == 300


def test_parse_documented_tool_conversation() -> None:
    request = openai_chat.parse_request(fixture_json("openai", "request_tool_results.json"))
    assistant = request.messages[1]
    assert assistant.parts == (
        ToolCall("call_12345xyz", "get_weather", '{"location":"Paris, France"}'),
        ToolCall("call_67890abc", "get_weather", '{"location":"Bogotá, Colombia"}'),
    )
    assert request.messages[2] == Message("tool", (ToolResult("call_12345xyz", "14"),))
    assert request.tools[0].strict is True and request.parallel_tool_calls is True


def test_parse_documented_options() -> None:
    request = openai_chat.parse_request(fixture_json("openai", "request_options.json"))
    assert request.max_tokens == 2048  # max_completion_tokens wins over max_tokens
    assert request.stream and request.include_usage
    assert request.reasoning_effort == "low" and request.user == "user-1234"
    assert request.stop == ("\n\n",) and request.temperature == 0.2 and request.top_p == 0.9
    assert request.response_format is not None
    assert request.response_format.type == "json_schema"
    assert request.response_format.name == "calendar_event"


def test_parse_tool_choice_forms() -> None:
    base: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert openai_chat.parse_request({**base, "tool_choice": "required"}).tool_choice == ToolChoice(
        "required"
    )
    named = {"type": "function", "function": {"name": "f"}}
    assert openai_chat.parse_request({**base, "tool_choice": named}).tool_choice == ToolChoice(
        "tool", "f"
    )
    fmt = openai_chat.parse_request({**base, "response_format": {"type": "json_object"}})
    assert fmt.response_format == ResponseFormat("json_object")


USER = [{"role": "user", "content": "x"}]
BAD_INPUT = [
    ({"messages": USER}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "system", "content": "only"}]}, "messages"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    (
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "messages[0].content[0].image_url",
    ),
    (
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}
                    ],
                }
            ],
        },
        "messages[0].content[0].image_url.url",
    ),
    (
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
                }
            ],
        },
        "messages[0].content[0].image_url.url",
    ),
    (
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}],
                },
            ],
        },
        "messages[0].tool_calls[0].function.arguments",
    ),
    ({"model": "m", "messages": USER, "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": USER, "n": True}, "n"),
    ({"model": "m", "messages": USER, "stop": [1]}, "stop"),
    ({"model": "m", "messages": USER, "tools": [{"type": "function"}]}, "tools[0].function"),
    ({"model": "m", "messages": USER, "tool_choice": "sometimes"}, "tool_choice"),
    ({"model": "m", "messages": USER, "response_format": {"type": "yaml"}}, "response_format.type"),
    (
        {"model": "m", "messages": USER, "stream_options": {"include_usage": "yes"}},
        "stream_options.include_usage",
    ),
]


@pytest.mark.parametrize(("body", "param"), BAD_INPUT)
def test_bad_input_is_refused_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        openai_chat.parse_request(body)
    assert caught.value.param == param
    assert caught.value.message.startswith(param)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
    ],
)
def test_unsupported_features_are_refused_saying_which(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest, match="not supported when translating") as caught:
        openai_chat.parse_request({"model": "m", "messages": USER, **extra})
    assert caught.value.param == param and caught.value.code == "unsupported_feature"


def test_ignored_hints_do_not_fail() -> None:
    body = {"model": "m", "messages": USER, "seed": 1, "store": True, "logprobs": False}
    assert openai_chat.parse_request(body).model == "m"


@pytest.mark.parametrize("name", ["response_basic.json", "response_tool_calls.json"])
def test_render_response_round_trips_documented_responses(name: str) -> None:
    documented = fixture_json("openai", name)
    rendered = openai_chat.render_response(
        ADAPTER.parse_response(200, fixture_bytes("openai", name))
    )
    ChatCompletion.model_validate(rendered)  # the SDK accepts it
    for key in ("id", "object", "created", "model"):
        assert rendered[key] == documented[key]
    got, want = rendered["choices"][0], documented["choices"][0]
    assert got["finish_reason"] == want["finish_reason"]
    assert got["message"]["content"] == want["message"]["content"]
    assert got["message"].get("tool_calls") == want["message"].get("tool_calls")
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert rendered["usage"][key] == documented["usage"][key]


def test_render_response_usage_and_reasoning() -> None:
    response = ChatResponse(
        "r1",
        "claude",
        (
            Choice(
                0,
                Message("assistant", (ReasoningPart("think", "sig"), TextPart("answer"))),
                FinishReason.LENGTH,
            ),
        ),
        Usage(120, 30, cached_input_tokens=50, cache_write_input_tokens=20, reasoning_tokens=10),
    )
    rendered = openai_chat.render_response(response, created=1700000000)
    assert rendered["created"] == 1700000000
    assert rendered["choices"][0]["message"]["reasoning_content"] == "think"
    assert rendered["choices"][0]["finish_reason"] == "length"
    assert rendered["usage"] == {
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 50, "cache_write_tokens": 20},
        "completion_tokens_details": {"reasoning_tokens": 10},
    }


EVENTS: list[StreamEvent] = [
    StreamStart("msg_1", "claude-x"),
    ReasoningDelta("hmm"),
    TextDelta("Hel"),
    TextDelta("lo"),
    ToolCallStart(0, "toolu_1", "get_weather"),
    ToolCallDelta(0, '{"location":'),
    ToolCallDelta(0, ' "Paris"}'),
    ToolCallStart(1, "toolu_2", "get_time"),
    ToolCallDelta(1, "{}"),
    UsageUpdate(Usage(10, 5)),
    UsageUpdate(Usage(10, 7, reasoning_tokens=2)),
    Finish(FinishReason.TOOL_CALLS),
]


def render_all(renderer: openai_chat.StreamRenderer, events: list[StreamEvent]) -> bytes:
    return b"".join(renderer.render(event) for event in events) + renderer.close()


def test_stream_renders_chunks_the_sdk_accumulates() -> None:
    data = render_all(openai_chat.StreamRenderer(include_usage=True, created=1), EVENTS)
    completion = openai_sdk_accumulate(data)
    assert completion.id == "msg_1" and completion.model == "claude-x"
    message = completion.choices[0].message
    assert message.content == "Hello"
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []] == [
        ("toolu_1", "get_weather", '{"location": "Paris"}'),
        ("toolu_2", "get_time", "{}"),
    ]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 7)


def test_stream_chunk_order_and_usage_only_when_asked() -> None:
    payloads = sse_payloads(render_all(openai_chat.StreamRenderer(created=1), EVENTS))
    chunks = [p for _, p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all("usage" not in chunk for chunk in chunks)
    assert payloads[-1] == (None, "[DONE]")
    with_usage = sse_payloads(render_all(openai_chat.StreamRenderer(include_usage=True), EVENTS))
    assert with_usage[-2][1]["choices"] == [] and with_usage[-2][1]["usage"]["total_tokens"] == 17


def test_every_content_event_renders_immediately() -> None:
    renderer = openai_chat.StreamRenderer()
    for event in EVENTS:
        out = renderer.render(event)
        assert bool(out) == (not isinstance(event, UsageUpdate)), event


def test_in_band_errors_then_done() -> None:
    renderer = openai_chat.StreamRenderer()
    data = renderer.render(StreamStart("c", "m")) + renderer.render(TextDelta("partial"))
    data += renderer.render(StreamError("Overloaded", 529, "overloaded_error"))
    data += renderer.render(TextDelta("after the error: dropped")) + renderer.close()
    payloads = sse_payloads(data)
    assert payloads[-2][1] == {
        "error": {
            "message": "Overloaded",
            "type": "api_error",
            "code": "overloaded_error",
            "param": None,
        }
    }
    assert payloads[-1] == (None, "[DONE]")
    gateway = openai_chat.StreamRenderer().render_error(402, "insufficient_credits", "Top up.")
    assert sse_payloads(gateway)[0][1]["error"]["type"] == "insufficient_quota"


def test_render_error_body() -> None:
    assert openai_chat.render_error_body(400, "invalid_request", "messages: bad") == {
        "error": {
            "message": "messages: bad",
            "type": "invalid_request_error",
            "code": "invalid_request",
            "param": None,
        }
    }
