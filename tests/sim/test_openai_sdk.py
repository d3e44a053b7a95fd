"""The simulated OpenAI API, driven by the official ``openai`` SDK."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import httpx
import openai
import pytest

PROMPT = "Say hello to the simulator"  # 26 characters -> 7 tokens, + 4 per message = 11
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_chat_completion_text_and_usage(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=user(PROMPT))
    completion = raw.parse()

    expected = "This is a simulated reply from gpt-4o-mini to: Say hello to the simulator"
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert completion.object == "chat.completion"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 11
    assert completion.usage.completion_tokens == tokens(expected)
    assert completion.usage.total_tokens == 11 + tokens(expected)
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["content-type"] == "application/json"
    assert "openai-processing-ms" in raw.headers


def test_same_request_same_answer(oai: openai.OpenAI) -> None:
    first = oai.chat.completions.create(model="gpt-4o", messages=user("determinism please"))
    second = oai.chat.completions.create(model="gpt-4o", messages=user("determinism please"))
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage == second.usage


def test_system_message_and_tools_count_in_prompt(oai: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *user(PROMPT)]
    plain = oai.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    assert plain.usage is not None
    assert plain.usage.prompt_tokens == (tokens("Be brief.") + 4) + 11

    with_tools = oai.chat.completions.create(
        model="gpt-4o",
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="none",
    )
    assert with_tools.usage is not None
    tools_json = json.dumps([WEATHER_TOOL], separators=(",", ":"))
    assert with_tools.usage.prompt_tokens == plain.usage.prompt_tokens + tokens(tools_json)
    assert with_tools.choices[0].message.tool_calls is None


def test_stream_reports_usage_only_in_a_final_chunk_with_no_choices(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=user(PROMPT),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "This is a simulated reply from gpt-4o-mini to: Say hello to the simulator"
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == 11
    assert last.usage.completion_tokens == tokens(text)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]


def test_stream_without_include_usage_has_no_usage_at_all(http: httpx.Client, sim) -> None:  # type: ignore[no-untyped-def]
    response = http.post(
        "/openai/v1/chat/completions",
        headers={"authorization": "Bearer k"},
        json={"model": "gpt-4o-mini", "messages": user(PROMPT), "stream": True},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert '"usage"' not in response.text
    assert response.text.endswith("data: [DONE]\n\n")


def test_reasoning_tokens_are_inside_completion_tokens(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="o4-mini", messages=user(PROMPT))
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    visible = tokens(completion.choices[0].message.content or "")
    assert usage.completion_tokens_details.reasoning_tokens == 32
    assert usage.completion_tokens == visible + 32

    gpt5 = oai.chat.completions.create(model="gpt-5-mini", messages=user(PROMPT))
    assert gpt5.usage is not None and gpt5.usage.completion_tokens_details is not None
    assert gpt5.usage.completion_tokens_details.reasoning_tokens == 32

    no_effort = oai.chat.completions.create(
        model="gpt-5-mini",
        messages=user(PROMPT),
        reasoning_effort="none",  # type: ignore[arg-type]
    )
    assert no_effort.usage is not None and no_effort.usage.completion_tokens_details is not None
    assert no_effort.usage.completion_tokens_details.reasoning_tokens == 0


def test_max_completion_tokens_truncates_with_finish_reason_length(oai: openai.OpenAI) -> None:
    capped = oai.chat.completions.create(
        model="gpt-4o-mini", messages=user(PROMPT), max_completion_tokens=3
    )
    assert capped.choices[0].finish_reason == "length"
    assert capped.choices[0].message.content == "This is a si"  # 3 tokens = 12 characters
    assert capped.usage is not None and capped.usage.completion_tokens == 3

    legacy = oai.chat.completions.create(model="gpt-4o-mini", messages=user(PROMPT), max_tokens=2)
    assert legacy.choices[0].finish_reason == "length"
    assert legacy.usage is not None and legacy.usage.completion_tokens == 2


def test_reasoning_counts_against_the_output_cap(oai: openai.OpenAI) -> None:
    capped = oai.chat.completions.create(
        model="o3", messages=user(PROMPT), max_completion_tokens=40
    )
    usage = capped.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens == 40
    assert usage.completion_tokens_details.reasoning_tokens == 32
    assert (
        capped.choices[0].message.content
        == "This is a simulated reply from o3 to: Say hello to the simulator"[:32]
    )
    assert capped.choices[0].finish_reason == "length"


def test_cached_tokens_are_inside_prompt_tokens(oai: openai.OpenAI) -> None:
    long_prompt = "x" * 4096  # 1024 tokens + 4 overhead = 1028
    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=user(long_prompt))
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens == 1028
    assert usage.prompt_tokens_details.cached_tokens == 514
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    short = oai.chat.completions.create(model="gpt-4o-mini", messages=user(PROMPT))
    assert short.usage is not None and short.usage.prompt_tokens_details is not None
    assert short.usage.prompt_tokens_details.cached_tokens == 0

    forced = oai.chat.completions.create(
        model="gpt-4o-mini", messages=user(PROMPT), extra_headers={"x-sim-cached-tokens": "8"}
    )
    assert forced.usage is not None and forced.usage.prompt_tokens_details is not None
    assert forced.usage.prompt_tokens == 11
    assert forced.usage.prompt_tokens_details.cached_tokens == 8


def test_tool_call_with_arguments_from_the_schema(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o",
        messages=user("What is the weather in Paris?"),
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "sim-city", "unit": "celsius", "days": 1}
    assert completion.usage is not None
    assert completion.usage.completion_tokens == tokens("get_weather") + tokens(
        call.function.arguments
    )


def test_named_tool_choice_and_parallel_calls(oai: openai.OpenAI) -> None:
    named = oai.chat.completions.create(
        model="gpt-4o",
        messages=user("What time is it?"),
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = named.choices[0].message.tool_calls
    assert calls is not None and [c.function.name for c in calls] == ["get_time"]

    parallel = oai.chat.completions.create(
        model="gpt-4o",
        messages=user("Call both tools in parallel please"),
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
    )
    calls = parallel.choices[0].message.tool_calls
    assert calls is not None
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2


def test_streamed_tool_call_arguments_arrive_in_pieces(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o",
            messages=user("weather?"),
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            stream=True,
        )
    )
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    first = deltas[0]
    assert first.index == 0 and first.id is not None and first.id.startswith("call_")
    assert first.function is not None and first.function.name == "get_weather"
    pieces = [d.function.arguments for d in deltas[1:] if d.function and d.function.arguments]
    assert len(pieces) == 3
    assert json.loads("".join(pieces))["city"] == "sim-city"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_stream_helper_accumulates_tool_calls(oai: openai.OpenAI) -> None:
    with oai.chat.completions.stream(
        model="gpt-4o",
        messages=user("weather in parallel"),
        tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None and [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1].function.arguments) == {"zone": "sim-zone"}
    assert final.usage is not None and final.usage.completion_tokens > 0


def test_after_a_tool_result_the_model_answers_with_text(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "user", "content": "weather?"},
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
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny and 21 degrees"},
        ],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    assert choice.message.content == (
        "This is a simulated reply from gpt-4o using the tool result: Sunny and 21 degrees"
    )


def test_responses_api_non_streamed(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="gpt-4.1", input=PROMPT, instructions="Be brief.")
    assert response.status == "completed"
    assert (
        response.output_text
        == "This is a simulated reply from gpt-4.1 to: Say hello to the simulator"
    )
    assert response.usage is not None
    assert response.usage.input_tokens == (tokens("Be brief.") + 4) + 11
    assert response.usage.output_tokens == tokens(response.output_text)
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_responses_api_reasoning_and_cache_semantics(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="o3", input="x" * 4096, max_output_tokens=1000)
    usage = response.usage
    assert usage is not None
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert usage.input_tokens == 1028
    assert usage.input_tokens_details.cached_tokens == 514  # inside input_tokens
    assert usage.output_tokens_details.reasoning_tokens == 32
    assert usage.output_tokens == tokens(response.output_text) + 32  # reasoning inside output


def test_responses_api_incomplete_when_capped(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="gpt-4.1", input=PROMPT, max_output_tokens=4)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "This is a simulat"[:16]
    assert response.usage is not None and response.usage.output_tokens == 4


def test_responses_api_stream_events_and_final_usage(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="gpt-4.1-mini", input=PROMPT) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text
    assert final.usage is not None
    assert final.usage.input_tokens == 11
    assert final.usage.output_tokens == tokens(text)


def test_responses_api_streamed_function_call(oai: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "name": "get_time",
        "parameters": TIME_TOOL["function"]["parameters"],
    }  # type: ignore[index]
    with oai.responses.stream(model="gpt-4.1", input="what time?", tools=[tool]) as stream:  # type: ignore[list-item]
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) == 3
    calls = [item for item in final.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_time"
    assert json.loads(calls[0].arguments) == {"zone": "sim-zone"} == json.loads("".join(deltas))

    follow_up = oai.responses.create(
        model="gpt-4.1",
        input=[
            {"role": "user", "content": "what time?"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "get_time",
                "arguments": "{}",
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "noon"},
        ],
        tools=[tool],  # type: ignore[list-item]
    )
    assert (
        follow_up.output_text
        == "This is a simulated reply from gpt-4.1 using the tool result: noon"
    )


def test_embeddings_default_base64_and_float_agree(oai: openai.OpenAI) -> None:
    default = oai.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    as_float = oai.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta"], encoding_format="float"
    )
    assert [len(d.embedding) for d in default.data] == [1536, 1536]
    assert default.data[0].embedding == as_float.data[0].embedding
    assert default.data[0].embedding != default.data[1].embedding
    assert math.isclose(sum(v * v for v in default.data[0].embedding), 1.0, rel_tol=1e-4)
    assert default.usage.prompt_tokens == tokens("alpha") + tokens("beta")
    assert default.usage.total_tokens == default.usage.prompt_tokens

    small = oai.embeddings.create(model="text-embedding-3-large", input="gamma", dimensions=8)
    assert len(small.data[0].embedding) == 8


def test_models_list(oai: openai.OpenAI) -> None:
    ids = [model.id for model in oai.models.list()]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids
    assert oai.models.retrieve("anything-at-all").id == "anything-at-all"


def test_rate_limit_error_has_openai_shape_and_retry_after(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=user(PROMPT),
            extra_headers={"x-sim-error": "429", "x-sim-retry-after": "7"},
        )
    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert error.response.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_simulated_errors_map_to_sdk_exceptions(
    oai: openai.OpenAI, status: int, exception: type[openai.APIStatusError]
) -> None:
    with pytest.raises(exception) as caught:
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=user(PROMPT), extra_headers={"x-sim-error": str(status)}
        )
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}


def test_invalid_key_is_an_authentication_error(sim) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=sim.urls["openai"], api_key="sim-invalid-key", max_retries=0)
    with client, pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=user(PROMPT))
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


def test_groq_style_vendor_uses_the_same_base(sim) -> None:  # type: ignore[no-untyped-def]
    assert sim.urls["groq"] == sim.urls["openai"] == f"{sim.base_url}/openai/v1"
    client = openai.OpenAI(base_url=sim.urls["groq"], api_key="gsk_x", max_retries=0)
    with client:
        completion = client.chat.completions.create(model="llama-3.3-70b", messages=user("hi"))
    assert (
        completion.choices[0].message.content
        == "This is a simulated reply from llama-3.3-70b to: hi"
    )


# Perplexity's usage extras (served by the OpenAI chat API).
PLAIN_USAGE_KEYS = {
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
}


@pytest.fixture
def pplx(sim) -> Iterator[openai.OpenAI]:  # type: ignore[no-untyped-def]
    with openai.OpenAI(
        base_url=sim.urls["perplexity-ai"], api_key="pplx-sim", max_retries=0
    ) as client:
        yield client


def test_usage_has_no_perplexity_fields_unless_asked(http: httpx.Client) -> None:
    body = {"model": "sonar", "messages": user(PROMPT)}
    response = http.post(
        "/openai/v1/chat/completions", headers={"authorization": "Bearer k"}, json=body
    )
    assert set(response.json()["usage"]) == PLAIN_USAGE_KEYS


def test_perplexity_usage_fields_from_controls(pplx: openai.OpenAI) -> None:
    plain = pplx.chat.completions.create(model="sonar-pro", messages=user(PROMPT))
    assert plain.usage is not None and plain.usage.model_extra == {}

    completion = pplx.chat.completions.create(
        model="sonar-pro",
        messages=user(PROMPT),
        extra_headers={
            "x-sim-search-context": "high",
            "x-sim-citation-tokens": "1234",
            "x-sim-search-queries": "3",
        },
    )
    usage = completion.usage
    assert usage is not None
    assert usage.model_extra == {
        "search_context_size": "high",
        "citation_tokens": 1234,
        "num_search_queries": 3,
    }
    # Citation tokens are beside the prompt: the token counts are the plain request's.
    assert usage.prompt_tokens == plain.usage.prompt_tokens == 11
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_only_the_asked_perplexity_fields_appear(pplx: openai.OpenAI) -> None:
    queries = pplx.chat.completions.create(model="sonar~search-queries=0", messages=user(PROMPT))
    assert queries.usage is not None and queries.usage.model_extra == {"num_search_queries": 0}
    citations = pplx.chat.completions.create(
        model="sonar", messages=user("cite [sim citation-tokens=77]")
    )
    assert citations.usage is not None
    assert citations.usage.model_extra == {"citation_tokens": 77}


def test_web_search_options_context_size_is_echoed(pplx: openai.OpenAI) -> None:
    echoed = pplx.chat.completions.create(
        model="sonar",
        messages=user(PROMPT),
        extra_body={"web_search_options": {"search_context_size": "medium"}},
    )
    assert echoed.usage is not None
    assert echoed.usage.model_extra == {"search_context_size": "medium"}

    overridden = pplx.chat.completions.create(
        model="sonar",
        messages=user(PROMPT),
        extra_body={"web_search_options": {"search_context_size": "medium"}},
        extra_headers={"x-sim-search-context": "low", "x-sim-citation-tokens": "5"},
    )
    assert overridden.usage is not None
    assert overridden.usage.model_extra == {"search_context_size": "low", "citation_tokens": 5}

    # web_search_options without a size: nothing to echo.
    no_size = pplx.chat.completions.create(
        model="sonar",
        messages=user(PROMPT),
        extra_body={"web_search_options": {"user_location": {"country": "FR"}}},
    )
    assert no_size.usage is not None and no_size.usage.model_extra == {}


def test_streamed_perplexity_usage_is_in_the_final_chunk(pplx: openai.OpenAI) -> None:
    chunks = list(
        pplx.chat.completions.create(
            model="sonar",
            messages=user(PROMPT),
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"web_search_options": {"search_context_size": "high"}},
            extra_headers={"x-sim-citation-tokens": "40", "x-sim-search-queries": "2"},
        )
    )
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == 11
    assert last.usage.model_extra == {
        "search_context_size": "high",
        "citation_tokens": 40,
        "num_search_queries": 2,
    }


def test_streamed_usage_without_perplexity_fields_is_unchanged(http: httpx.Client) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": user(PROMPT),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = http.post(
        "/openai/v1/chat/completions", headers={"authorization": "Bearer k"}, json=body
    )
    frames = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
    assert set(json.loads(frames[-1])["usage"]) == PLAIN_USAGE_KEYS

    # Without include_usage the stream still has no usage at all, controls or not.
    body = {"model": "sonar", "messages": user(PROMPT), "stream": True}
    response = http.post(
        "/openai/v1/chat/completions",
        headers={"authorization": "Bearer k", "x-sim-citation-tokens": "9"},
        json=body,
    )
    assert '"usage"' not in response.text


def test_invalid_web_search_context_size_is_a_400(pplx: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        pplx.chat.completions.create(
            model="sonar",
            messages=user(PROMPT),
            extra_body={"web_search_options": {"search_context_size": "huge"}},
        )
    assert caught.value.code == "invalid_value"
    assert caught.value.param == "web_search_options.search_context_size"
    assert "'huge'" in caught.value.message


def test_responses_api_ignores_perplexity_controls(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model="gpt-4.1", input=PROMPT, extra_headers={"x-sim-citation-tokens": "10"}
    )
    assert response.usage is not None and response.usage.model_extra == {}
