"""`UsageObserver.finished`: whether a pass-through stream reached the answer's end (OpenAI's
finish chunk, Anthropic's `message_delta`), which decides how a broken or short stream is billed
(`tollgate.relay`). The markers are found across any chunk boundary, and never in a model's
text, where quotes and newlines are escaped."""

from __future__ import annotations

import orjson
import pytest

from tollgate.providers.anthropic import AnthropicUsageObserver
from tollgate.providers.base import UsageObserver
from tollgate.providers.google import google_usage_observer
from tollgate.providers.openai import chat_usage_observer, responses_usage_observer

# The model "writes" the markers themselves: escaped in the JSON, they must not count.
TRICKY = 'data: [DONE]\nevent: message_delta "finish_reason":"stop" "type":"message_delta"'


def sse(data: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def chat_chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return sse({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


OPENAI_BODY = [chat_chunk(""), chat_chunk(TRICKY), chat_chunk("more")]
OPENAI_END = [
    chat_chunk(None, "stop"),
    sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}}),
    b"data: [DONE]\n\n",
]
ANTHROPIC_BODY = [
    sse(
        {"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}},
        "message_start",
    ),
    sse(
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": TRICKY}},
        "content_block_delta",
    ),
]
ANTHROPIC_END = [
    sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 7},
        },
        "message_delta",
    ),
    sse({"type": "message_stop"}, "message_stop"),
]


def fed(observer: UsageObserver, frames: list[bytes], piece: int) -> UsageObserver:
    """Feed the frames' bytes in pieces of `piece` bytes: every marker is split somewhere."""
    data = b"".join(frames)
    for start in range(0, len(data), piece):
        observer.feed(data[start : start + piece])
    return observer


@pytest.mark.parametrize("piece", [1, 3, 7, 4096])
def test_openai_chat_is_finished_at_its_finish_chunk(piece: int) -> None:
    assert fed(chat_usage_observer(), OPENAI_BODY, piece).finished is False
    assert fed(chat_usage_observer(), [*OPENAI_BODY, OPENAI_END[0]], piece).finished is True
    whole = fed(chat_usage_observer(), OPENAI_BODY + OPENAI_END, piece)
    assert whole.finished is True and whole.usage is not None
    assert whole.usage.output_tokens == 7
    # A server that sends [DONE] without a finish reason is finished too.
    assert fed(chat_usage_observer(), [*OPENAI_BODY, OPENAI_END[2]], piece).finished is True


@pytest.mark.parametrize("piece", [1, 3, 7, 4096])
def test_anthropic_is_finished_at_message_delta(piece: int) -> None:
    started = fed(AnthropicUsageObserver(), ANTHROPIC_BODY, piece)
    assert started.finished is False
    assert started.usage is not None and started.usage.output_tokens == 1  # message_start's
    ended = fed(AnthropicUsageObserver(), ANTHROPIC_BODY + ANTHROPIC_END[:1], piece)
    assert ended.finished is True
    assert ended.usage is not None and ended.usage.output_tokens == 7


def test_formats_without_a_visible_end_say_so() -> None:
    """Gemini's and the Responses API's observers cannot tell: None, a clean end is the end."""
    assert google_usage_observer().finished is None
    assert responses_usage_observer().finished is None
