"""OpenAI Responses API, simulated: ``POST /openai/v1/responses``.

Wire facts: the body is a ``response`` object whose ``output`` holds items (``reasoning`` for
reasoning models, then a ``message`` with ``output_text`` content, or ``function_call`` items).
A capped answer has ``status: "incomplete"`` and ``incomplete_details.reason:
"max_output_tokens"``. Streams are named SSE events (``event: response.created``...), each with a
growing ``sequence_number``: ``response.created``, ``response.in_progress``, per item
``response.output_item.added`` ... ``response.output_text.delta`` /
``response.function_call_arguments.delta`` ... ``response.output_item.done``, and finally
``response.completed`` (or ``response.incomplete``) carrying the full response with usage.
There is no ``[DONE]`` sentinel.

Usage semantics: ``input_tokens`` INCLUDES ``input_tokens_details.cached_tokens``;
``output_tokens`` INCLUDES ``output_tokens_details.reasoning_tokens``; ``max_output_tokens`` caps
both reasoning and visible output. Usage is always present on the final response, streamed or not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.responses import Response

from tollgate.sim import text as simtext
from tollgate.sim.engine import Reply, ToolSpec, Turn, Usage, generate, new_id
from tollgate.sim.http import (
    Call,
    JsonObject,
    elapsed_ms,
    reply_json,
    sse_event,
    stream_response,
)
from tollgate.sim.openai_common import (
    ARGUMENT_CHUNKS,
    is_reasoning_model,
    last_user_text,
    message_text,
    openai_error,
    require_model,
    tool_choice,
)


def _turn(call: Call) -> Turn:
    body = call.body
    items: Any = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise openai_error(
            400, "Missing required parameter: 'input'.", "missing_required_parameter"
        )
    texts = [str(body["instructions"])] if body.get("instructions") else []
    media = 0
    for item in items:
        kind = item.get("type", "message")
        if kind == "function_call_output":
            output = item.get("output")
            texts.append(output if isinstance(output, str) else simtext.to_json(output))
        elif kind == "function_call":
            texts.append(str(item.get("name", "")) + str(item.get("arguments", "")))
        elif kind == "message":
            content, parts = message_text(item.get("content"))
            texts.append(content)
            media += parts
    last = items[-1]
    last_output = last.get("output") if last.get("type") == "function_call_output" else ""
    tools = [
        ToolSpec(str(tool["name"]), tool.get("parameters"))
        for tool in body.get("tools") or []
        if tool.get("type") == "function"
    ]
    reasoning = body.get("reasoning") or {}
    max_tokens = body.get("max_output_tokens")
    return Turn(
        model=call.model,
        prompt_tokens=simtext.prompt_tokens(
            texts, media_parts=media, tools=body.get("tools") or []
        ),
        last_user_text=last_user_text(body),
        last_is_tool_result=last.get("type") == "function_call_output",
        tool_result_text=last_output
        if isinstance(last_output, str)
        else simtext.to_json(last_output),
        tools=tools,
        tool_choice=tool_choice(body.get("tool_choice")),
        max_output_tokens=int(max_tokens) if max_tokens is not None else None,
        reasoning=is_reasoning_model(call.model, reasoning.get("effort")),
    )


def responses_usage(usage: Usage) -> JsonObject:
    """Responses usage: cached inside input_tokens, reasoning inside output_tokens."""
    output = usage.output_tokens + usage.reasoning_tokens
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens + output,
    }


class _Items:
    """The output items of one reply, with stable ids shared by the stream and the final object."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.reasoning_id = new_id("rs_", 48) if reply.usage.reasoning_tokens else None
        self.message_id = new_id("msg_", 48)
        self.call_ids = [(new_id("fc_", 48), "call_" + call.id) for call in reply.tool_calls]

    @property
    def status(self) -> str:
        return "incomplete" if self.reply.truncated else "completed"

    def reasoning(self) -> JsonObject:
        return {"id": self.reasoning_id, "type": "reasoning", "summary": []}

    def text_part(self, text: str) -> JsonObject:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def message(self, *, done: bool) -> JsonObject:
        return {
            "id": self.message_id,
            "type": "message",
            "status": self.status if done else "in_progress",
            "role": "assistant",
            "content": [self.text_part(self.reply.text)] if done else [],
        }

    def function_call(self, index: int, *, done: bool) -> JsonObject:
        call = self.reply.tool_calls[index]
        item_id, call_id = self.call_ids[index]
        return {
            "id": item_id,
            "type": "function_call",
            "status": "completed" if done else "in_progress",
            "arguments": call.arguments if done else "",
            "call_id": call_id,
            "name": call.name,
        }

    def output(self) -> list[JsonObject]:
        items = [self.reasoning()] if self.reasoning_id else []
        if self.reply.tool_calls:
            items += [self.function_call(i, done=True) for i in range(len(self.reply.tool_calls))]
        else:
            items.append(self.message(done=True))
        return items


def _response_object(
    call: Call, items: _Items, response_id: str, created: int, *, final: bool
) -> JsonObject:
    body = call.body
    reply = items.reply
    status = items.status if final else "in_progress"
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"}
        if final and reply.truncated
        else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": reply.model,
        "output": items.output() if final else [],
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "service_tier": "default",
        "store": bool(body.get("store", True)),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": responses_usage(reply.usage) if final else None,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


async def create(call: Call) -> Response:
    """``POST /openai/v1/responses``, streamed when ``stream`` is true."""
    require_model(call)
    reply = generate(_turn(call), call.controls)
    items = _Items(reply)
    response_id = new_id("resp_", 48)
    created = int(time.time())
    headers = {"openai-processing-ms": elapsed_ms(call)}
    if call.body.get("stream"):
        frames = _stream(call, items, response_id, created)
        return stream_response(call, frames, headers=headers)
    return reply_json(
        call, _response_object(call, items, response_id, created, final=True), headers=headers
    )


def _stream(call: Call, items: _Items, response_id: str, created: int) -> list[bytes]:
    """The named SSE events of a streamed response, numbered by ``sequence_number``."""
    events: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append(sse_event({"type": kind, "sequence_number": len(events), **fields}, kind))

    snapshot = _response_object(call, items, response_id, created, final=False)
    emit("response.created", response=snapshot)
    emit("response.in_progress", response=snapshot)
    index = 0
    if items.reasoning_id:
        emit("response.output_item.added", output_index=index, item=items.reasoning())
        emit("response.output_item.done", output_index=index, item=items.reasoning())
        index += 1
    chunks = call.controls.chunks
    if items.reply.tool_calls:
        for number, tool_call in enumerate(items.reply.tool_calls):
            item_id = items.call_ids[number][0]
            emit(
                "response.output_item.added",
                output_index=index,
                item=items.function_call(number, done=False),
            )
            for piece in simtext.split_chunks(tool_call.arguments, chunks or ARGUMENT_CHUNKS):
                emit(
                    "response.function_call_arguments.delta",
                    item_id=item_id,
                    output_index=index,
                    delta=piece,
                )
            emit(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                name=tool_call.name,
                arguments=tool_call.arguments,
            )
            emit(
                "response.output_item.done",
                output_index=index,
                item=items.function_call(number, done=True),
            )
            index += 1
    else:
        _emit_message(emit, items, index, chunks)
    final = _response_object(call, items, response_id, created, final=True)
    kind = "response.incomplete" if items.reply.truncated else "response.completed"
    emit(kind, response=final)
    return events


def _emit_message(emit: Callable[..., None], items: _Items, index: int, chunks: int | None) -> None:
    text = items.reply.text
    where = {"item_id": items.message_id, "output_index": index, "content_index": 0}
    emit("response.output_item.added", output_index=index, item=items.message(done=False))
    emit("response.content_part.added", **where, part=items.text_part(""))
    for piece in simtext.split_chunks(text, chunks):
        emit("response.output_text.delta", **where, delta=piece, logprobs=[])
    emit("response.output_text.done", **where, text=text, logprobs=[])
    emit("response.content_part.done", **where, part=items.text_part(text))
    emit("response.output_item.done", output_index=index, item=items.message(done=True))
