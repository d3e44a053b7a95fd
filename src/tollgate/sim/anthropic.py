"""Anthropic Messages API, simulated under ``/anthropic``: ``POST /v1/messages`` and
``POST /v1/messages/count_tokens``.

Wire facts this module reproduces:

- Auth is ``x-api-key`` (``Authorization: Bearer`` is accepted too, as for OAuth tokens). Missing
  -> 401 ``authentication_error`` "x-api-key header is required"; ``sim-invalid-key`` -> 401
  "invalid x-api-key". The ``anthropic-version`` header is required: without it, or with a value
  that is not a date (a duplicated header arrives as ``"2023-06-01, 2023-06-01"``), 400
  ``invalid_request_error``.
- ``model``, ``messages`` and ``max_tokens`` are required (400 ``invalid_request_error``).
- Errors are ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with the type
  following the status (429 ``rate_limit_error`` + ``retry-after``, 529 ``overloaded_error``...).
- Responses carry ``request-id`` and ``anthropic-ratelimit-*`` headers.
- Streams are named SSE events: ``message_start``, ``ping``, per block ``content_block_start`` /
  ``content_block_delta`` (``text_delta``, ``input_json_delta``, ``thinking_delta``,
  ``signature_delta``) / ``content_block_stop``, then ``message_delta`` and ``message_stop``.
- With ``thinking: {"type": "enabled", "budget_tokens": N}`` (or ``"adaptive"``) the reply starts
  with a ``thinking`` block.

Usage semantics (what the gateway must bill):

- ``input_tokens`` EXCLUDES cache reads and writes: ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens`` are reported BESIDE it, so the prompt is the sum of the three.
  Cache reads happen (by the engine's rule) only when the request carries a ``cache_control``
  marker; cache writes only through ``x-sim-cache-write-tokens`` / ``x-sim-cache-write-1h-tokens``.
- ``cache_creation_input_tokens`` is the TOTAL written; ``cache_creation`` splits it by TTL:
  ``ephemeral_1h_input_tokens`` (``x-sim-cache-write-1h-tokens``, capped at the total) plus
  ``ephemeral_5m_input_tokens`` (the rest), so the two always sum to the total. Given alone,
  ``x-sim-cache-write-1h-tokens`` is the total too (every write is a 1-hour write).
- ``output_tokens`` includes thinking tokens (there is no separate count).
- Streaming: ``message_start`` carries the input usage (all three input fields and the
  ``cache_creation`` split) and ``output_tokens: 1``; ``message_delta`` carries the final
  CUMULATIVE ``output_tokens`` only (as in Anthropic's documented example; its usage type has no
  ``cache_creation`` split anyway), so the input side must be remembered from ``message_start``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollgate.sim import text as simtext
from tollgate.sim.engine import Reply, ToolSpec, Turn, Usage, generate, new_id
from tollgate.sim.http import (
    INVALID_KEY,
    Call,
    JsonObject,
    Provider,
    SimError,
    endpoint,
    header_key,
    json_response,
    reply_json,
    sse_event,
    stream_response,
)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MESSAGES = {
    400: "The simulated upstream rejected this request as invalid.",
    401: "invalid x-api-key",
    403: "Your API key does not have permission to use the specified resource.",
    404: "The requested resource could not be found.",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "Number of request tokens has exceeded your per-minute rate limit "
    "(https://docs.claude.com/en/api/rate-limits); see the response headers for current usage. "
    "Please reduce the prompt length or the maximum tokens requested, or try again later.",
    500: "Internal server error",
    504: "Request timed out",
    529: "Overloaded",
}
# Versions are dates; the SDK's own default moves with each release, so only the shape is checked.
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")
# Thinking text streams in this many pieces unless x-sim-chunks says otherwise.
THINKING_CHUNKS = 2
ARGUMENT_CHUNKS = 3


def anthropic_error(status: int, message: str, detail: str | None = None) -> SimError:
    """An error in Anthropic's shape, its ``error.type`` chosen by the status."""
    kind = (
        detail
        or _ERROR_TYPES.get(status)
        or ("api_error" if status >= 500 else "invalid_request_error")
    )
    return SimError(
        status,
        {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": new_id("req_", 24),
        },
    )


def _check_auth(request: Request) -> None:
    key = header_key(request, "x-api-key")
    if key is None:
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        key = token.strip() or None if scheme.lower() == "bearer" else None
    if key is None:
        raise anthropic_error(401, "x-api-key header is required")
    if key == INVALID_KEY:
        raise anthropic_error(401, "invalid x-api-key")
    # A repeated header reaches the API as one comma-joined value.
    version = ", ".join(request.headers.getlist("anthropic-version")).strip()
    if not version:
        raise anthropic_error(400, "anthropic-version: header is required")
    if not _API_VERSION.fullmatch(version):
        # Catches proxies that duplicate the header ("2023-06-01, 2023-06-01"), as the API does.
        raise anthropic_error(400, f'anthropic-version: "{version}" is not a valid version')


def _headers() -> dict[str, str]:
    return {
        "request-id": new_id("req_", 24),
        "anthropic-ratelimit-requests-limit": "4000",
        "anthropic-ratelimit-requests-remaining": "3999",
        "anthropic-ratelimit-tokens-limit": "2000000",
        "anthropic-ratelimit-tokens-remaining": "1999000",
    }


def _block_text(content: Any) -> tuple[str, int]:
    """The text of a ``content`` (string or blocks) and its count of media blocks."""
    if isinstance(content, str):
        return content, 0
    texts: list[str] = []
    media = 0
    for block in content or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            texts.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            texts.append(str(block.get("name", "")) + simtext.to_json(block.get("input", {})))
        elif kind == "tool_result":
            inner, inner_media = _block_text(block.get("content") or "")
            texts.append(inner)
            media += inner_media
        else:
            media += 1
    return "\n".join(texts), media


def _last_user_text(body: JsonObject) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [
                b.get("text", "")
                for b in content
                if isinstance(b, dict) and b.get("type") == "text"
            ]
            return "\n".join(str(t) for t in texts)
    return ""


PROVIDER = Provider(
    name="anthropic",
    error=anthropic_error,
    check_auth=_check_auth,
    headers=_headers,
    prompt_of=_last_user_text,
    bad_json_message="There was an error parsing the body of your request as JSON.",
    default_messages=_MESSAGES,
)


def _has_cache_control(value: Any) -> bool:
    if isinstance(value, dict):
        return "cache_control" in value or any(_has_cache_control(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_cache_control(v) for v in value)
    return False


def _require(call: Call, *fields: str) -> None:
    for name in fields:
        if call.body.get(name) is None or (name == "model" and not call.model):
            raise anthropic_error(400, f"{name}: Field required")


def _turn(call: Call) -> Turn:
    body = call.body
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise anthropic_error(400, "messages: at least one message is required")
    texts: list[str] = []
    media = 0
    if body.get("system"):
        texts.append(_block_text(body["system"])[0])
    for message in messages:
        content, parts = _block_text(message.get("content"))
        texts.append(content)
        media += parts
    last_content = messages[-1].get("content")
    results = [
        b
        for b in (last_content if isinstance(last_content, list) else [])
        if isinstance(b, dict) and b.get("type") == "tool_result"
    ]
    tools = [
        ToolSpec(str(tool["name"]), tool.get("input_schema"))
        for tool in body.get("tools") or []
        if "input_schema" in tool
    ]
    thinking = body.get("thinking") or {}
    budget = thinking.get("budget_tokens")
    return Turn(
        model=call.model,
        prompt_tokens=simtext.prompt_tokens(
            texts, media_parts=media, tools=body.get("tools") or []
        ),
        last_user_text=_last_user_text(body),
        last_is_tool_result=messages[-1].get("role") == "user" and bool(results),
        tool_result_text=_block_text(results[-1].get("content") or "")[0] if results else "",
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice")),
        max_output_tokens=int(body["max_tokens"]),
        reasoning=thinking.get("type") in ("enabled", "adaptive"),
        reasoning_budget=int(budget) if budget is not None else None,
        cache_eligible=_has_cache_control(body),
    )


def _tool_choice(choice: Any) -> str:
    if not isinstance(choice, dict):
        return "auto"
    if choice.get("type") == "none":
        return "none"
    if choice.get("type") == "tool":
        return str(choice.get("name") or "auto")
    return "auto"


def anthropic_usage(usage: Usage, *, output_tokens: int | None = None) -> JsonObject:
    """Messages usage: cache reads and writes BESIDE ``input_tokens``, thinking inside output;
    ``cache_creation`` splits the writes (``cache_creation_input_tokens``) into 5m + 1h."""
    return {
        "input_tokens": usage.uncached_prompt_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_5m_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
        },
        "output_tokens": (
            usage.output_tokens + usage.reasoning_tokens if output_tokens is None else output_tokens
        ),
        "service_tier": "standard",
    }


def _stop_reason(reply: Reply) -> str:
    if reply.tool_calls:
        return "tool_use"
    return "max_tokens" if reply.truncated else "end_turn"


def _thinking_block(reply: Reply) -> JsonObject:
    return {
        "type": "thinking",
        "thinking": simtext.reasoning_text(reply.usage.reasoning_tokens),
        "signature": "sim-signature-" + str(reply.usage.reasoning_tokens),
    }


def _content(reply: Reply) -> list[JsonObject]:
    blocks = [_thinking_block(reply)] if reply.usage.reasoning_tokens else []
    if reply.tool_calls:
        blocks += [
            {"type": "tool_use", "id": "toolu_" + c.id, "name": c.name, "input": c.input}
            for c in reply.tool_calls
        ]
    else:
        blocks.append({"type": "text", "text": reply.text})
    return blocks


def _message(reply: Reply, message_id: str, *, final: bool) -> JsonObject:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": _content(reply) if final else [],
        "stop_reason": _stop_reason(reply) if final else None,
        "stop_sequence": None,
        "usage": anthropic_usage(reply.usage, output_tokens=None if final else 1),
    }


async def messages(call: Call) -> Response:
    """``POST /anthropic/v1/messages``, streamed when ``stream`` is true."""
    _require(call, "model", "messages", "max_tokens")
    reply = generate(_turn(call), call.controls)
    message_id = new_id("msg_", 24)
    if call.body.get("stream"):
        return stream_response(call, _stream(reply, message_id, call.controls.chunks))
    return reply_json(call, _message(reply, message_id, final=True))


def _stream(reply: Reply, message_id: str, chunks: int | None) -> list[bytes]:
    """The named SSE events of a streamed message (order in the module docstring)."""
    events: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append(sse_event({"type": kind, **fields}, kind))

    emit("message_start", message=_message(reply, message_id, final=False))
    emit("ping")
    for index, block in enumerate(_content(reply)):
        start, deltas = _block_stream(block, chunks)
        emit("content_block_start", index=index, content_block=start)
        for delta in deltas:
            emit("content_block_delta", index=index, delta=delta)
        emit("content_block_stop", index=index)
    emit(
        "message_delta",
        delta={"stop_reason": _stop_reason(reply), "stop_sequence": None},
        usage={"output_tokens": reply.usage.output_tokens + reply.usage.reasoning_tokens},
    )
    emit("message_stop")
    return events


def _block_stream(block: JsonObject, chunks: int | None) -> tuple[JsonObject, list[JsonObject]]:
    """A content block as streamed: its empty form for ``content_block_start``, then its deltas."""
    if block["type"] == "thinking":
        pieces = simtext.split_chunks(block["thinking"], chunks or THINKING_CHUNKS)
        deltas = [{"type": "thinking_delta", "thinking": piece} for piece in pieces]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
        return {**block, "thinking": "", "signature": ""}, deltas
    if block["type"] == "tool_use":
        # Anthropic opens every tool input with an empty partial_json.
        pieces = [""] + simtext.split_chunks(
            simtext.to_json(block["input"]), chunks or ARGUMENT_CHUNKS
        )
        return {**block, "input": {}}, [
            {"type": "input_json_delta", "partial_json": piece} for piece in pieces
        ]
    pieces = simtext.split_chunks(block["text"], chunks)
    return {"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces]


async def count_tokens(call: Call) -> Response:
    """``POST /anthropic/v1/messages/count_tokens``: ``{"input_tokens": N}``, the whole prompt."""
    _require(call, "model", "messages")
    body = {**call.body, "max_tokens": 1}
    turn = _turn(Call(call.request, body, call.controls, call.model, call.started))
    return json_response({"input_tokens": turn.prompt_tokens})


def routes(prefix: str = "/anthropic") -> Sequence[Route]:
    """The Anthropic routes under ``prefix``."""
    return [
        Route(f"{prefix}/v1/messages", endpoint(PROVIDER, messages), methods=["POST"]),
        Route(
            f"{prefix}/v1/messages/count_tokens",
            endpoint(PROVIDER, count_tokens),
            methods=["POST"],
        ),
    ]
