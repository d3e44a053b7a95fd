"""Deterministic text, token counts, tool arguments and embeddings for the simulator.

Every number the simulator reports comes from the rules here, so tests (and the gateway's billing
tests) can compute the expected usage by hand:

- ``count_tokens(text) = ceil(len(text) / 4)`` characters, the usual rule of thumb for English.
- A prompt costs, per message (system prompts and tool results included),
  ``count_tokens(message text) + MESSAGE_OVERHEAD_TOKENS``, plus ``count_tokens(json(tools))`` when
  the request declares tools, plus ``MEDIA_TOKENS`` per non-text part (image, audio, file).
- The reply is ``"This is a simulated reply from {model} to: {first 12 words of the last user
  message}"`` and costs ``count_tokens(reply)``. A forced length of N tokens pads the reply to
  exactly ``4 * N`` characters; a cap of N tokens cuts it to ``4 * N`` characters.
- A tool call costs ``count_tokens(name) + count_tokens(arguments JSON)``.

Nothing here does I/O or reads the clock, so the same request always yields the same reply.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
MEDIA_TOKENS = 85
REPLY_WORDS = 12
_WORD = re.compile(r"\s*\S+")
_FILLER = (
    " The simulator pads this answer with plain filler words so that its length in tokens is"
    " exactly what the test asked for, and nothing else changes."
)


def count_tokens(text: str) -> int:
    """Tokens in ``text``: one per four characters, rounded up (0 for the empty string)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def truncate_to_tokens(text: str, tokens: int) -> str:
    """The longest prefix of ``text`` that costs at most ``tokens`` tokens."""
    return text[: max(tokens, 0) * CHARS_PER_TOKEN]


def text_of_exact_tokens(seed: str, tokens: int) -> str:
    """A text that costs exactly ``tokens`` tokens, starting with ``seed``."""
    target = max(tokens, 0) * CHARS_PER_TOKEN
    text = seed
    while len(text) < target:
        text += _FILLER
    return text[:target]


def first_words(text: str, limit: int = REPLY_WORDS) -> str:
    """The first ``limit`` words of ``text``, whitespace collapsed."""
    return " ".join(text.split()[:limit])


def reply_text(model: str, prompt: str) -> str:
    """The simulated answer to a user prompt."""
    words = first_words(prompt)
    return (
        f"This is a simulated reply from {model} to: {words}"
        if words
        else (f"This is a simulated reply from {model}.")
    )


def tool_result_reply_text(model: str, result: str) -> str:
    """The simulated answer once a tool result came back."""
    return f"This is a simulated reply from {model} using the tool result: {first_words(result)}"


def reasoning_text(tokens: int) -> str:
    """Visible 'thinking' text (Anthropic thinking blocks) costing exactly ``tokens`` tokens."""
    return text_of_exact_tokens("Simulated reasoning.", tokens)


def to_json(value: Any) -> str:
    """Compact JSON text, as the providers send tool arguments."""
    return orjson.dumps(value).decode()


def prompt_tokens(
    messages: Sequence[str], *, media_parts: int = 0, tools: Sequence[Any] = ()
) -> int:
    """Prompt tokens for the given message texts, media part count and tool declarations."""
    total = sum(count_tokens(text) + MESSAGE_OVERHEAD_TOKENS for text in messages)
    total += media_parts * MEDIA_TOKENS
    if tools:
        total += count_tokens(to_json(list(tools)))
    return total


def split_chunks(text: str, chunks: int | None) -> list[str]:
    """Split ``text`` for streaming.

    With ``chunks`` unset, one word per chunk (each word keeps its leading space), which is how
    the real APIs stream (about a token per event). With ``chunks = N``, N pieces of near-equal
    length (fewer when the text is shorter than N characters). Never returns an empty list, so a
    stream always has at least one content event.
    """
    if not text:
        return [""]
    if chunks is None:
        pieces = _WORD.findall(text) or [text]
        pieces[-1] += text[sum(len(p) for p in pieces) :]  # trailing whitespace, if any
        return pieces
    count = max(1, min(chunks, len(text)))
    size, extra = divmod(len(text), count)
    out: list[str] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        out.append(text[start:end])
        start = end
    return out


def arguments_from_schema(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """Arguments for a tool call: one value per declared property, following its JSON schema."""
    if not isinstance(schema, Mapping):
        return {}
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    return {str(name): _value_for(str(name), sub) for name, sub in properties.items()}


def _value_for(name: str, schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return f"sim-{name}"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    kind = str(kind).lower() if kind is not None else "string"
    if kind == "object":
        return arguments_from_schema(schema)
    if kind == "array":
        return [_value_for(name, schema.get("items"))]
    return {
        "integer": 1,
        "number": 1.5,
        "boolean": True,
        "null": None,
    }.get(kind, f"sim-{name}")


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector of ``dimensions`` floats derived from ``text``.

    Values are rounded to float32 so the base64 (float32) and float encodings agree exactly.
    """
    raw: list[float] = []
    counter = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        raw.extend((byte - 127.5) / 127.5 for byte in digest)
        counter += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in raw))
    return list(struct.unpack(f"<{dimensions}f", packed))


def pack_float32(values: Sequence[float]) -> bytes:
    """Little-endian float32 bytes, the payload of OpenAI's ``encoding_format=base64``."""
    return struct.pack(f"<{len(values)}f", *values)
