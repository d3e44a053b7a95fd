"""The test controls (``x-sim-*`` headers, ``model~name=value`` suffixes, ``[sim ...]`` prompt
directives): latency, stream pacing, abrupt drops, forced errors and forced sizes."""

from __future__ import annotations

import json
import math
import time

import anthropic
import httpx
import httpx2
import openai
import pytest
from google import genai
from google.genai import types

OPENAI_AUTH = {"authorization": "Bearer k"}
ANTHROPIC_AUTH = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def sse_data(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def test_latency_delays_the_response_headers(oai: openai.OpenAI) -> None:
    started = time.monotonic()
    oai.chat.completions.create(
        model="gpt-4o-mini", messages=user("hi"), extra_headers={"x-sim-latency-ms": "300"}
    )
    assert time.monotonic() - started >= 0.3

    started = time.monotonic()
    oai.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
    assert time.monotonic() - started < 0.3


def test_latency_applies_to_errors_too(oai: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=user("hi"),
            extra_headers={"x-sim-latency-ms": "200", "x-sim-error": "500"},
        )
    assert time.monotonic() - started >= 0.2


def test_chunk_delay_paces_the_stream(http: httpx.Client) -> None:
    body = {"model": "gpt-4o-mini", "messages": user("hi"), "stream": True}
    headers = {**OPENAI_AUTH, "x-sim-chunks": "3", "x-sim-chunk-delay-ms": "100"}
    arrivals: list[float] = []
    started = time.monotonic()
    with http.stream("POST", "/openai/v1/chat/completions", headers=headers, json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)
    # role + 3 content + finish + [DONE] = 6 frames, 5 gaps of 100 ms
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] >= 0.45


def test_chunks_sets_the_number_of_content_pieces(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=user("Say hello to the simulator"),
            stream=True,
            extra_headers={"x-sim-chunks": "4"},
        )
    )
    contents = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(contents) == 4
    assert (
        "".join(contents)
        == "This is a simulated reply from gpt-4o-mini to: Say hello to the simulator"
    )


def test_output_tokens_forces_the_reply_length(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o-mini", messages=user("hi"), extra_headers={"x-sim-output-tokens": "250"}
    )
    content = completion.choices[0].message.content or ""
    assert len(content) == 1000
    assert content.startswith("This is a simulated reply from gpt-4o-mini to: hi")
    assert completion.usage is not None and completion.usage.completion_tokens == 250
    assert completion.choices[0].finish_reason == "stop"


def test_reasoning_tokens_control(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="o3", messages=user("hi"), extra_headers={"x-sim-reasoning-tokens": "500"}
    )
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 500


def test_drop_after_breaks_an_openai_stream_mid_way(oai: openai.OpenAI) -> None:
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=user("Say hello to the simulator"),
            stream=True,
            extra_headers={"x-sim-drop-after": "3"},
        ):
            received.append(chunk)
    assert len(received) == 3


def test_drop_after_breaks_an_anthropic_stream_mid_way(claude: anthropic.Anthropic) -> None:
    seen = []
    with (
        pytest.raises(httpx2.RemoteProtocolError),
        claude.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=100,
            messages=user("hello"),  # type: ignore[arg-type]
            extra_headers={"x-sim-drop-after": "4"},
        ) as stream,
    ):
        for event in stream:
            seen.append(event.type)
    assert seen[0] == "message_start"
    assert "message_stop" not in seen


def test_drop_after_breaks_a_gemini_stream_mid_way(gemini: genai.Client) -> None:
    config = types.GenerateContentConfig(
        http_options=types.HttpOptions(headers={"x-sim-drop-after": "2"})
    )
    received = []
    with pytest.raises(httpx2.RemoteProtocolError):
        for chunk in gemini.models.generate_content_stream(
            model="gemini-2.0-flash", contents="Say hello to the simulator", config=config
        ):
            received.append(chunk)
    assert len(received) == 2


def test_drop_after_on_a_plain_response_cuts_the_body(http: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        http.post(
            "/openai/v1/chat/completions",
            headers={**OPENAI_AUTH, "x-sim-drop-after": "0"},
            json={"model": "gpt-4o-mini", "messages": user("hi")},
        )


def test_model_suffix_controls_and_the_echoed_model(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        oai.chat.completions.create(model="gpt-4o-mini~error=503", messages=user("hi"))
    assert caught.value.status_code == 503

    completion = oai.chat.completions.create(
        model="gpt-4o-mini~output-tokens=5~latency-ms=1", messages=user("hi")
    )
    assert completion.model == "gpt-4o-mini"
    assert completion.usage is not None and completion.usage.completion_tokens == 5


def test_model_suffix_in_a_gemini_url(gemini: genai.Client) -> None:
    response = gemini.models.generate_content(
        model="gemini-2.0-flash~output-tokens=6", contents="hi"
    )
    assert response.usage_metadata is not None
    assert response.usage_metadata.candidates_token_count == 6
    assert response.model_version == "gemini-2.0-flash"


def test_prompt_directive(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=100,
        messages=user("hello [sim output-tokens=7]"),  # type: ignore[arg-type]
    )
    assert message.usage.output_tokens == 7
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=100,
            messages=user("please fail [sim error=429 retry-after=3]"),  # type: ignore[arg-type]
        )


def test_header_wins_over_suffix_and_directive(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o-mini~output-tokens=5",
        messages=user("hi [sim output-tokens=9]"),
        extra_headers={"x-sim-output-tokens": "3"},
    )
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    by_suffix = oai.chat.completions.create(
        model="gpt-4o-mini~output-tokens=5", messages=user("hi [sim output-tokens=9]")
    )
    assert by_suffix.usage is not None and by_suffix.usage.completion_tokens == 5


def test_invalid_control_value_is_a_provider_shaped_400(http: httpx.Client) -> None:
    response = http.post(
        "/anthropic/v1/messages",
        headers={**ANTHROPIC_AUTH, "x-sim-latency-ms": "soon"},
        json={"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": user("x")},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "x-sim-latency-ms" in response.json()["error"]["message"]

    response = http.post(
        "/openai/v1/chat/completions",
        headers={**OPENAI_AUTH, "x-sim-error": "200"},
        json={"model": "gpt-4o-mini", "messages": user("x")},
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        ("/openai/v1/chat/completions", OPENAI_AUTH, {"model": "m", "messages": user("x")}),
        (
            "/anthropic/v1/messages",
            ANTHROPIC_AUTH,
            {"model": "m", "max_tokens": 5, "messages": user("x")},
        ),
        (
            "/google/v1beta/models/gemini-2.0-flash:generateContent",
            {"x-goog-api-key": "k"},
            {"contents": [{"parts": [{"text": "x"}]}]},
        ),
    ],
)
def test_429_carries_retry_after_for_every_provider(
    http: httpx.Client, path: str, headers: dict[str, str], body: dict[str, object]
) -> None:
    response = http.post(
        path, headers={**headers, "x-sim-error": "429", "x-sim-retry-after": "2"}, json=body
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.headers["content-type"].startswith("application/json")


def test_streamed_anthropic_frames_can_be_counted(http: httpx.Client) -> None:
    response = http.post(
        "/anthropic/v1/messages",
        headers={**ANTHROPIC_AUTH, "x-sim-chunks": "2"},
        json={"model": "m", "max_tokens": 100, "stream": True, "messages": user("hello")},
    )
    events = [json.loads(data)["type"] for data in sse_data(response.text)]
    assert events == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert (
        math.ceil(len("This is a simulated reply from m to: hello") / 4)
        == json.loads(sse_data(response.text)[-2])["usage"]["output_tokens"]
    )


def test_prompt_directive_in_responses_input_and_gemini_contents(
    oai: openai.OpenAI, gemini: genai.Client
) -> None:
    response = oai.responses.create(model="gpt-4.1", input="hi [sim output-tokens=6]")
    assert response.usage is not None and response.usage.output_tokens == 6
    listed = oai.responses.create(
        model="gpt-4.1", input=[{"role": "user", "content": "hi [sim output-tokens=4]"}]
    )
    assert listed.usage is not None and listed.usage.output_tokens == 4
    generated = gemini.models.generate_content(
        model="gemini-2.0-flash", contents="hi [sim output-tokens=5]"
    )
    assert generated.usage_metadata is not None
    assert generated.usage_metadata.candidates_token_count == 5


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("cache-write-1h-tokens", "-1", "x-sim-cache-write-1h-tokens must be a non-negative"),
        ("cache-write-1h-tokens", "an hour", "x-sim-cache-write-1h-tokens must be a non-negative"),
        ("citation-tokens", "-5", "x-sim-citation-tokens must be a non-negative integer"),
        ("search-queries", "-2", "x-sim-search-queries must be a non-negative integer"),
        ("search-queries", "1.5", "x-sim-search-queries must be a non-negative integer"),
        ("search-context", "huge", "x-sim-search-context must be one of low, medium, high"),
        ("search-context", "3", "x-sim-search-context must be one of low, medium, high"),
    ],
)
@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        ("/openai/v1/chat/completions", OPENAI_AUTH, {"model": "sonar", "messages": user("x")}),
        (
            "/anthropic/v1/messages",
            ANTHROPIC_AUTH,
            {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": user("x")},
        ),
    ],
)
def test_invalid_new_control_values_are_provider_shaped_400s(
    http: httpx.Client,
    path: str,
    headers: dict[str, str],
    body: dict[str, object],
    name: str,
    value: str,
    message: str,
) -> None:
    response = http.post(path, headers={**headers, f"x-sim-{name}": value}, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(message)


def test_invalid_new_control_values_in_a_suffix_or_a_directive(
    oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    with pytest.raises(openai.BadRequestError, match="x-sim-search-context must be one of"):
        oai.chat.completions.create(model="sonar~search-context=max", messages=user("x"))
    with pytest.raises(openai.BadRequestError, match="x-sim-citation-tokens must be"):
        oai.chat.completions.create(model="sonar", messages=user("x [sim citation-tokens=-3]"))
    with pytest.raises(anthropic.BadRequestError, match="x-sim-cache-write-1h-tokens must be"):
        claude.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=10,
            messages=user("x [sim cache-write-1h-tokens=-1]"),  # type: ignore[arg-type]
        )


def test_search_context_control_is_case_insensitive(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="sonar", messages=user("x"), extra_headers={"x-sim-search-context": "High"}
    )
    assert completion.usage is not None
    assert completion.usage.model_extra == {"search_context_size": "high"}


def test_cache_write_1h_alone_is_the_total_on_the_responses_api(http: httpx.Client) -> None:
    response = http.post(
        "/openai/v1/responses",
        headers={**OPENAI_AUTH, "x-sim-cache-write-1h-tokens": "5"},
        json={"model": "gpt-4.1", "input": "Say hello to the simulator"},
    )
    details = response.json()["usage"]["input_tokens_details"]
    assert details["cache_write_tokens"] == 5


def test_omit_last_ends_a_stream_cleanly_without_its_closing_frames(http: httpx.Client) -> None:
    body = {"model": "m", "max_tokens": 100, "stream": True, "messages": user("hello")}
    whole = http.post("/anthropic/v1/messages", headers=ANTHROPIC_AUTH, json=body)
    cut = http.post(
        "/anthropic/v1/messages", headers={**ANTHROPIC_AUTH, "x-sim-omit-last": "2"}, json=body
    )
    assert cut.status_code == 200  # a clean end: the body is complete at the HTTP level
    events = [json.loads(data)["type"] for data in sse_data(cut.text)]
    assert events == [json.loads(data)["type"] for data in sse_data(whole.text)][:-2]
    assert events[-1] == "content_block_stop"  # no message_delta (the usage), no message_stop

    chat = {"model": "gpt-4o-mini", "stream": True, "messages": user("hello")}
    done = http.post(
        "/openai/v1/chat/completions", headers={**OPENAI_AUTH, "x-sim-omit-last": "1"}, json=chat
    )
    assert sse_data(done.text) and "[DONE]" not in sse_data(done.text)
    assert json.loads(sse_data(done.text)[-1])["choices"][0]["finish_reason"] == "stop"


def test_junk_lines_are_skipped_by_the_sdks(oai: openai.OpenAI, http: httpx.Client) -> None:
    chat = {"model": "gpt-4o-mini", "stream": True, "messages": user("hello")}
    raw = http.post(
        "/openai/v1/chat/completions", headers={**OPENAI_AUTH, "x-sim-junk-lines": "2"}, json=chat
    )
    assert raw.text.count("<garbage>") == 2 * len(sse_data(raw.text))
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=user("hello"),
            stream=True,
            extra_headers={"x-sim-junk-lines": "2"},
        )
        if chunk.choices
    )
    assert text == "This is a simulated reply from gpt-4o-mini to: hello"
