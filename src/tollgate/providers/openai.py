"""OpenAI Chat Completions as an upstream; also every OpenAI-compatible vendor (registry rows).

Docs: https://platform.openai.com/docs/api-reference/chat/create and
https://platform.openai.com/docs/guides/function-calling#streaming

Quirks this adapter encodes:

- `POST chat/completions`, relative to a base URL that already ends in `/v1`.
- `max_completion_tokens` is OpenAI's current field (reasoning models reject `max_tokens`);
  most compatible vendors (DeepSeek, Mistral, Perplexity...) still take `max_tokens`. The field
  is a constructor quirk so a registry row can choose.
- Streamed tool calls: the first fragment of a call carries `index`, `id`, `function.name`
  and usually `arguments: ""`; later fragments carry only `index` and an `arguments` piece.
  Some compatible servers send a whole call in one fragment, or omit `index`.
- Streams end with `data: [DONE]`. With `stream_options.include_usage` the usage arrives in one
  extra chunk AFTER the `finish_reason` chunk, with `choices: []`; every earlier chunk carries
  `"usage": null`. The parser therefore holds the finish until `[DONE]`.
- In-band stream errors are `data: {"error": {...}}` (no SSE event name).
- `reasoning_content` (DeepSeek, vLLM) or `reasoning` (OpenRouter) carry reasoning text.

Billing semantics (`usage_from_response`):

- `prompt_tokens` INCLUDES `prompt_tokens_details.cached_tokens` (DeepSeek reports the same
  thing as `prompt_cache_hit_tokens`). OpenAI has no cache-write charge.
- `completion_tokens` INCLUDES `completion_tokens_details.reasoning_tokens`. Exception: some
  compatible vendors (xAI) report reasoning BESIDE completion tokens; that is detected when
  `total_tokens == prompt + completion + reasoning`, and reasoning is then added to output.
- Perplexity adds meters beside the tokens: `citation_tokens`, `num_search_queries` and
  `search_context_size` (the search context the request paid for); they map onto the Usage
  fields of the same meaning.
- Streams report usage only when asked (`stream_options: {"include_usage": true}`, which this
  adapter always sends), in the last chunk before `[DONE]`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Literal

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
    ResponseFormat,
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
    LastValueUsageObserver,
    ProviderAdapter,
    SSEStreamParser,
    UpstreamCall,
    UpstreamErrorInfo,
    dumps,
    error_text,
    int_field,
    load_object,
    raise_for_status,
)
from tollgate.sse import Event

FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}
# A token budget (Anthropic-style clients) read as an effort level: at most this many -> level.
_BUDGET_TO_EFFORT = ((1024, "low"), (8192, "medium"))


def usage_from_response(response: Mapping[str, Any]) -> Usage:
    """OpenAI usage -> canonical Usage (semantics in the module docstring).

    Accepts a whole response or stream chunk (reads its `usage`).
    """
    usage = response.get("usage") or {}
    prompt = int_field(usage, "prompt_tokens")
    completion = int_field(usage, "completion_tokens")
    prompt_details = usage.get("prompt_tokens_details") or {}
    cached = int_field(prompt_details, "cached_tokens") or int_field(
        usage, "prompt_cache_hit_tokens"
    )
    reasoning = int_field(usage.get("completion_tokens_details") or {}, "reasoning_tokens")
    output = completion
    if reasoning and int_field(usage, "total_tokens") == prompt + completion + reasoning:
        output = completion + reasoning  # reasoning reported beside completion (xAI)
    context = usage.get("search_context_size")
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        cached_input_tokens=cached,
        # GPT-5.6 and later bill cache writes; like cache reads they are INSIDE prompt_tokens.
        cache_write_input_tokens=int_field(prompt_details, "cache_write_tokens"),
        reasoning_tokens=reasoning,
        # Perplexity's meters beside the tokens (absent from every other OpenAI-wire provider).
        citation_tokens=int_field(usage, "citation_tokens"),
        search_queries=int_field(usage, "num_search_queries"),
        search_context=context if isinstance(context, str) else None,
    )


def responses_usage(usage: Mapping[str, Any]) -> Usage:
    """The Responses API's `usage` object, same semantics as Chat Completions under other names:
    `input_tokens` INCLUDES `input_tokens_details.cached_tokens`; `output_tokens` INCLUDES
    `output_tokens_details.reasoning_tokens`."""
    details_in = usage.get("input_tokens_details") or {}
    details_out = usage.get("output_tokens_details") or {}
    return Usage(
        input_tokens=int_field(usage, "input_tokens"),
        output_tokens=int_field(usage, "output_tokens"),
        cached_input_tokens=int_field(details_in, "cached_tokens"),
        cache_write_input_tokens=int_field(details_in, "cache_write_tokens"),
        reasoning_tokens=int_field(details_out, "reasoning_tokens"),
    )


def responses_usage_observer() -> LastValueUsageObserver:
    """Pass-through usage for Responses API streams: the `usage` inside `response.completed`."""
    return LastValueUsageObserver("usage", responses_usage)


class OpenAIChatAdapter:
    """Chat Completions. Constructor arguments are the per-vendor quirks a registry row sets."""

    def __init__(
        self,
        name: str = "openai",
        *,
        max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = (
            "max_completion_tokens"
        ),
        stream_usage_option: bool = True,
        supports_top_k: bool = False,
    ) -> None:
        self.name = name
        self.max_tokens_field = max_tokens_field
        self.stream_usage_option = stream_usage_option
        self.supports_top_k = supports_top_k

    def build_request(
        self, request: ChatRequest, *, default_max_tokens: int | None = None
    ) -> UpstreamCall:
        """The Chat Completions body. `default_max_tokens` is unused: OpenAI does not require it."""
        body: JSON = {"model": request.model, "messages": _messages(request)}
        self._options(request, body)
        if request.tools:
            body["tools"] = [_tool(tool) for tool in request.tools]
        if request.tool_choice is not None:
            choice = request.tool_choice
            body["tool_choice"] = (
                {"type": "function", "function": {"name": choice.name}}
                if choice.mode == "tool"
                else choice.mode
            )
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.response_format is not None:
            body["response_format"] = _response_format(request.response_format)
        if request.stream:
            body["stream"] = True
            if self.stream_usage_option:
                # Always: billing needs usage even when the client did not ask for it.
                body["stream_options"] = {"include_usage": True}
        return UpstreamCall(
            "POST", "chat/completions", dumps(body), headers={"content-type": "application/json"}
        )

    def _options(self, request: ChatRequest, body: JSON) -> None:
        if request.top_k is not None and not self.supports_top_k:
            raise InvalidRequest(f"top_k is not supported by {self.name}.", param="top_k")
        optional = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": request.top_k,
            "n": request.n,
            "user": request.user,
            self.max_tokens_field: request.max_tokens,
            "reasoning_effort": _effort(request),
        }
        body.update((key, value) for key, value in optional.items() if value is not None)
        if request.stop:
            body["stop"] = list(request.stop)

    def parse_response(self, status: int, body: bytes) -> ChatResponse:
        raise_for_status(status, body, self)
        data = load_object(body)
        choices = tuple(_choice(i, choice) for i, choice in enumerate(data.get("choices") or ()))
        created = data.get("created")
        return ChatResponse(
            id=str(data.get("id") or ""),
            model=str(data.get("model") or ""),
            choices=choices,
            usage=usage_from_response(data) if data.get("usage") else None,
            created=created if type(created) is int else None,
        )

    def stream_parser(self) -> OpenAIStreamParser:
        return OpenAIStreamParser()

    def parse_error(self, status: int, body: bytes) -> UpstreamErrorInfo:
        return parse_openai_error(status, body)

    def usage_from_response(self, response: Mapping[str, Any]) -> Usage:
        return usage_from_response(response)

    def observe_stream_usage(self) -> LastValueUsageObserver:
        return chat_usage_observer()


# Typed as the Protocol so mypy proves the class satisfies the adapter contract.
ADAPTER: ProviderAdapter = OpenAIChatAdapter()


# --- request --------------------------------------------------------------------------------


def _messages(request: ChatRequest) -> list[JSON]:
    out: list[JSON] = [{"role": item.role, "content": item.text} for item in request.system]
    for message in request.messages:
        if message.role == "tool":
            out.extend(
                {"role": "tool", "tool_call_id": part.call_id, "content": part.content}
                for part in message.parts
                if type(part) is ToolResult
            )
        elif message.role == "assistant":
            out.append(_assistant(message))
        else:
            out.append({"role": "user", "content": _user_content(message.parts)})
    return out


def _user_content(parts: tuple[Part, ...]) -> str | list[JSON]:
    if len(parts) == 1 and type(parts[0]) is TextPart:
        return parts[0].text
    content: list[JSON] = []
    for part in parts:
        if type(part) is TextPart:
            content.append({"type": "text", "text": part.text})
        elif type(part) is ImagePart:
            content.append({"type": "image_url", "image_url": _image_url(part)})
    return content


def _image_url(part: ImagePart) -> JSON:
    if part.data is not None:
        encoded = base64.b64encode(part.data).decode("ascii")
        url = f"data:{part.media_type or 'application/octet-stream'};base64,{encoded}"
    else:
        url = part.url or ""
    image: JSON = {"url": url}
    if part.detail:
        image["detail"] = part.detail
    return image


def _assistant(message: Message) -> JSON:
    # Reasoning parts are dropped: Chat Completions has no field to send them back in.
    text = "".join(part.text for part in message.parts if type(part) is TextPart)
    calls = [part for part in message.parts if type(part) is ToolCall]
    # `content` may be null only beside tool calls; an empty turn must say "".
    out: JSON = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments or "{}"},
            }
            for call in calls
        ]
    return out


def _tool(tool: Tool) -> JSON:
    function: JSON = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _response_format(fmt: ResponseFormat) -> JSON:
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema: JSON = {"name": fmt.name or "response", "schema": fmt.schema or {}}
    if fmt.description is not None:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def _effort(request: ChatRequest) -> str | None:
    if request.reasoning_effort is not None:
        return request.reasoning_effort
    budget = request.reasoning_budget
    if budget is None:
        return None
    for ceiling, level in _BUDGET_TO_EFFORT:
        if budget <= ceiling:
            return level
    return "high"


# --- response -------------------------------------------------------------------------------


def _choice(position: int, choice: JSON) -> Choice:
    message = choice.get("message") or {}
    parts: list[Part] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        parts.append(ReasoningPart(reasoning))
    content = message.get("content")
    if isinstance(content, list):  # a few compatible servers return content parts
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    if not content and isinstance(message.get("refusal"), str):
        content = message["refusal"]
    if content:
        parts.append(TextPart(content))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append(
            ToolCall(
                id=str(call.get("id") or f"call_{len(parts)}"),
                name=str(function.get("name") or ""),
                arguments=str(function.get("arguments") or ""),
            )
        )
    index = choice.get("index")
    return Choice(
        index=index if type(index) is int else position,
        message=Message("assistant", tuple(parts)),
        finish_reason=FINISH_REASONS.get(choice.get("finish_reason") or "", FinishReason.STOP),
    )


def parse_openai_error(status: int, body: bytes) -> UpstreamErrorInfo:
    """`{"error": {"message", "type", "code"}}`; also FastAPI-style `{"detail": ...}` bodies
    from compatible servers, and plain text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return UpstreamErrorInfo(status, error_text(body), "upstream_error")
    if not isinstance(data, dict):
        return UpstreamErrorInfo(status, error_text(body), "upstream_error")
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message") or error_text(body)
        kind = error.get("type") or error.get("code") or "upstream_error"
        return UpstreamErrorInfo(status, str(message), str(kind))
    message = error if isinstance(error, str) else data.get("detail") or data.get("message")
    return UpstreamErrorInfo(status, str(message or error_text(body)), "upstream_error")


# --- streaming ------------------------------------------------------------------------------


class OpenAIStreamParser(SSEStreamParser):
    """`data: {chunk}` ... `data: [DONE]` -> canonical events (see the module docstring)."""

    __slots__ = ("_finish", "_started", "_tools")

    def __init__(self) -> None:
        super().__init__()
        self._started = False
        self._finish: FinishReason | None = None
        self._tools: set[int] = set()

    def on_event(self, event: Event) -> list[StreamEvent]:
        if event.data == "[DONE]":
            self.stop()
            return [Finish(self._finish or FinishReason.STOP)]
        chunk = orjson.loads(event.data)
        error = chunk.get("error")
        if error:
            info = parse_openai_error(502, event.data.encode())
            return [StreamError(info.message, 502, info.type)]
        out: list[StreamEvent] = []
        if not self._started:
            self._started = True
            out.append(StreamStart(str(chunk.get("id") or ""), str(chunk.get("model") or "")))
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0:  # n > 1 is never streamed through translation
                self._choice(choice, out)
        if chunk.get("usage"):
            out.append(UsageUpdate(usage_from_response(chunk)))
        return out

    def _choice(self, choice: JSON, out: list[StreamEvent]) -> None:
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            out.append(ReasoningDelta(reasoning))
        content = delta.get("content")
        if content:
            out.append(TextDelta(content))
        for position, call in enumerate(delta.get("tool_calls") or ()):
            self._tool_call(position, call, out)
        reason = choice.get("finish_reason")
        if reason:
            self._finish = FINISH_REASONS.get(reason, FinishReason.STOP)

    def _tool_call(self, position: int, call: JSON, out: list[StreamEvent]) -> None:
        index = call.get("index")
        index = index if type(index) is int else position
        function = call.get("function") or {}
        if index not in self._tools:
            self._tools.add(index)
            call_id = call.get("id") or f"call_{index}"
            out.append(ToolCallStart(index, str(call_id), str(function.get("name") or "")))
        arguments = function.get("arguments")
        if arguments:
            out.append(ToolCallDelta(index, arguments))

    def on_close(self) -> list[StreamEvent]:
        if self._finish is not None:
            # Some compatible servers end after the finish chunk without `[DONE]`.
            return [Finish(self._finish)]
        return [StreamError(TRUNCATED_MESSAGE)]


def chat_usage_observer() -> LastValueUsageObserver:
    """Pass-through usage: the last non-null top-level `usage` object in the stream. Finished
    at the first non-null `finish_reason` (the usage chunk, if any, follows it), or at `[DONE]`
    (a model's text cannot hold these bytes: its quotes and newlines are escaped)."""
    return LastValueUsageObserver(
        "usage",
        lambda usage: usage_from_response({"usage": usage}),
        (b'"finish_reason":"', b'"finish_reason": "', b"\ndata: [DONE]", b"\ndata:[DONE]"),
    )
