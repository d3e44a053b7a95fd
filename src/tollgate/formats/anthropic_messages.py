"""Anthropic Messages as the client format (`/ai/v1/messages`: Anthropic in, any provider out).

Docs: https://docs.claude.com/en/api/messages and .../build-with-claude/streaming

Parsing accepts a string or text-block `system`, user/assistant turns whose content is a
string or blocks (`text`, `image` with a base64 or url source, `tool_use`, `tool_result`,
`thinking`), custom tools and `tool_choice` (including `disable_parallel_tool_use`),
`thinking` (`enabled` with a budget, `adaptive`, `disabled`), `output_config` (`effort`, and
`format` for JSON output; the beta top-level `output_format` too), `stop_sequences`,
sampling and `metadata.user_id`. A user turn holding `tool_result` blocks becomes a canonical
`tool` message followed by the rest of that turn. `cache_control` markers are dropped: prompt
caching does not carry across providers. Server tools (web search, code execution...) and
document blocks are refused with a 400 naming them.

Streams render the exact documented sequence: `message_start` (a Message with empty content),
then per content block `content_block_start`, `content_block_delta`s (`text_delta`,
`thinking_delta`, `input_json_delta`) and `content_block_stop`, then `message_delta` (stop
reason and cumulative usage) and `message_stop`. The format has no terminator, so `close()`
sends nothing; an in-band error is `event: error`.

Usage is rendered with Anthropic's semantics: `input_tokens` EXCLUDES cache reads and writes,
which go BESIDE it in `cache_read_input_tokens` and `cache_creation_input_tokens`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from tollgate.canonical import (
    ChatRequest,
    ChatResponse,
    Finish,
    FinishReason,
    ImagePart,
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
    decode_base64,
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
    unsupported,
)
from tollgate.sse import encode_json_data

JSON = dict[str, Any]
STOP_REASONS = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ADAPTIVE_EFFORT = "medium"  # `thinking: adaptive` without `output_config.effort`


# --- parse ----------------------------------------------------------------------------------


def parse_request(body: Mapping[str, Any]) -> ChatRequest:
    """An Anthropic Messages body -> ChatRequest. Raises InvalidRequest naming the field."""
    body = require_object(body, "body")
    model = require_str(body, "model")
    max_tokens = opt_int(body, "max_tokens", minimum=1)
    if max_tokens is None:
        raise invalid("max_tokens", "is required.")
    raw_messages = require_list(body.get("messages"), "messages", non_empty=True)
    messages = tuple(m for i, item in enumerate(raw_messages) for m in _message(item, i))
    tool_choice, parallel = _tool_choice(body.get("tool_choice"))
    effort, budget = _reasoning(body)
    metadata = body.get("metadata")
    user = None
    if metadata is not None:
        user = opt_str(require_object(metadata, "metadata"), "user_id", "metadata.user_id")
    return ChatRequest(
        model=model,
        messages=messages,
        system=_system(body.get("system")),
        tools=_tools(body.get("tools")),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        response_format=_output_format(body),
        stop=str_list(body.get("stop_sequences"), "stop_sequences"),
        temperature=opt_number(body, "temperature"),
        top_p=opt_number(body, "top_p"),
        top_k=opt_int(body, "top_k", minimum=1),
        max_tokens=max_tokens,
        stream=bool(opt_bool(body, "stream")),
        reasoning_effort=effort,
        reasoning_budget=budget,
        user=user,
    )


def _system(raw: Any) -> tuple[Instruction, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (Instruction("system", raw),) if raw else ()
    out: list[Instruction] = []
    for i, item in enumerate(require_list(raw, "system")):
        block = require_object(item, f"system[{i}]")
        if block.get("type") != "text":
            raise invalid(f"system[{i}].type", "must be text.")
        out.append(Instruction("system", require_str(block, "text", f"system[{i}].text")))
    return tuple(out)


def _message(raw: Any, i: int) -> list[Message]:
    where = f"messages[{i}]"
    message = require_object(raw, where)
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise invalid(f"{where}.role", "must be user or assistant.")
    content = message.get("content")
    if isinstance(content, str):
        return [Message(role, (TextPart(content),))]
    blocks = require_list(content, f"{where}.content")
    parts = [_block(block, f"{where}.content[{j}]", role) for j, block in enumerate(blocks)]
    kept = [part for part in parts if part is not None]
    results = tuple(part for part in kept if type(part) is ToolResult)
    others = tuple(part for part in kept if type(part) is not ToolResult)
    out: list[Message] = []
    if results:  # tool results become their own canonical turn, ahead of the rest
        out.append(Message("tool", results))
    if others or not results:
        out.append(Message(role, others))
    return out


def _block(raw: Any, field: str, role: str) -> Part | None:
    block = require_object(raw, field)
    kind = block.get("type")
    if kind == "text":
        return TextPart(str(block.get("text") or ""))
    if kind == "image":
        return _image(block, field)
    if kind == "tool_use" and role == "assistant":
        inputs = block.get("input")
        require_object(inputs if inputs is not None else {}, f"{field}.input")
        return ToolCall(
            require_str(block, "id", f"{field}.id"),
            require_str(block, "name", f"{field}.name"),
            orjson.dumps(inputs or {}).decode(),
        )
    if kind == "tool_result" and role == "user":
        return ToolResult(
            require_str(block, "tool_use_id", f"{field}.tool_use_id"),
            _result_text(block.get("content"), f"{field}.content"),
            bool(opt_bool(block, "is_error", f"{field}.is_error")),
        )
    if kind == "thinking" and role == "assistant":
        return ReasoningPart(str(block.get("thinking") or ""), opt_str(block, "signature"))
    if kind == "redacted_thinking" and role == "assistant":
        return None  # only Anthropic can read it, and only Anthropic-to-Anthropic is relayed
    raise unsupported(f"{field}.type", f"a {kind!r} block in a {role} message")


def _image(block: Mapping[str, Any], field: str) -> ImagePart:
    source = require_object(block.get("source"), f"{field}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = require_str(source, "media_type", f"{field}.source.media_type")
        data = decode_base64(source.get("data"), f"{field}.source.data")
        return ImagePart(data=data, media_type=media_type)
    if kind == "url":
        return image_from_url(source.get("url"), f"{field}.source.url")
    raise unsupported(f"{field}.source.type", f"an image source of type {kind!r}")


def _result_text(content: Any, field: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[str] = []
    for k, item in enumerate(require_list(content, field)):
        block = require_object(item, f"{field}[{k}]")
        if block.get("type") != "text":
            raise unsupported(f"{field}[{k}].type", "a non-text block inside a tool_result")
        texts.append(str(block.get("text") or ""))
    return "".join(texts)


def _tools(raw: Any) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    tools: list[Tool] = []
    for i, item in enumerate(require_list(raw, "tools")):
        tool = require_object(item, f"tools[{i}]")
        if tool.get("type", "custom") != "custom":
            raise unsupported(f"tools[{i}].type", f"the server tool {tool.get('type')!r}")
        schema = require_object(tool.get("input_schema"), f"tools[{i}].input_schema")
        tools.append(
            Tool(
                name=require_str(tool, "name", f"tools[{i}].name"),
                description=opt_str(tool, "description", f"tools[{i}].description"),
                parameters=schema,
                strict=opt_bool(tool, "strict", f"tools[{i}].strict"),
            )
        )
    return tuple(tools)


def _tool_choice(raw: Any) -> tuple[ToolChoice | None, bool | None]:
    if raw is None:
        return None, None
    choice = require_object(raw, "tool_choice")
    kind = choice.get("type")
    parallel = None if not choice.get("disable_parallel_tool_use") else False
    if kind in ("auto", "none"):
        return ToolChoice(kind), parallel
    if kind == "any":
        return ToolChoice("required"), parallel
    if kind == "tool":
        return ToolChoice("tool", require_str(choice, "name", "tool_choice.name")), parallel
    raise invalid("tool_choice.type", "must be auto, any, tool or none.")


def _reasoning(body: Mapping[str, Any]) -> tuple[str | None, int | None]:
    config = body.get("output_config")
    effort = None
    if config is not None:
        effort = opt_str(require_object(config, "output_config"), "effort", "output_config.effort")
    thinking = body.get("thinking")
    if thinking is None:
        return effort, None
    kind = require_object(thinking, "thinking").get("type")
    if kind == "enabled":
        budget = opt_int(thinking, "budget_tokens", "thinking.budget_tokens", minimum=1)
        if budget is None:
            raise invalid("thinking.budget_tokens", "is required when thinking is enabled.")
        return effort, budget
    if kind == "adaptive":
        return effort or _ADAPTIVE_EFFORT, None
    if kind == "disabled":
        return None, None
    raise invalid("thinking.type", "must be enabled, adaptive or disabled.")


def _output_format(body: Mapping[str, Any]) -> ResponseFormat | None:
    config = body.get("output_config")
    fmt = require_object(config, "output_config").get("format") if config is not None else None
    field = "output_config.format"
    if fmt is None and body.get("output_format") is not None:
        fmt, field = body["output_format"], "output_format"  # the beta spelling
    if fmt is None:
        return None
    fmt = require_object(fmt, field)
    if fmt.get("type") != "json_schema":
        raise invalid(f"{field}.type", "must be json_schema.")
    schema = require_object(fmt.get("schema"), f"{field}.schema")
    return ResponseFormat("json_schema", schema=schema)


# --- render ---------------------------------------------------------------------------------


def render_response(response: ChatResponse) -> JSON:
    """A ChatResponse as an Anthropic Message (the first choice: Anthropic has no `n`)."""
    choice = response.choices[0] if response.choices else None
    parts = choice.message.parts if choice is not None else ()
    reason = choice.finish_reason if choice is not None else FinishReason.STOP
    return {
        "id": response.id,
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": [block for part in parts if (block := _render_part(part)) is not None],
        "stop_reason": STOP_REASONS[reason],
        "stop_sequence": None,
        "usage": render_usage(response.usage or Usage()),
    }


def _render_part(part: Part) -> JSON | None:
    match part:
        case TextPart(text=text):
            return {"type": "text", "text": text}
        case ReasoningPart(text=text, signature=signature):
            return {"type": "thinking", "thinking": text, "signature": signature or ""}
        case ToolCall(id=call_id, name=name, arguments=arguments):
            return {"type": "tool_use", "id": call_id, "name": name, "input": _input(arguments)}
    return None


def _input(arguments: str) -> JSON:
    """Tool input must be an object; a model that emitted broken JSON keeps its text visible."""
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"_raw_arguments": arguments}


def render_usage(usage: Usage) -> JSON:
    return {
        "input_tokens": usage.uncached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_input_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
    }


def render_error_body(status: int, code: str, message: str) -> JSON:
    error_type = ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": error_type, "message": message, "code": code}}


def _event(name: bytes, payload: JSON) -> bytes:
    return encode_json_data(orjson.dumps(payload), name)


class StreamRenderer:
    """Canonical stream events -> Anthropic's named SSE events, one call per event.

    Content blocks are opened and closed as the kind of content changes (thinking, text, one
    block per tool call). `response_id`/`model` stand in when the upstream gave none.
    """

    __slots__ = (
        "_block",
        "_blocks",
        "_done",
        "_id",
        "_kind",
        "_model",
        "_started",
        "_tools",
        "_usage",
    )

    def __init__(self, *, response_id: str = "", model: str = "") -> None:
        self._id = response_id
        self._model = model
        self._started = False
        self._done = False
        self._block = -1  # index of the open block, -1 when none is open
        self._kind = ""  # "text" | "thinking" | "tool"
        self._blocks = 0  # blocks opened so far
        self._tools: dict[int, int] = {}  # tool ordinal -> block index
        self._usage = Usage()

    def render(self, event: StreamEvent) -> bytes:
        if self._done:
            return b""
        match event:
            case TextDelta(text=text):
                head = self._open("text", {"type": "text", "text": ""})
                return head + self._delta({"type": "text_delta", "text": text})
            case ToolCallDelta(index=index, arguments=arguments):
                block = self._tools.get(index, -1)  # never into another call's block
                delta = {"type": "input_json_delta", "partial_json": arguments}
                return self._delta(delta, block)
            case ReasoningDelta(text=text):
                start = {"type": "thinking", "thinking": "", "signature": ""}
                head = self._open("thinking", start)
                return head + self._delta({"type": "thinking_delta", "thinking": text})
            case ToolCallStart(index=index, id=call_id, name=name):
                tool: JSON = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
                head = self._open("tool", tool, force=True)
                self._tools[index] = self._block
                return head
            case UsageUpdate(usage=usage):
                self._usage = usage
                return b""
            case StreamStart(id=response_id, model=model):
                self._id = response_id or self._id
                self._model = model or self._model
                return self._start()
            case Finish(reason=reason):
                return self._finish(STOP_REASONS[reason])
            case StreamError(message=message, type=kind):
                return self._error(kind if kind != "upstream_error" else "api_error", message)
        return b""

    def close(self) -> bytes:
        """Anthropic streams have no terminator after `message_stop` (or after an error)."""
        return b""

    def render_error(self, status: int, code: str, message: str) -> bytes:
        return self._error(ERROR_TYPES.get(status, "api_error"), message)

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: JSON = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": render_usage(self._usage),
        }
        return _event(b"message_start", {"type": "message_start", "message": message})

    def _open(self, kind: str, block: JSON, *, force: bool = False) -> bytes:
        if self._block >= 0 and self._kind == kind and not force:
            return b""
        out = self._start() + self._stop_block()
        self._block = self._blocks
        self._blocks += 1
        self._kind = kind
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        return out + _event(b"content_block_start", start)

    def _delta(self, delta: JSON, block: int | None = None) -> bytes:
        index = self._block if block is None else block
        if index < 0:
            return b""  # a tool-argument fragment for a call that never started: drop it
        payload = {"type": "content_block_delta", "index": index, "delta": delta}
        return _event(b"content_block_delta", payload)

    def _stop_block(self) -> bytes:
        if self._block < 0:
            return b""
        index, self._block = self._block, -1
        return _event(b"content_block_stop", {"type": "content_block_stop", "index": index})

    def _finish(self, stop_reason: str) -> bytes:
        self._done = True
        out = self._start() + self._stop_block()
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": render_usage(self._usage),
        }
        out += _event(b"message_delta", delta)
        return out + _event(b"message_stop", {"type": "message_stop"})

    def _error(self, error_type: str, message: str) -> bytes:
        self._done = True
        payload = {"type": "error", "error": {"type": error_type, "message": message}}
        return _event(b"error", payload)
