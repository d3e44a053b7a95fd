"""Shared test helpers: fixture files, feeding a parser in pieces, and the official SDKs'
own stream accumulators (so "the exact event sequence" is checked by real client code)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message as AnthropicMessage
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tollgate.canonical import StreamEvent
from tollgate.providers.base import StreamParser
from tollgate.sse import SSEDecoder

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture_bytes(provider: str, name: str) -> bytes:
    return (FIXTURES / provider / name).read_bytes()


def fixture_json(provider: str, name: str) -> Any:
    return orjson.loads(fixture_bytes(provider, name))


def parse_all(parser: StreamParser, data: bytes) -> list[StreamEvent]:
    return parser.feed(data) + parser.close()


def parse_in_pieces(parser: StreamParser, pieces: Iterable[bytes]) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    return events + parser.close()


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def random_splits(data: bytes, seed: int, count: int = 12) -> list[bytes]:
    rng = random.Random(seed)
    return split_at(data, [rng.randrange(1, len(data)) for _ in range(count)])


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def sse_payloads(data: bytes) -> list[tuple[str | None, Any]]:
    """(event name, decoded JSON or the raw text) for every event in an SSE byte string."""
    decoder = SSEDecoder()
    out: list[tuple[str | None, Any]] = []
    for event in decoder.feed(data) + decoder.close():
        try:
            out.append((event.event, orjson.loads(event.data)))
        except orjson.JSONDecodeError:
            out.append((event.event, event.data))
    return out


def openai_sdk_accumulate(data: bytes) -> ChatCompletion:
    """Run rendered chunks through the openai SDK's own accumulator; [DONE] must be last."""
    payloads = sse_payloads(data)
    assert payloads[-1] == (None, "[DONE]"), payloads[-1]
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for _, payload in payloads[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate(payload))
    return state.get_final_completion()


def anthropic_sdk_accumulate(data: bytes) -> AnthropicMessage:
    """Run rendered events through the anthropic SDK's own accumulator."""
    snapshot: Any = None
    json_bufs: dict[int, bytes] = {}
    for name, payload in sse_payloads(data):
        assert name == payload["type"], (name, payload)  # SSE event name == data type
        snapshot = accumulate_event(event=payload, current_snapshot=snapshot, json_bufs=json_bufs)
    return snapshot  # type: ignore[no-any-return]
