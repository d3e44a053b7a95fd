"""The Gemini API upstream adapter, over Google's documented examples."""

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
    Instruction,
    Message,
    ReasoningDelta,
    ReasoningPart,
    ResponseFormat,
    StreamError,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolResult,
    Usage,
    UsageUpdate,
    with_fetched_images,
)
from tollgate.errors import InvalidRequest
from tollgate.providers.base import NeedsFetch
from tollgate.providers.google import ADAPTER, SKIP_SIGNATURE, usage_from_response

STREAMS = ["stream_legacy_crlf.sse", "stream_parallel_calls.sse", "stream_thinking_text.sse"]
HELLO = (Message("user", (TextPart("Hello"),)),)
FIND_THEATERS = Tool(
    "find_theaters",
    "find theaters based on location and optionally movie title which are is currently "
    "playing in theaters",
    {
        "type": "object",
        "properties": {
            "location": {
                "type": "string",
                "description": (
                    "The city and state, e.g. San Francisco, CA or a zip code e.g. 95616"
                ),
            },
            "movie": {"type": "string", "description": "Any movie title"},
        },
        "required": ["location"],
    },
)


def built(request: ChatRequest) -> tuple[str, dict[str, str], dict]:
    call = ADAPTER.build_request(request)
    assert call.method == "POST" and call.headers == {"content-type": "application/json"}
    return call.path, dict(call.query), orjson.loads(call.body)


def test_documented_multi_turn_function_calling_request() -> None:
    theaters = {
        "movie": "Barbie",
        "theaters": [
            {
                "name": "AMC Mountain View 16",
                "address": "2000 W El Camino Real, Mountain View, CA 94040",
            },
            {"name": "Regal Edwards 14", "address": "245 Castro St, Mountain View, CA 94040"},
        ],
    }
    request = ChatRequest(
        "gemini-2.5-flash",
        (
            Message("user", (TextPart("Which theaters in Mountain View show Barbie movie?"),)),
            Message(
                "assistant",
                (
                    ToolCall(
                        "call_0",
                        "find_theaters",
                        '{"location":"Mountain View, CA","movie":"Barbie"}',
                    ),
                ),
            ),
            Message("tool", (ToolResult("call_0", orjson.dumps(theaters).decode()),)),
        ),
        tools=(FIND_THEATERS,),
    )
    path, query, body = built(request)
    assert (path, query) == ("v1beta/models/gemini-2.5-flash:generateContent", {})
    assert body == fixture_json("google", "request_function_calling.json")


def test_streaming_uses_alt_sse_and_the_system_instruction_is_top_level() -> None:
    request = ChatRequest(
        "models/gemini-2.5-pro",
        HELLO,
        system=(Instruction("system", "Be brief."), Instruction("developer", "Use French.")),
        stream=True,
    )
    path, query, body = built(request)
    assert path == "v1beta/models/gemini-2.5-pro:streamGenerateContent"
    assert query == {"alt": "sse"}
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nUse French."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Hello"}]}]


def test_generation_config_tool_config_and_json_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = ChatRequest(
        "gemini-2.5-flash",
        HELLO,
        tools=(FIND_THEATERS,),
        tool_choice=ToolChoice("tool", "find_theaters"),
        response_format=ResponseFormat("json_schema", schema=schema),
        stop=("END",),
        temperature=0.5,
        top_p=0.8,
        top_k=40,
        max_tokens=256,
        n=2,
        reasoning_effort="low",
    )
    _, _, body = built(request)
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["find_theaters"]}
    }
    assert body["generationConfig"] == {
        "temperature": 0.5,
        "topP": 0.8,
        "topK": 40,
        "maxOutputTokens": 256,
        "candidateCount": 2,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
        "thinkingConfig": {"thinkingBudget": 1024},
    }


def test_gemini_3_takes_a_thinking_level_and_signed_function_calls() -> None:
    messages = (
        *HELLO,
        Message("assistant", (ToolCall("call_0", "f", "{}"), ToolCall("call_1", "f", "{}"))),
        Message("tool", (ToolResult("call_0", "1"), ToolResult("call_1", "oops", is_error=True))),
    )
    _, _, body = built(ChatRequest("gemini-3-pro-preview", messages, reasoning_effort="high"))
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "high"}
    model_turn = body["contents"][1]["parts"]
    assert model_turn[0]["thoughtSignature"] == SKIP_SIGNATURE  # first call of the turn only
    assert "thoughtSignature" not in model_turn[1]
    assert body["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "f", "response": {"output": 1}}},
            {"functionResponse": {"name": "f", "response": {"error": "oops"}}},
        ],
    }
    _, _, older = built(ChatRequest("gemini-2.5-flash", messages))
    assert "thoughtSignature" not in older["contents"][1]["parts"][0]


def test_a_tool_result_for_an_unknown_call_is_refused_naming_the_field() -> None:
    messages = (*HELLO, Message("tool", (ToolResult("call_9", "x"),)))
    with pytest.raises(InvalidRequest, match=r"messages\[1\]\.parts\[0\]") as caught:
        ADAPTER.build_request(ChatRequest("gemini-2.5-flash", messages))
    assert caught.value.param == "messages[1].parts[0]"


def test_the_model_name_cannot_escape_the_path() -> None:
    with pytest.raises(InvalidRequest, match="not a valid Gemini model name"):
        ADAPTER.build_request(ChatRequest("../../v1beta/files", HELLO))


def test_n_cannot_be_streamed() -> None:
    with pytest.raises(InvalidRequest, match="n > 1 cannot be streamed") as caught:
        ADAPTER.build_request(ChatRequest("gemini-2.5-flash", HELLO, n=2, stream=True))
    assert caught.value.param == "n"


def test_image_urls_need_fetching_then_go_inline() -> None:
    url = "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"
    parts = (
        TextPart("What is this?"),
        ImagePart(url=url),
        ImagePart(data=b"\x89PNG", media_type="image/png"),
        ImagePart(url=url),
    )
    request = ChatRequest("gemini-2.5-flash", (Message("user", parts),))
    with pytest.raises(NeedsFetch) as caught:
        ADAPTER.build_request(request)
    assert caught.value.urls == (url,)
    filled = with_fetched_images(request, {url: (b"\xff\xd8\xff", "image/jpeg")})
    _, _, body = built(filled)
    assert body["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/"}},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw=="}},
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/"}},
    ]


def test_parse_documented_function_call_synthesises_a_stable_id() -> None:
    response = ADAPTER.parse_response(200, fixture_bytes("google", "response_function_call.json"))
    (choice,) = response.choices
    assert choice.message.parts == (
        ToolCall("call_0", "find_theaters", '{"movie":"Barbie","location":"Mountain View, CA"}'),
    )
    assert choice.finish_reason is FinishReason.TOOL_CALLS  # Gemini says STOP
    text = ADAPTER.parse_response(200, fixture_bytes("google", "response_text.json"))
    assert text.choices[0].finish_reason is FinishReason.STOP


def test_parse_thought_summary_and_usage() -> None:
    response = ADAPTER.parse_response(200, fixture_bytes("google", "response_thinking_usage.json"))
    first, second = response.choices[0].message.parts
    assert isinstance(first, ReasoningPart) and isinstance(second, TextPart)
    assert (response.id, response.model) == ("4-4GafrNGoq52roPk_XSuAY", "gemini-2.5-flash")
    assert response.usage == Usage(
        input_tokens=13, output_tokens=15 + 1096, cached_input_tokens=8, reasoning_tokens=1096
    )


def test_usage_thoughts_beside_candidates_and_cache_inside_prompt() -> None:
    data = {
        "usageMetadata": {
            "promptTokenCount": 141236,
            "cachedContentTokenCount": 140000,
            "candidatesTokenCount": 95,
            "thoughtsTokenCount": 40,
            "toolUsePromptTokenCount": 7,
        }
    }
    assert usage_from_response(data) == Usage(
        input_tokens=141243, output_tokens=135, cached_input_tokens=140000, reasoning_tokens=40
    )


def test_documented_legacy_stream_with_finish_reason_on_every_chunk() -> None:
    events = parse_all(ADAPTER.stream_parser(), fixture_bytes("google", "stream_legacy_crlf.sse"))
    assert events[0] == StreamStart("", "")
    assert [type(e) for e in events[1:-1]] == [TextDelta] * 5
    assert events[-1] == Finish(FinishReason.STOP)  # once, at the end


def test_parallel_calls_stream_as_start_plus_one_delta_each() -> None:
    data = fixture_bytes("google", "stream_parallel_calls.sse")
    events = parse_all(ADAPTER.stream_parser(), data)
    assert events[1:7] == [
        ToolCallStart(0, "call_0", "power_disco_ball"),
        ToolCallDelta(0, '{"power":true}'),
        ToolCallStart(1, "call_1", "start_music"),
        ToolCallDelta(1, '{"energetic":true,"loud":true}'),
        ToolCallStart(2, "call_2", "dim_lights"),
        ToolCallDelta(2, '{"brightness":0.5}'),
    ]
    assert events[-2:] == [
        UsageUpdate(Usage(input_tokens=60, output_tokens=164, reasoning_tokens=124)),
        Finish(FinishReason.TOOL_CALLS),
    ]


def test_thinking_stream_with_cumulative_usage() -> None:
    events = parse_all(ADAPTER.stream_parser(), fixture_bytes("google", "stream_thinking_text.sse"))
    assert isinstance(events[1], ReasoningDelta)
    usages = [e.usage for e in events if isinstance(e, UsageUpdate)]
    assert [u.output_tokens for u in usages] == [600, 607, 615]  # cumulative, never summed


@pytest.mark.parametrize("name", STREAMS)
def test_streams_are_independent_of_chunk_boundaries(name: str) -> None:
    data = fixture_bytes("google", name)
    whole = parse_all(ADAPTER.stream_parser(), data)
    for seed in range(25):
        assert parse_in_pieces(ADAPTER.stream_parser(), random_splits(data, seed)) == whole
    assert parse_in_pieces(ADAPTER.stream_parser(), byte_by_byte(data)) == whole


@pytest.mark.parametrize("name", ["stream_parallel_calls.sse", "stream_thinking_text.sse"])
def test_a_stream_cut_before_its_finish_reason_ends_in_an_error(name: str) -> None:
    data = fixture_bytes("google", name)
    last_event = data.rindex(b"data: ")
    for cut in range(0, last_event + 20, 13):
        events = parse_all(ADAPTER.stream_parser(), data[:cut])
        assert isinstance(events[-1], StreamError)


def test_in_band_error_chunk() -> None:
    error = {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}
    data = b"data: " + orjson.dumps({"error": error}) + b"\r\n\r\n"
    assert parse_all(ADAPTER.stream_parser(), data) == [
        StreamError("The model is overloaded.", 503, "UNAVAILABLE")
    ]


def test_parse_error_documented_and_array_wrapped() -> None:
    body = fixture_bytes("google", "error_invalid_key.json")
    expected = (400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT")
    assert ADAPTER.parse_error(400, body) == expected
    assert ADAPTER.parse_error(400, b"[" + body + b"]") == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("stream_thinking_text.sse", Usage(13, 615, reasoning_tokens=600)),
        ("stream_array.json", Usage(13, 615, cached_input_tokens=4, reasoning_tokens=600)),
    ],
)
def test_usage_observer_reads_sse_and_json_array_streams(name: str, expected: Usage) -> None:
    data = fixture_bytes("google", name)
    for pieces in ([data], byte_by_byte(data), *(random_splits(data, s) for s in range(10))):
        observer = ADAPTER.observe_stream_usage()
        for piece in pieces:
            observer.feed(piece)
        assert observer.usage == expected
