"""The mock upstreams (OpenAI and Anthropic): canned request and response bodies, and the nginx
configuration.

Zero-delay answers, so that the benchmark measures the gateway and never the upstream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
}
STREAM_REQUEST: dict[str, Any] = {
    **REQUEST,
    "stream": True,
    "stream_options": {"include_usage": True},
}
_CHUNK_BASE = {
    "id": "chatcmpl-bench0001",
    "object": "chat.completion.chunk",
    "created": 1764288000,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_bench",
}


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def chat_completion() -> str:
    """A non-streaming OpenAI chat.completion with a usage object."""
    return compact(
        {
            "id": "chatcmpl-bench0001",
            "object": "chat.completion",
            "created": 1764288000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Hello! I hope you are having a wonderful day.",
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 14,
                "completion_tokens": 12,
                "total_tokens": 26,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
            "system_fingerprint": "fp_bench",
        }
    )


def sse_stream(content_chunks: int = 15) -> str:
    """An OpenAI SSE body: `content_chunks` chunk events (role first, finish_reason last), then
    a usage chunk (as with `stream_options.include_usage`), then `data: [DONE]`."""
    words = ["Hello", "there!", "This", "canned", "stream", "has", "short", "words", "in", "it."]
    events = []
    for i in range(content_chunks):
        if i == 0:
            delta, finish = {"role": "assistant", "content": ""}, None
        elif i == content_chunks - 1:
            delta, finish = {}, "stop"
        else:
            delta, finish = {"content": words[(i - 1) % len(words)] + " "}, None
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        events.append({**_CHUNK_BASE, "choices": [choice], "usage": None})
    usage = {"prompt_tokens": 14, "completion_tokens": content_chunks - 2, "total_tokens": 27}
    events.append({**_CHUNK_BASE, "choices": [], "usage": usage})
    return "".join(f"data: {compact(e)}\n\n" for e in events) + "data: [DONE]\n\n"


# --- Anthropic Messages ---------------------------------------------------------------------

ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_MODEL = "claude-sonnet-4-6"
ANTHROPIC_TEXT = "Hello! I hope you are having a wonderful day."
ANTHROPIC_REQUEST: dict[str, Any] = {
    "model": ANTHROPIC_MODEL,
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
}
ANTHROPIC_STREAM_REQUEST: dict[str, Any] = {**ANTHROPIC_REQUEST, "stream": True}
# Usage with prompt caching in play, so that translating it back is exercised (Anthropic reports
# cache reads and writes BESIDE input_tokens; OpenAI's prompt_tokens includes them).
ANTHROPIC_INPUT_TOKENS = 14
ANTHROPIC_CACHE_READ = 1024
ANTHROPIC_CACHE_WRITE = 256
ANTHROPIC_OUTPUT_TOKENS = 12
_ANTHROPIC_STREAM_WORDS = (
    "Hello", " there!", " This", " canned", " stream", " has", " short", " words",
    " in", " it,", " fifteen", " deltas", " in", " all", ".",
)  # fmt: skip


def _anthropic_usage(output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": ANTHROPIC_INPUT_TOKENS,
        "cache_creation_input_tokens": ANTHROPIC_CACHE_WRITE,
        "cache_read_input_tokens": ANTHROPIC_CACHE_READ,
        "cache_creation": {
            "ephemeral_5m_input_tokens": ANTHROPIC_CACHE_WRITE,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def anthropic_message() -> str:
    """A non-streaming Anthropic `message` with usage (cache fields included)."""
    return compact(
        {
            "id": "msg_bench0001",
            "type": "message",
            "role": "assistant",
            "model": ANTHROPIC_MODEL,
            "content": [{"type": "text", "text": ANTHROPIC_TEXT}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": _anthropic_usage(ANTHROPIC_OUTPUT_TOKENS),
        }
    )


def anthropic_stream_text() -> str:
    """The text the canned Anthropic stream spells out, delta by delta."""
    return "".join(_ANTHROPIC_STREAM_WORDS)


def anthropic_sse_stream() -> str:
    """An Anthropic SSE body: message_start (input usage), content_block_start, ping,
    content_block_delta x15, content_block_stop, message_delta (stop reason, cumulative usage),
    message_stop."""
    message = {
        "id": "msg_bench0002",
        "type": "message",
        "role": "assistant",
        "model": ANTHROPIC_MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _anthropic_usage(1),
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for word in _ANTHROPIC_STREAM_WORDS:
        delta = {"type": "text_delta", "text": word}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    usage = _anthropic_usage(len(_ANTHROPIC_STREAM_WORDS))
    del usage["cache_creation"], usage["service_tier"]  # message_delta carries the counts only
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": usage,
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(f"event: {name}\ndata: {compact(data)}\n\n" for name, data in events)


# --- nginx ------------------------------------------------------------------------------------


def nginx_string(text: str) -> str:
    """`text` as a single-quoted nginx string (`return` and `set` expand `$`: refuse it)."""
    if "$" in text:
        raise ValueError("nginx would expand '$' in a canned body")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_return(name: str, text: str, piece: int = 3000) -> str:
    """`return 200 <text>;`, through `set` variables when the text is longer than `piece`
    (nginx refuses a configuration token longer than its 4 KiB read buffer)."""
    pieces = [text[i : i + piece] for i in range(0, len(text), piece)]
    if len(pieces) == 1:
        return f"return 200 {nginx_string(text)};"
    sets = [f"set ${name}{i} {nginx_string(p)};" for i, p in enumerate(pieces)]
    joined = "".join(f"${{{name}{i}}}" for i in range(len(pieces)))
    return "\n            ".join([*sets, f'return 200 "{joined}";'])


def nginx_conf(template: Path, work: Path, port: int) -> str:
    """The nginx configuration: `template` with its @@NAME@@ placeholders filled."""
    replacements = {
        "@@WORK@@": str(work),
        "@@PORT@@": str(port),
        "@@CHAT_RETURN@@": nginx_return("chat", chat_completion()),
        "@@SSE_RETURN@@": nginx_return("sse", sse_stream()),
        "@@ANTHROPIC_RETURN@@": nginx_return("message", anthropic_message()),
        "@@ANTHROPIC_SSE_RETURN@@": nginx_return("anthropic_sse", anthropic_sse_stream()),
    }
    text = template.read_text()
    for key, value in replacements.items():
        text = text.replace(key, value)
    return text
