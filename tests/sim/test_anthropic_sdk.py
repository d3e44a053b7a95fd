"""The simulated Anthropic Messages API, driven by the official ``anthropic`` SDK."""

from __future__ import annotations

import json
import math

import anthropic
import httpx
import pytest

MODEL = "claude-sonnet-4-6"
PROMPT = "Say hello to the simulator"  # 7 tokens + 4 = 11
REPLY = f"This is a simulated reply from {MODEL} to: Say hello to the simulator"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
TIME_TOOL = {
    "name": "get_time",
    "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}},
}


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def user(text: str) -> list[anthropic.types.MessageParam]:
    return [{"role": "user", "content": text}]


def test_message_text_usage_and_headers(claude: anthropic.Anthropic) -> None:
    raw = claude.messages.with_raw_response.create(
        model=MODEL, max_tokens=200, messages=user(PROMPT)
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == REPLY  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 11
    assert message.usage.output_tokens == tokens(REPLY)
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0
    assert raw.headers["request-id"].startswith("req_")
    assert "anthropic-ratelimit-requests-limit" in raw.headers


def test_system_prompt_counts_as_a_message(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL, max_tokens=200, system="Be brief.", messages=user(PROMPT)
    )
    assert message.usage.input_tokens == tokens("Be brief.") + 4 + 11


def test_stream_final_message_usage(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model=MODEL, max_tokens=200, messages=user(PROMPT)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY
    assert final.content[0].text == REPLY  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 11  # from message_start
    assert final.usage.output_tokens == tokens(REPLY)  # cumulative, from message_delta


def test_raw_stream_event_order_and_usage_placement(claude: anthropic.Anthropic) -> None:
    events = list(
        claude.messages.create(model=MODEL, max_tokens=200, messages=user(PROMPT), stream=True)
    )
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    assert start.message.usage.input_tokens == 11
    assert start.message.usage.output_tokens == 1
    assert delta.usage.output_tokens == tokens(REPLY)
    assert delta.usage.input_tokens is None  # the delta carries output tokens only


def test_cache_reads_and_writes_are_beside_input_tokens(claude: anthropic.Anthropic) -> None:
    long_text = "y" * 4096  # 1024 + 4 = 1028 prompt tokens
    cached = claude.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": long_text, "cache_control": {"type": "ephemeral"}}
                ],
            }
        ],
    )
    usage = cached.usage
    assert usage.cache_read_input_tokens == 514
    assert usage.input_tokens == 1028 - 514  # EXCLUDES the cache read
    assert usage.cache_creation_input_tokens == 0

    # No cache_control marker: Anthropic caches nothing.
    plain = claude.messages.create(model=MODEL, max_tokens=100, messages=user(long_text))
    assert plain.usage.input_tokens == 1028
    assert plain.usage.cache_read_input_tokens == 0

    written = claude.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=user(long_text),
        extra_headers={"x-sim-cache-write-tokens": "1000"},
    )
    assert written.usage.cache_creation_input_tokens == 1000
    assert written.usage.input_tokens == 28
    assert written.usage.cache_creation is not None
    assert written.usage.cache_creation.ephemeral_5m_input_tokens == 1000


def test_streamed_cache_usage_is_in_message_start(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=MODEL,
        max_tokens=100,
        system=[{"type": "text", "text": "z" * 4096, "cache_control": {"type": "ephemeral"}}],
        messages=user(PROMPT),
    ) as stream:
        final = stream.get_final_message()
    prompt = 1028 + 11
    assert final.usage.cache_read_input_tokens == prompt // 2
    assert final.usage.input_tokens == prompt - prompt // 2


LONG = "y" * 4096  # 1024 + 4 = 1028 prompt tokens


@pytest.mark.parametrize(
    ("controls", "total", "one_hour"),
    [
        # cache-write-tokens is the TOTAL; cache-write-1h-tokens how many of them were 1-hour.
        ({"cache-write-tokens": "1000", "cache-write-1h-tokens": "600"}, 1000, 600),
        # Without the 1h control every write is a 5-minute write (the behaviour before it).
        ({"cache-write-tokens": "1000"}, 1000, 0),
        # Alone, the 1h control is the total too.
        ({"cache-write-1h-tokens": "300"}, 300, 300),
        # The 1h part is capped at the total...
        ({"cache-write-tokens": "100", "cache-write-1h-tokens": "500"}, 100, 100),
        # ...and the total at the prompt.
        ({"cache-write-tokens": "5000", "cache-write-1h-tokens": "2000"}, 1028, 1028),
        ({"cache-write-1h-tokens": "0"}, 0, 0),
    ],
)
def test_cache_writes_split_into_5m_and_1h(
    claude: anthropic.Anthropic, controls: dict[str, str], total: int, one_hour: int
) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=user(LONG),
        extra_headers={f"x-sim-{name}": value for name, value in controls.items()},
    )
    usage = message.usage
    assert usage.cache_creation_input_tokens == total
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_1h_input_tokens == one_hour
    assert usage.cache_creation.ephemeral_5m_input_tokens == total - one_hour
    assert usage.cache_read_input_tokens == 0
    assert usage.input_tokens == 1028 - total  # EXCLUDES the writes, whatever their TTL


def test_cache_write_split_beside_cache_reads(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL + "~cache-write-tokens=400~cache-write-1h-tokens=150",
        max_tokens=100,
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}],
            }
        ],
    )
    usage = message.usage
    assert usage.cache_read_input_tokens == 514
    assert usage.cache_creation_input_tokens == 400
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == 250
    assert usage.cache_creation.ephemeral_1h_input_tokens == 150
    assert usage.input_tokens == 1028 - 514 - 400
    assert message.model == MODEL


def test_streamed_cache_write_split_is_in_message_start(claude: anthropic.Anthropic) -> None:
    # The directive survives a translating gateway; it adds its own characters to the prompt.
    prompt = LONG + " [sim cache-write-tokens=1000 cache-write-1h-tokens=700]"
    prompt_tokens = tokens(prompt) + 4
    events = list(
        claude.messages.create(model=MODEL, max_tokens=100, messages=user(prompt), stream=True)
    )
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    usage = start.message.usage
    assert usage.cache_creation_input_tokens == 1000
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_1h_input_tokens == 700
    assert usage.cache_creation.ephemeral_5m_input_tokens == 300
    assert usage.input_tokens == prompt_tokens - 1000
    assert delta.usage.cache_creation_input_tokens is None  # the delta carries output only

    with claude.messages.stream(
        model=MODEL,
        max_tokens=100,
        messages=user(prompt),
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_creation_input_tokens == 1000
    assert final.usage.cache_creation is not None
    assert final.usage.cache_creation.ephemeral_1h_input_tokens == 700
    assert final.usage.cache_creation.ephemeral_5m_input_tokens == 300
    assert final.usage.input_tokens == prompt_tokens - 1000


def test_cache_write_split_on_the_wire(http: httpx.Client) -> None:
    headers = {
        "x-api-key": "k",
        "anthropic-version": "2023-06-01",
        "x-sim-cache-write-tokens": "900",
        "x-sim-cache-write-1h-tokens": "900",
    }
    body = {"model": MODEL, "max_tokens": 10, "messages": user(LONG)}
    usage = http.post("/anthropic/v1/messages", headers=headers, json=body).json()["usage"]
    assert usage["input_tokens"] == 128
    assert usage["cache_creation_input_tokens"] == 900
    assert usage["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": 900,
    }


def test_max_tokens_truncates_with_stop_reason_max_tokens(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model=MODEL, max_tokens=2, messages=user(PROMPT))
    assert message.stop_reason == "max_tokens"
    assert message.content[0].text == REPLY[:8]  # type: ignore[union-attr]
    assert message.usage.output_tokens == 2


def test_tool_use_block_with_input_from_schema(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=200,
        messages=user("weather in Paris?"),
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use"
    assert block.id.startswith("toolu_")
    assert block.name == "get_weather"
    assert block.input == {"city": "sim-city", "days": 1}


def test_parallel_and_named_tool_choice(claude: anthropic.Anthropic) -> None:
    parallel = claude.messages.create(
        model=MODEL,
        max_tokens=200,
        messages=user("do these in parallel"),
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
    )
    assert [b.name for b in parallel.content if b.type == "tool_use"] == ["get_weather", "get_time"]

    named = claude.messages.create(
        model=MODEL,
        max_tokens=200,
        messages=user("time?"),
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_time"},
    )
    assert [b.name for b in named.content if b.type == "tool_use"] == ["get_time"]


def test_streamed_tool_use_input_json_deltas(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=MODEL,
        max_tokens=200,
        messages=user("weather?"),
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    partials = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len([p for p in partials if p]) == 3
    assert json.loads("".join(partials)) == {"city": "sim-city", "days": 1}
    [block] = final.content
    assert block.type == "tool_use" and block.input == {"city": "sim-city", "days": 1}
    assert final.stop_reason == "tool_use"


def test_tool_result_gets_a_text_answer(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Rainy, 12C"}
                ],
            },
        ],
    )
    assert message.stop_reason == "end_turn"
    assert message.content[0].text == (  # type: ignore[union-attr]
        f"This is a simulated reply from {MODEL} using the tool result: Rainy, 12C"
    )


def test_thinking_block_counts_in_output_tokens(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=MODEL,
        max_tokens=2000,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=user(PROMPT),
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    thinking = final.content[0]
    assert thinking.type == "thinking" and thinking.signature
    assert tokens(thinking.thinking) == 32
    assert final.usage.output_tokens == 32 + tokens(REPLY)


def test_count_tokens(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model=MODEL, messages=user(PROMPT))
    assert counted.input_tokens == 11


@pytest.mark.parametrize(
    ("status", "exception", "error_type"),
    [
        (529, anthropic.OverloadedError, "overloaded_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
    ],
)
def test_simulated_errors_map_to_sdk_exceptions(
    claude: anthropic.Anthropic,
    status: int,
    exception: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    with pytest.raises(exception) as caught:
        claude.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=user(PROMPT),
            extra_headers={"x-sim-error": str(status)},
        )
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == error_type
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "1"


def test_529_is_an_internal_server_error_too(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(
            model=MODEL, max_tokens=10, messages=user("x"), extra_headers={"x-sim-error": "529"}
        )


def test_invalid_key_is_an_authentication_error(sim) -> None:  # type: ignore[no-untyped-def]
    client = anthropic.Anthropic(
        base_url=sim.urls["anthropic"], api_key="sim-invalid-key", max_retries=0
    )
    with client, pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=user("x"))
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": caught.value.body["request_id"],  # type: ignore[index]
    }


def test_version_header_and_required_fields(http: httpx.Client) -> None:
    body = {"model": MODEL, "max_tokens": 10, "messages": user("x")}
    no_version = http.post("/anthropic/v1/messages", headers={"x-api-key": "k"}, json=body)
    assert no_version.status_code == 400
    assert no_version.json()["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }
    duplicated = http.post(
        "/anthropic/v1/messages",
        headers=[
            ("x-api-key", "k"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-version", "2023-06-01"),
        ],
        json=body,
    )
    assert duplicated.status_code == 400
    assert duplicated.json()["error"]["message"] == (
        'anthropic-version: "2023-06-01, 2023-06-01" is not a valid version'
    )
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    no_max = http.post(
        "/anthropic/v1/messages", headers=headers, json={"model": MODEL, "messages": user("x")}
    )
    assert no_max.status_code == 400
    assert no_max.json()["error"]["message"] == "max_tokens: Field required"
