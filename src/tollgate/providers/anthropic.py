"""Anthropic Messages as an upstream.

Docs: https://docs.claude.com/en/api/messages, .../build-with-claude/streaming,
.../agents-and-tools/tool-use/implement-tool-use, .../build-with-claude/extended-thinking,
.../build-with-claude/structured-outputs

Quirks this adapter encodes:

- `POST v1/messages` with an `anthropic-version` header (the base URL has no `/v1`).
- `max_tokens` is REQUIRED: taken from the request, else from the caller's per-call default
  (the model's max output), else refused with a 400 naming it.
- One completion per request: `n > 1` is refused with a 400 saying so.
- System and developer instructions go in the top-level `system` field.
- Tool results are `tool_result` blocks inside a USER turn; consecutive tool results (parallel
  calls) and a user message that follows them are merged into that one turn.
- Tool inputs are JSON objects, not strings; tool choice "required" is `{"type": "any"}`;
  `parallel_tool_calls: false` is `disable_parallel_tool_use` on the tool choice.
- Images: base64 `source`, or `{"type": "url", "url": ...}` for http(s) URLs (no fetch needed).
- Reasoning: `thinking: {"type": "enabled", "budget_tokens": N}`; the budget must be at least
  1024 and below `max_tokens`. An effort level is read as a budget (`_EFFORT_BUDGETS`).
  Thinking blocks sent back need their signature, so unsigned reasoning is not sent.
- JSON output: `output_config.format` with a JSON Schema; there is no schema-less JSON mode,
  so `json_object` is refused with a 400.
- Empty text blocks are rejected by the API, so they are never sent.
- Streams are named events: `message_start`, `content_block_start/delta/stop` per block
  (`text_delta`, `input_json_delta`, `thinking_delta`, `signature_delta`), `message_delta`
  (stop reason + usage), `message_stop`; `ping` any time; `error` in-band (e.g. overloaded).

Billing semantics (`usage_from_response`):

- `input_tokens` EXCLUDES cache reads and writes: `cache_read_input_tokens` and
  `cache_creation_input_tokens` are reported BESIDE it. Canonical input is the sum of all three.
  `cache_creation.ephemeral_1h_input_tokens` says how many of the writes kept a 1-hour
  retention (billed above the 5-minute ones).
- `output_tokens` INCLUDES thinking; `output_tokens_details.thinking_tokens` (when present)
  says how much of it was thinking.
- Streaming: `message_start` carries the input side (and a token or two of output);
  `message_delta` carries CUMULATIVE counts (always `output_tokens`, newer API versions also
  the input fields). The stream parser and the observer merge the two, later values winning.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import orjson

from tollgate.canonical import (
    ChatRequest,
    ChatResponse,
    Choice,
    Finish,
    FinishReason,
    ImagePart,
    Message,
    Part,
    ReasoningDelta,
    ReasoningPart,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    Usage,
    UsageUpdate,
)
from tollgate.errors import InvalidRequest
from tollgate.providers.base import (
    JSON,
    TRUNCATED_MESSAGE,
    JSONValueScanner,
    MarkerScanner,
    ProviderAdapter,
    SSEStreamParser,
    UpstreamCall,
    UpstreamErrorInfo,
    arguments_object,
    dumps,
    error_text,
    int_field,
    load_object,
    raise_for_status,
)
from tollgate.sse import Event

API_VERSION = "2023-06-01"
MIN_THINKING_BUDGET = 1024
STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}
# Anthropic error types -> the HTTP status the API gives them (used for in-band stream errors).
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_EFFORT_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384}
_LARGEST_BUDGET = 32768  # "xhigh", "max" and anything newer


def usage_from_response(response: Mapping[str, Any]) -> Usage:
    """Anthropic usage -> canonical Usage (semantics in the module docstring).

    Accepts a Message, a `message_delta` event, or any object whose `usage` holds the
    (merged) counts.
    """
    usage = response.get("usage") or {}
    read = int_field(usage, "cache_read_input_tokens")
    write = int_field(usage, "cache_creation_input_tokens")
    thinking = int_field(usage.get("output_tokens_details") or {}, "thinking_tokens")
    # The 1-hour writes are part of `cache_creation_input_tokens` (the breakdown says which).
    written_1h = int_field(usage.get("cache_creation") or {}, "ephemeral_1h_input_tokens")
    return Usage(
        input_tokens=int_field(usage, "input_tokens") + read + write,
        output_tokens=int_field(usage, "output_tokens"),
        cached_input_tokens=read,
        cache_write_input_tokens=write,
        reasoning_tokens=thinking,
        cache_write_1h_input_tokens=min(written_1h, write),
    )


class AnthropicAdapter:
    def __init__(self, name: str = "anthropic", *, api_version: str = API_VERSION) -> None:
        self.name = name
        self.api_version = api_version

    def build_request(
        self, request: ChatRequest, *, default_max_tokens: int | None = None
    ) -> UpstreamCall:
        if request.n is not None and request.n > 1:
            raise InvalidRequest(
                f"n > 1 is not supported by {self.name}: it returns one completion per "
                "request. Send n separate requests instead.",
                param="n",
            )
        max_tokens = request.max_tokens or default_max_tokens
        if not max_tokens:
            raise InvalidRequest(
                f"max_tokens is required by {self.name}; set max_tokens.", param="max_tokens"
            )
        body: JSON = {"model": request.model, "max_tokens": max_tokens}
        if request.system:
            body["system"] = request.system_text()
        body["messages"] = _messages(request)
        _sampling(request, body)
        _tools(request, body)
        thinking = _thinking(request, max_tokens)
        if thinking is not None:
            body["thinking"] = thinking
        if request.response_format is not None:
            body["output_config"] = {"format": _output_format(request)}
        if request.user:
            body["metadata"] = {"user_id": request.user}
        if request.stream:
            body["stream"] = True
        headers = {"content-type": "application/json", "anthropic-version": self.api_version}
        return UpstreamCall("POST", "v1/messages", dumps(body), headers=headers)

    def parse_response(self, status: int, body: bytes) -> ChatResponse:
        raise_for_status(status, body, self)
        data = load_object(body)
        parts = tuple(
            part for block in data.get("content") or () if (part := _part(block)) is not None
        )
        reason = STOP_REASONS.get(data.get("stop_reason") or "", FinishReason.STOP)
        return ChatResponse(
            id=str(data.get("id") or ""),
            model=str(data.get("model") or ""),
            choices=(Choice(0, Message("assistant", parts), reason),),
            usage=usage_from_response(data) if data.get("usage") else None,
        )

    def stream_parser(self) -> AnthropicStreamParser:
        return AnthropicStreamParser()

    def parse_error(self, status: int, body: bytes) -> UpstreamErrorInfo:
        return parse_anthropic_error(status, body)

    def usage_from_response(self, response: Mapping[str, Any]) -> Usage:
        return usage_from_response(response)

    def observe_stream_usage(self) -> AnthropicUsageObserver:
        return AnthropicUsageObserver()


# Typed as the Protocol so mypy proves the class satisfies the adapter contract.
ADAPTER: ProviderAdapter = AnthropicAdapter()


# --- request --------------------------------------------------------------------------------


def _messages(request: ChatRequest) -> list[JSON]:
    out: list[JSON] = []
    for i, message in enumerate(request.messages):
        role = "assistant" if message.role == "assistant" else "user"
        blocks = [
            block
            for j, part in enumerate(message.parts)
            if (block := _block(part, f"messages[{i}].parts[{j}]")) is not None
        ]
        if not blocks:
            continue
        if out and out[-1]["role"] == role and role == "user":
            out[-1]["content"].extend(blocks)  # tool results + what follows: one user turn
        else:
            out.append({"role": role, "content": blocks})
    for turn in out:
        only = turn["content"]
        if len(only) == 1 and only[0]["type"] == "text":
            turn["content"] = only[0]["text"]
    return out


def _block(part: Part, where: str) -> JSON | None:
    match part:
        case TextPart(text=text):
            return {"type": "text", "text": text} if text else None
        case ImagePart():
            return _image(part)
        case ToolCall(id=call_id, name=name, arguments=arguments):
            inputs = arguments_object(arguments, f"{where}.arguments")
            return {"type": "tool_use", "id": call_id, "name": name, "input": inputs}
        case ToolResult(call_id=call_id, content=content, is_error=is_error):
            block: JSON = {"type": "tool_result", "tool_use_id": call_id}
            if content:
                block["content"] = content
            if is_error:
                block["is_error"] = True
            return block
        case ReasoningPart(text=text, signature=str() as signature) if signature:
            return {"type": "thinking", "thinking": text, "signature": signature}
    return None  # unsigned reasoning would be rejected by the API: not sent back


def _image(part: ImagePart) -> JSON:
    if part.data is not None:
        source: JSON = {
            "type": "base64",
            "media_type": part.media_type or "image/png",
            "data": base64.b64encode(part.data).decode("ascii"),
        }
    else:
        source = {"type": "url", "url": part.url or ""}
    return {"type": "image", "source": source}


def _sampling(request: ChatRequest, body: JSON) -> None:
    optional = {"temperature": request.temperature, "top_p": request.top_p, "top_k": request.top_k}
    body.update((key, value) for key, value in optional.items() if value is not None)
    if request.stop:
        body["stop_sequences"] = list(request.stop)


def _tools(request: ChatRequest, body: JSON) -> None:
    if request.tools:
        body["tools"] = [_tool(tool) for tool in request.tools]
    choice = request.tool_choice
    tool_choice: JSON | None = None
    if choice is not None:
        kinds = {"auto": "auto", "none": "none", "required": "any", "tool": "tool"}
        tool_choice = {"type": kinds[choice.mode]}
        if choice.mode == "tool":
            tool_choice["name"] = choice.name
    if request.parallel_tool_calls is False and request.tools:
        tool_choice = tool_choice or {"type": "auto"}
        if tool_choice["type"] != "none":
            tool_choice["disable_parallel_tool_use"] = True
    if tool_choice is not None:
        body["tool_choice"] = tool_choice


def _tool(tool: Tool) -> JSON:
    out: JSON = {
        "name": tool.name,
        "input_schema": tool.parameters or {"type": "object", "properties": {}},
    }
    if tool.description is not None:
        out["description"] = tool.description
    if tool.strict:
        out["strict"] = True
    return out


def _thinking(request: ChatRequest, max_tokens: int) -> JSON | None:
    effort = request.reasoning_effort
    budget = request.reasoning_budget
    if budget is None:
        if effort is None or effort == "none":
            return None
        budget = _EFFORT_BUDGETS.get(effort, _LARGEST_BUDGET)
        # An effort level is a wish, not a number: fit it under max_tokens when possible.
        budget = min(budget, max_tokens - 1)
    if budget < MIN_THINKING_BUDGET or budget >= max_tokens:
        raise InvalidRequest(
            f"Reasoning on anthropic needs a thinking budget of at least {MIN_THINKING_BUDGET} "
            f"tokens and below max_tokens ({max_tokens}); raise max_tokens or lower the budget.",
            param="max_tokens",
        )
    return {"type": "enabled", "budget_tokens": budget}


def _output_format(request: ChatRequest) -> JSON:
    fmt = request.response_format
    if fmt is None or fmt.type == "json_object" or fmt.schema is None:
        raise InvalidRequest(
            "response_format json_object is not supported by anthropic: it only constrains "
            "output to a JSON Schema. Use response_format json_schema.",
            param="response_format",
        )
    return {"type": "json_schema", "schema": fmt.schema}


# --- response -------------------------------------------------------------------------------


def _part(block: JSON) -> Part | None:
    kind = block.get("type")
    if kind == "text":
        return TextPart(str(block.get("text") or ""))
    if kind == "thinking":
        return ReasoningPart(str(block.get("thinking") or ""), block.get("signature"))
    if kind == "tool_use":
        arguments = orjson.dumps(block.get("input") or {}).decode()
        return ToolCall(str(block.get("id") or ""), str(block.get("name") or ""), arguments)
    return None  # redacted_thinking, server tool blocks: nothing a client format can show


def parse_anthropic_error(status: int, body: bytes) -> UpstreamErrorInfo:
    """`{"type": "error", "error": {"type", "message"}}`, or plain text from a proxy."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return UpstreamErrorInfo(status, error_text(body), "api_error")
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return UpstreamErrorInfo(status, error_text(body), "api_error")
    message = str(error.get("message") or error_text(body))
    return UpstreamErrorInfo(status, message, str(error.get("type") or "api_error"))


# --- streaming ------------------------------------------------------------------------------


class AnthropicStreamParser(SSEStreamParser):
    """Named Messages events -> canonical events. Block indexes become tool-call ordinals."""

    __slots__ = ("_blocks", "_reason", "_tools", "_usage")

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[int, int] = {}  # content block index -> tool ordinal (-1: text, ...)
        self._tools = 0
        self._usage: JSON = {}
        self._reason = FinishReason.STOP

    def on_event(self, event: Event) -> list[StreamEvent]:
        if event.event == "ping":
            return []
        data = orjson.loads(event.data)
        kind = data.get("type")
        if kind == "content_block_delta":
            return self._delta(data)
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "message_start":
            message = data.get("message") or {}
            start = StreamStart(str(message.get("id") or ""), str(message.get("model") or ""))
            if not message.get("usage"):
                return [start]
            self._usage.update(message["usage"])
            return [start, UsageUpdate(usage_from_response({"usage": self._usage}))]
        if kind == "message_delta":
            reason = (data.get("delta") or {}).get("stop_reason")
            self._reason = STOP_REASONS.get(reason or "", FinishReason.STOP)
            if not data.get("usage"):
                return []
            self._usage.update(data["usage"])
            return [UsageUpdate(usage_from_response({"usage": self._usage}))]
        if kind == "message_stop":
            self.stop()
            return [Finish(self._reason)]
        if kind == "error":
            info = parse_anthropic_error(502, event.data.encode())
            return [StreamError(info.message, ERROR_STATUS.get(info.type, 502), info.type)]
        return []  # content_block_stop, and event types added after this was written

    def _block_start(self, data: JSON) -> list[StreamEvent]:
        block = data.get("content_block") or {}
        index = data.get("index", 0)
        kind = block.get("type")
        if kind == "tool_use":
            ordinal = self._tools
            self._tools += 1
            self._blocks[index] = ordinal
            return [ToolCallStart(ordinal, str(block.get("id") or ""), str(block.get("name")))]
        self._blocks[index] = -1
        if kind == "text" and block.get("text"):
            return [TextDelta(block["text"])]
        if kind == "thinking" and block.get("thinking"):
            return [ReasoningDelta(block["thinking"])]
        return []

    def _delta(self, data: JSON) -> list[StreamEvent]:
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return [TextDelta(delta.get("text") or "")]
        if kind == "input_json_delta":
            fragment = delta.get("partial_json") or ""
            ordinal = self._blocks.get(data.get("index", 0), -1)
            return [ToolCallDelta(ordinal, fragment)] if fragment and ordinal >= 0 else []
        if kind == "thinking_delta":
            return [ReasoningDelta(delta.get("thinking") or "")]
        return []  # signature_delta, citations_delta

    def on_close(self) -> list[StreamEvent]:
        return [StreamError(TRUNCATED_MESSAGE)]  # message_stop would have stopped the parser


class AnthropicUsageObserver:
    """Pass-through usage: every `usage` object (message_start, message_delta) merged in order.
    Finished at `message_delta`, which carries the stop reason and the final counts (before
    it, `message_start` has counted one output token)."""

    __slots__ = ("_delta", "_merged", "_scanner")

    def __init__(self) -> None:
        self._scanner = JSONValueScanner("usage")
        self._merged: JSON = {}
        # The event line, or the type in the data (a model's text cannot hold either: its
        # newlines and quotes are escaped).
        self._delta = MarkerScanner((b"\nevent: message_delta", b'"type":"message_delta"'))

    def feed(self, chunk: bytes) -> None:
        for found in self._scanner.feed(chunk):
            self._merged.update(found)
        self._delta.feed(chunk)

    @property
    def usage(self) -> Usage | None:
        return usage_from_response({"usage": self._merged}) if self._merged else None

    @property
    def finished(self) -> bool:
        return self._delta.found
