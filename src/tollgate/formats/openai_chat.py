"""OpenAI Chat Completions as the client format (the Unified API, `/compat/chat/completions`).

Docs: https://platform.openai.com/docs/api-reference/chat/create and .../chat-streaming

Parsing accepts system AND developer messages (lifted, in order, into `ChatRequest.system`),
multi-turn conversations, images as `data:` URLs (decoded here) and http(s) URLs (left for the
adapter), tools and tool choice, assistant tool calls and `tool` results, `response_format`,
`stop`, sampling, `max_tokens` / `max_completion_tokens` (the latter wins), `n`,
`reasoning_effort`, `stream` and `stream_options.include_usage`.

Parameters that change what the client gets back and that no translation can honour (log
probabilities, audio output, predicted outputs, legacy `functions`) are refused with a 400
naming them; pure hints with no cross-provider meaning (`seed`, penalties, `store`,
`service_tier`...) are ignored.

Streams render the documented chunk sequence: a first chunk with `delta.role`, content and
`tool_calls` deltas (`index`, then `id`/`type`/`function.name` once, then `arguments`
pieces), a chunk with `finish_reason`, then, only when the client asked with
`stream_options.include_usage`, a usage chunk with `choices: []`, and finally `data: [DONE]`.
Reasoning deltas go out as `delta.reasoning_content` (the DeepSeek/vLLM convention), which
the official SDKs keep as an extra field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from tollgate.canonical import (
    ChatRequest,
    ChatResponse,
    Choice,
    Finish,
    Instruction,
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
    ToolChoice,
    ToolResult,
    Usage,
    UsageUpdate,
)
from tollgate.formats._fields import (
    image_from_url,
    invalid,
    opt_bool,
    opt_int,
    opt_number,
    opt_str,
    require_list,
    require_object,
    require_str,
    str_list,
    str_map,
    unsupported,
)
from tollgate.sse import encode_json_data

JSON = dict[str, Any]
# Error `type` by HTTP status, as the official SDKs expect it.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_UNSUPPORTED = {
    "audio": "audio output",
    "top_logprobs": "top_logprobs",
    "prediction": "predicted outputs",
    "functions": "the legacy functions parameter (use tools)",
    "function_call": "the legacy function_call parameter (use tool_choice)",
    "web_search_options": "web search options",
}
_DONE = b"data: [DONE]\n\n"


# --- parse ----------------------------------------------------------------------------------


def parse_request(body: Mapping[str, Any]) -> ChatRequest:
    """An OpenAI Chat Completions body -> ChatRequest. Raises InvalidRequest naming the field."""
    body = require_object(body, "body")
    _refuse_unsupported(body)
    model = require_str(body, "model")
    system, messages = _messages(require_list(body.get("messages"), "messages", non_empty=True))
    max_tokens = opt_int(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = opt_int(body, "max_tokens", minimum=1)
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        options = require_object(stream_options, "stream_options")
        include_usage = bool(opt_bool(options, "include_usage", "stream_options.include_usage"))
    return ChatRequest(
        model=model,
        messages=messages,
        system=system,
        tools=_tools(body.get("tools")),
        tool_choice=_tool_choice(body.get("tool_choice")),
        parallel_tool_calls=opt_bool(body, "parallel_tool_calls"),
        response_format=_response_format(body.get("response_format")),
        stop=str_list(body.get("stop"), "stop"),
        temperature=opt_number(body, "temperature"),
        top_p=opt_number(body, "top_p"),
        max_tokens=max_tokens,
        n=opt_int(body, "n", minimum=1),
        stream=bool(opt_bool(body, "stream")),
        include_usage=include_usage,
        reasoning_effort=opt_str(body, "reasoning_effort"),
        user=opt_str(body, "user"),
        metadata=str_map(body.get("metadata"), "metadata"),
    )


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    for key, what in _UNSUPPORTED.items():
        if body.get(key) is not None:
            raise unsupported(key, what)
    if body.get("logprobs"):
        raise unsupported("logprobs", "log probabilities")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise unsupported("modalities", "output modalities other than text")


def _messages(raw: list[Any]) -> tuple[tuple[Instruction, ...], tuple[Message, ...]]:
    system: list[Instruction] = []
    messages: list[Message] = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        message = require_object(item, where)
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(Instruction(role, _text_content(message.get("content"), where)))
        elif role == "user":
            messages.append(Message("user", _user_parts(message.get("content"), where)))
        elif role == "assistant":
            messages.append(_assistant(message, where))
        elif role == "tool":
            call_id = require_str(message, "tool_call_id", f"{where}.tool_call_id")
            content = _text_content(message.get("content"), where)
            messages.append(Message("tool", (ToolResult(call_id, content),)))
        elif role == "function":
            raise unsupported(f"{where}.role", "the legacy function role (use tool)")
        else:
            raise invalid(f"{where}.role", "must be system, developer, user, assistant or tool.")
    if not messages:
        raise invalid("messages", "must contain at least one user message.")
    return tuple(system), tuple(messages)


def _text_content(content: Any, where: str) -> str:
    """String content, or an array of text parts joined (system, developer and tool messages)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, item in enumerate(require_list(content, f"{where}.content")):
        part = require_object(item, f"{where}.content[{j}]")
        if part.get("type") not in ("text", "refusal"):
            raise invalid(f"{where}.content[{j}].type", "must be text here.")
        texts.append(str(part.get("text") or part.get("refusal") or ""))
    return "".join(texts)


def _user_parts(content: Any, where: str) -> tuple[Part, ...]:
    if isinstance(content, str):
        return (TextPart(content),)
    parts: list[Part] = []
    for j, item in enumerate(require_list(content, f"{where}.content", non_empty=True)):
        field = f"{where}.content[{j}]"
        part = require_object(item, field)
        kind = part.get("type")
        if kind == "text":
            parts.append(TextPart(require_str(part, "text", f"{field}.text")))
        elif kind == "image_url":
            image = require_object(part.get("image_url"), f"{field}.image_url")
            detail = opt_str(image, "detail", f"{field}.image_url.detail")
            parts.append(image_from_url(image.get("url"), f"{field}.image_url.url", detail))
        else:
            raise unsupported(f"{field}.type", f"content of type {kind!r}")
    return tuple(parts)


def _assistant(message: Mapping[str, Any], where: str) -> Message:
    parts: list[Part] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        parts.append(ReasoningPart(reasoning))
    text = _text_content(message.get("content"), where)
    if text:
        parts.append(TextPart(text))
    calls = message.get("tool_calls")
    for k, item in enumerate(require_list(calls, f"{where}.tool_calls") if calls else ()):
        field = f"{where}.tool_calls[{k}]"
        call = require_object(item, field)
        function = require_object(call.get("function"), f"{field}.function")
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            raise invalid(f"{field}.function.arguments", "must be a JSON string.")
        parts.append(
            ToolCall(
                require_str(call, "id", f"{field}.id"),
                require_str(function, "name", f"{field}.function.name"),
                arguments,
            )
        )
    return Message("assistant", tuple(parts))


def _tools(raw: Any) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    tools: list[Tool] = []
    for i, item in enumerate(require_list(raw, "tools")):
        tool = require_object(item, f"tools[{i}]")
        if tool.get("type", "function") != "function":
            raise unsupported(f"tools[{i}].type", f"tools of type {tool.get('type')!r}")
        function = require_object(tool.get("function"), f"tools[{i}].function")
        parameters = function.get("parameters")
        if parameters is not None:
            require_object(parameters, f"tools[{i}].function.parameters")
        tools.append(
            Tool(
                name=require_str(function, "name", f"tools[{i}].function.name"),
                description=opt_str(function, "description", f"tools[{i}].function.description"),
                parameters=parameters,
                strict=opt_bool(function, "strict", f"tools[{i}].function.strict"),
            )
        )
    return tuple(tools)


def _tool_choice(raw: Any) -> ToolChoice | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return ToolChoice(raw)
    choice = require_object(raw, "tool_choice")
    if choice.get("type") != "function":
        raise invalid("tool_choice", 'must be "auto", "none", "required" or a function choice.')
    function = require_object(choice.get("function"), "tool_choice.function")
    return ToolChoice("tool", require_str(function, "name", "tool_choice.function.name"))


def _response_format(raw: Any) -> ResponseFormat | None:
    if raw is None:
        return None
    fmt = require_object(raw, "response_format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind != "json_schema":
        raise invalid("response_format.type", "must be text, json_object or json_schema.")
    spec = require_object(fmt.get("json_schema"), "response_format.json_schema")
    schema = spec.get("schema")
    if schema is not None:
        require_object(schema, "response_format.json_schema.schema")
    return ResponseFormat(
        "json_schema",
        schema=schema if schema is not None else {},
        name=opt_str(spec, "name", "response_format.json_schema.name"),
        description=opt_str(spec, "description", "response_format.json_schema.description"),
        strict=opt_bool(spec, "strict", "response_format.json_schema.strict"),
    )


# --- render ---------------------------------------------------------------------------------


def render_response(response: ChatResponse, *, created: int | None = None) -> JSON:
    """A ChatResponse as a `chat.completion` object. `created` is used when the upstream gave
    none (the renderer reads no clock)."""
    body: JSON = {
        "id": response.id,
        "object": "chat.completion",
        "created": response.created or created or 0,
        "model": response.model,
        "choices": [_render_choice(choice) for choice in response.choices],
    }
    if response.usage is not None:
        body["usage"] = render_usage(response.usage)
    return body


def _render_choice(choice: Choice) -> JSON:
    parts = choice.message.parts
    text = "".join(part.text for part in parts if type(part) is TextPart)
    message: JSON = {"role": "assistant", "content": text or None, "refusal": None}
    reasoning = "".join(part.text for part in parts if type(part) is ReasoningPart)
    if reasoning:
        message["reasoning_content"] = reasoning
    calls = [part for part in parts if type(part) is ToolCall]
    if calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in calls
        ]
    return {
        "index": choice.index,
        "message": message,
        "logprobs": None,
        "finish_reason": choice.finish_reason.value,
    }


def render_usage(usage: Usage) -> JSON:
    """OpenAI's shape: cached and cache-written tokens inside `prompt_tokens`, reasoning inside
    `completion_tokens`. `cache_write_tokens` is an extension OpenAI itself never sends."""
    prompt_details: JSON = {"cached_tokens": usage.cached_input_tokens}
    if usage.cache_write_input_tokens:
        prompt_details["cache_write_tokens"] = usage.cache_write_input_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def render_error_body(status: int, code: str, message: str) -> JSON:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "api_error"),
            "code": code,
            "param": None,
        }
    }


class StreamRenderer:
    """Canonical stream events -> `chat.completion.chunk` SSE bytes, one call per event.

    `include_usage` is what the client asked for; `created` is the timestamp for every chunk
    (the caller's clock); `response_id`/`model` stand in when the upstream gave none.
    """

    __slots__ = ("_created", "_done", "_id", "_include_usage", "_model", "_started", "_usage")

    def __init__(
        self,
        *,
        include_usage: bool = False,
        created: int = 0,
        response_id: str = "",
        model: str = "",
    ) -> None:
        self._include_usage = include_usage
        self._created = created
        self._id = response_id
        self._model = model
        self._started = False
        self._done = False
        self._usage: Usage | None = None

    def render(self, event: StreamEvent) -> bytes:
        if self._done:
            return b""
        match event:
            case TextDelta(text=text):
                return self._start() + self._chunk({"content": text})
            case ToolCallDelta(index=index, arguments=arguments):
                call = {"index": index, "function": {"arguments": arguments}}
                return self._start() + self._chunk({"tool_calls": [call]})
            case ToolCallStart(index=index, id=call_id, name=name):
                function = {"name": name, "arguments": ""}
                call = {"index": index, "id": call_id, "type": "function", "function": function}
                return self._start() + self._chunk({"tool_calls": [call]})
            case ReasoningDelta(text=text):
                return self._start() + self._chunk({"reasoning_content": text})
            case UsageUpdate(usage=usage):
                self._usage = usage
                return b""
            case StreamStart(id=response_id, model=model):
                self._id = response_id or self._id
                self._model = model or self._model
                return self._start()
            case Finish(reason=reason):
                return self._start() + self._finish(reason.value)
            case StreamError(message=message, status=status, type=kind):
                error_type = ERROR_TYPES.get(status, "api_error")
                return self._error(message, error_type, kind)
        return b""

    def close(self) -> bytes:
        """The terminator, always: after a finish, and after an in-band error too."""
        return _DONE

    def render_error(self, status: int, code: str, message: str) -> bytes:
        """A gateway error after the stream started, as OpenAI sends one in-band."""
        return self._error(message, ERROR_TYPES.get(status, "api_error"), code)

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._chunk({"role": "assistant", "content": ""})

    def _chunk(self, delta: JSON, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return encode_json_data(orjson.dumps(self._envelope([choice])))

    def _envelope(self, choices: list[JSON]) -> JSON:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }

    def _finish(self, reason: str) -> bytes:
        self._done = True
        out = self._chunk({}, reason)
        if self._include_usage and self._usage is not None:
            body = self._envelope([])
            body["usage"] = render_usage(self._usage)
            out += encode_json_data(orjson.dumps(body))
        return out

    def _error(self, message: str, kind: str, code: str | None) -> bytes:
        self._done = True
        error = {"message": message, "type": kind, "code": code, "param": None}
        return encode_json_data(orjson.dumps({"error": error}))
