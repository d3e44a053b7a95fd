"""The in-memory chat form every translation passes through (ARCHITECTURE.md principle 2).

Client formats (`tollgate.formats`) parse their JSON into these values and render them back;
upstream adapters (`tollgate.providers`) build provider requests from them and parse provider
responses and streams into them. N formats + M adapters, never N x M.

Everything here is a frozen value: built once, read many times, never mutated. Dict-shaped
fields (`Tool.parameters`, `ResponseFormat.schema`) hold the client's JSON Schema as given.

Conventions a reader must know:

- `ToolCall.arguments` is JSON *text* (OpenAI's form), because streams deliver it in string
  fragments; adapters whose wire wants an object parse it when they build the request.
- Tool-call ids are preserved end to end; an upstream without ids (Gemini) gets stable
  synthesised ones (`call_0`, `call_1`, ... in order of appearance).
- System and developer instructions are lifted out of the message list into
  `ChatRequest.system`, in order: Anthropic and Gemini take them top-level, and OpenAI
  upstreams get them back as leading messages.
- Images carry either a URL or inline bytes plus a media type. An adapter that cannot send a
  URL (Gemini) refuses with `tollgate.providers.base.NeedsFetch`; the caller fetches and calls
  `with_fetched_images` (the seam is documented there).

Streams are a closed set of `StreamEvent`s whose order every parser guarantees:

    StreamStart, then any of TextDelta / ReasoningDelta / ToolCallStart / ToolCallDelta /
    UsageUpdate, then exactly one of Finish (success; always the last content event, and any
    UsageUpdate precedes it) or StreamError (the stream failed; nothing follows it).

`UsageUpdate` carries the CUMULATIVE usage so far: a consumer replaces, never adds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

Role = Literal["user", "assistant", "tool"]
InstructionRole = Literal["system", "developer"]


class FinishReason(StrEnum):
    """Why generation stopped. The values are OpenAI's strings, so rendering them is free."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts in one convention, whatever the provider reported.

    - `input_tokens` is the WHOLE prompt: it INCLUDES `cached_input_tokens` (cache reads)
      and `cache_write_input_tokens` (cache writes). Uncached, unwritten input is
      `input_tokens - cached_input_tokens - cache_write_input_tokens`.
    - `output_tokens` is everything generated: it INCLUDES `reasoning_tokens`.
    - `cache_write_1h_input_tokens` is the part of `cache_write_input_tokens` written with a
      1-hour retention (Anthropic bills it above the 5-minute writes).
    - Meters beside the tokens (Perplexity): `citation_tokens`, `search_queries` (searches the
      model ran) and `search_context` (the request's search context size: low, medium, high),
      which picks the per-request search fee; `pro_search` when that fee is Sonar Pro's "Pro
      Search" one.
    - A provider that does not report a breakdown leaves that field 0 (or None).

    Each provider's `usage_from_response` documents how its own counts map onto this.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_input_tokens: int = 0
    citation_tokens: int = 0
    search_queries: int = 0
    search_context: str | None = None
    pro_search: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def uncached_input_tokens(self) -> int:
        """Input billed at the plain input price (neither read from nor written to a cache)."""
        return self.input_tokens - self.cached_input_tokens - self.cache_write_input_tokens


# --- message parts -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image: a URL, inline bytes with their media type, or both once a URL was fetched."""

    url: str | None = None
    data: bytes | None = None
    media_type: str | None = None
    detail: str | None = None  # OpenAI's "low" | "high" | "auto"; others ignore it


@dataclass(frozen=True, slots=True)
class ReasoningPart:
    """Model reasoning shown to the client (Anthropic thinking, Gemini thought summaries).

    `signature` is the provider's opaque proof (Anthropic `signature`, Gemini
    `thoughtSignature`); only the provider that issued it can check it.
    """

    text: str
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    signature: str | None = None  # Gemini 3 `thoughtSignature` on a functionCall part


@dataclass(frozen=True, slots=True)
class ToolResult:
    call_id: str
    content: str
    is_error: bool = False


Part = TextPart | ImagePart | ReasoningPart | ToolCall | ToolResult


@dataclass(frozen=True, slots=True)
class Message:
    """One turn. A `tool` message holds only `ToolResult` parts (one or more)."""

    role: Role
    parts: tuple[Part, ...]


@dataclass(frozen=True, slots=True)
class Instruction:
    """A system or developer instruction, lifted out of the conversation in order."""

    role: InstructionRole
    text: str


# --- request --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = None  # JSON Schema of the arguments object
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """`auto` | `none` | `required` (any tool) | `tool` (the one named)."""

    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """JSON output: any object (`json_object`) or one matching `schema` (`json_schema`)."""

    type: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any] | None = None
    name: str | None = None
    description: str | None = None
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat request in canonical form.

    `max_tokens` came from `max_tokens` or `max_completion_tokens` (OpenAI) or `max_tokens`
    (Anthropic). Reasoning is `reasoning_effort` ("none" | "minimal" | "low" | "medium" |
    "high" | ...) and/or `reasoning_budget` (a token budget, Anthropic/Gemini style); an
    adapter maps whichever it has onto what its provider takes. `include_usage` is what the
    CLIENT asked for (OpenAI `stream_options.include_usage`); adapters always ask their
    upstream for usage regardless, because billing needs it.
    """

    model: str
    messages: tuple[Message, ...]
    system: tuple[Instruction, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    stop: tuple[str, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    n: int | None = None
    stream: bool = False
    include_usage: bool = False
    reasoning_effort: str | None = None
    reasoning_budget: int | None = None
    user: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def system_text(self) -> str:
        """All instructions as one text, blank-line separated (for top-level system fields)."""
        return "\n\n".join(item.text for item in self.system)


def image_urls_to_fetch(request: ChatRequest) -> tuple[str, ...]:
    """The distinct image URLs in `request` that carry no inline bytes yet, in order."""
    seen: dict[str, None] = {}
    for message in request.messages:
        for part in message.parts:
            if type(part) is ImagePart and part.data is None and part.url:
                seen.setdefault(part.url, None)
    return tuple(seen)


def with_fetched_images(
    request: ChatRequest, fetched: Mapping[str, tuple[bytes, str]]
) -> ChatRequest:
    """The seam for adapters that cannot send image URLs (Gemini).

    Such an adapter's `build_request` raises `NeedsFetch(urls)`. The caller (the only code
    allowed to do I/O) downloads each URL, refusing with a 400 when one cannot be fetched,
    then calls this with `{url: (bytes, media_type)}` and builds again. Parts keep their URL,
    so logs still show where an image came from.
    """

    def fill(part: Part) -> Part:
        if type(part) is ImagePart and part.data is None and part.url and part.url in fetched:
            data, media_type = fetched[part.url]
            return replace(part, data=data, media_type=media_type)
        return part

    messages = tuple(
        replace(message, parts=tuple(fill(part) for part in message.parts))
        for message in request.messages
    )
    return replace(request, messages=messages)


# --- response -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    message: Message  # role "assistant": TextPart / ReasoningPart / ToolCall parts
    finish_reason: FinishReason


@dataclass(frozen=True, slots=True)
class ChatResponse:
    id: str
    model: str
    choices: tuple[Choice, ...]
    usage: Usage | None = None
    created: int | None = None  # Unix seconds, when the upstream said


def message_text(message: Message) -> str:
    """The concatenated text parts of a message."""
    return "".join(part.text for part in message.parts if type(part) is TextPart)


# --- stream events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamStart:
    id: str
    model: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A tool call begins. `index` is the call's ordinal in the message (0, 1, ...)."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    arguments: str  # the next fragment of the JSON text


@dataclass(frozen=True, slots=True)
class UsageUpdate:
    usage: Usage  # cumulative: replaces any earlier UsageUpdate


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason


@dataclass(frozen=True, slots=True)
class StreamError:
    """The stream failed after it started: an upstream in-band error or a truncated stream.

    `status` is the HTTP status the failure would have had (502 for a broken stream, 529 for
    an Anthropic overload...); `type` is the provider's error type when it gave one.
    """

    message: str
    status: int = 502
    type: str = "upstream_error"


StreamEvent = (
    StreamStart
    | TextDelta
    | ReasoningDelta
    | ToolCallStart
    | ToolCallDelta
    | UsageUpdate
    | Finish
    | StreamError
)
