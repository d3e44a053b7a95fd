"""OpenAI, simulated: Chat Completions, Embeddings and Models under ``/openai/v1``
(the Responses API lives in ``openai_responses.py``, auth and errors in ``openai_common.py``).

Streams are ``data: {chunk}`` SSE lines ending with ``data: [DONE]``: a first chunk with the role,
content deltas (or, for tool calls, a delta with each call's id and name followed by
``delta.tool_calls[i].function.arguments`` pieces), a chunk with ``finish_reason``, then the usage
chunk when asked for.

Usage semantics (what the gateway must bill):

- ``prompt_tokens`` INCLUDES ``prompt_tokens_details.cached_tokens`` (cached tokens are a discounted
  subset of the prompt, not extra).
- ``completion_tokens`` INCLUDES ``completion_tokens_details.reasoning_tokens``; reasoning is
  non-zero for reasoning models (names ``o1``, ``o3``, ``o4-mini``..., or starting ``gpt-5``) unless
  ``reasoning_effort`` is ``"none"``. ``max_completion_tokens`` (or legacy ``max_tokens``) caps
  reasoning plus visible output together.
- When streaming, usage is sent only if ``stream_options.include_usage`` is true, in one last chunk
  with ``"choices": []``; the other chunks then carry ``"usage": null``. Otherwise the stream
  has no usage at all.

Perplexity (``perplexity-ai`` is served here) adds fields at the top level of ``usage``; the
simulator adds each one only when asked, so every other vendor's usage stays plain OpenAI:

- ``search_context_size`` (``"low"`` / ``"medium"`` / ``"high"``): ``x-sim-search-context``, else
  the request's ``web_search_options.search_context_size`` echoed back, as Perplexity does (an
  unknown size there is a 400 ``invalid_value`` with ``param`` naming the field);
- ``citation_tokens``: ``x-sim-citation-tokens``; they are BESIDE ``prompt_tokens`` and not in
  ``total_tokens`` (Perplexity bills them at their own rate);
- ``num_search_queries``: ``x-sim-search-queries``.

They appear wherever the usage object does (the response body, the final stream chunk).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from tollgate.sim import openai_responses
from tollgate.sim import text as simtext
from tollgate.sim.controls import SEARCH_CONTEXT_SIZES
from tollgate.sim.engine import Reply, ToolSpec, Turn, Usage, generate, new_id
from tollgate.sim.http import (
    Call,
    JsonObject,
    SimError,
    elapsed_ms,
    endpoint,
    json_response,
    reply_json,
    sse_event,
    stream_response,
)
from tollgate.sim.openai_common import (
    ARGUMENT_CHUNKS,
    CREATED,
    MODELS,
    PROVIDER,
    SYSTEM_FINGERPRINT,
    is_reasoning_model,
    last_user_text,
    message_text,
    openai_error,
    require_model,
    tool_choice,
)


def _chat_turn(call: Call) -> Turn:
    body = call.body
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise openai_error(
            400, "Missing required parameter: 'messages'.", "missing_required_parameter"
        )
    texts: list[str] = []
    media = 0
    for message in messages:
        content_text, parts = message_text(message.get("content"))
        if message.get("tool_calls"):
            content_text += simtext.to_json(message["tool_calls"])
        texts.append(content_text)
        media += parts
    tools = [
        ToolSpec(str(tool["function"]["name"]), tool["function"].get("parameters"))
        for tool in body.get("tools") or []
        if tool.get("type") == "function"
    ]
    last = messages[-1]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return Turn(
        model=call.model,
        prompt_tokens=simtext.prompt_tokens(
            texts, media_parts=media, tools=body.get("tools") or []
        ),
        last_user_text=last_user_text(body),
        last_is_tool_result=last.get("role") in ("tool", "function"),
        tool_result_text=message_text(last.get("content"))[0],
        tools=tools,
        tool_choice=tool_choice(body.get("tool_choice")),
        max_output_tokens=int(max_tokens) if max_tokens is not None else None,
        reasoning=is_reasoning_model(call.model, body.get("reasoning_effort")),
    )


def _finish_reason(reply: Reply) -> str:
    if reply.tool_calls:
        return "tool_calls"
    return "length" if reply.truncated else "stop"


def _chat_message(reply: Reply) -> JsonObject:
    message: JsonObject = {
        "role": "assistant",
        "content": reply.text if not reply.tool_calls else None,
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": "call_" + call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in reply.tool_calls
        ]
    return message


def _search_context_size(call: Call) -> str | None:
    """The ``search_context_size`` to report: the control, else the request's
    ``web_search_options.search_context_size`` (validated even when the control overrides it)."""
    options = call.body.get("web_search_options")
    requested = None
    if options is not None:
        if not isinstance(options, dict):
            raise _invalid_param(
                "web_search_options",
                "Invalid type for 'web_search_options': expected an object.",
                "invalid_type",
            )
        requested = options.get("search_context_size")
        if requested is not None and requested not in SEARCH_CONTEXT_SIZES:
            raise _invalid_param(
                "web_search_options.search_context_size",
                f"Invalid value: {requested!r}. Supported values are: 'low', 'medium', and 'high'.",
                "invalid_value",
            )
    return call.controls.search_context or requested


def _invalid_param(param: str, message: str, code: str) -> SimError:
    error = openai_error(400, message, code)
    error.body["error"]["param"] = param
    return error


def search_usage(call: Call) -> JsonObject:
    """Perplexity's extra usage fields the request asked for (see the module docstring); empty
    when none was asked for, so the usage object stays plain OpenAI."""
    extras: JsonObject = {}
    context = _search_context_size(call)
    if context is not None:
        extras["search_context_size"] = context
    if call.controls.citation_tokens is not None:
        extras["citation_tokens"] = call.controls.citation_tokens
    if call.controls.search_queries is not None:
        extras["num_search_queries"] = call.controls.search_queries
    return extras


async def chat_completions(call: Call) -> Response:
    """``POST /openai/v1/chat/completions``."""
    require_model(call)
    extras = search_usage(call)
    reply = generate(_chat_turn(call), call.controls)
    completion_id = new_id("chatcmpl-", 29)
    created = int(time.time())
    headers = {"openai-processing-ms": elapsed_ms(call)}
    if call.body.get("stream"):
        options = call.body.get("stream_options") or {}
        usage = chat_usage(reply.usage, extras) if options.get("include_usage") else None
        frames = _chat_stream(reply, completion_id, created, usage, call.controls.chunks)
        return stream_response(call, frames, headers=headers)
    return reply_json(
        call,
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": reply.model,
            "choices": [
                {
                    "index": 0,
                    "message": _chat_message(reply),
                    "logprobs": None,
                    "finish_reason": _finish_reason(reply),
                }
            ],
            "usage": chat_usage(reply.usage, extras),
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        },
        headers=headers,
    )


def _chat_stream(
    reply: Reply, completion_id: str, created: int, usage: JsonObject | None, chunks: int | None
) -> list[bytes]:
    """The SSE frames of a streamed chat completion (see the module docstring for the order);
    ``usage`` is the final chunk's usage, ``None`` when ``include_usage`` was not asked for."""
    include_usage = usage is not None

    def chunk(delta: JsonObject, finish: str | None = None) -> bytes:
        data: JsonObject = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": reply.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            data["usage"] = None
        return sse_event(data)

    frames = [
        chunk({"role": "assistant", "content": None if reply.tool_calls else "", "refusal": None})
    ]
    if reply.tool_calls:
        for index, tool_call in enumerate(reply.tool_calls):
            frames.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": "call_" + tool_call.id,
                                "type": "function",
                                "function": {"name": tool_call.name, "arguments": ""},
                            }
                        ]
                    }
                )
            )
            for piece in simtext.split_chunks(tool_call.arguments, chunks or ARGUMENT_CHUNKS):
                frames.append(
                    chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                )
    else:
        frames.extend(
            chunk({"content": piece}) for piece in simtext.split_chunks(reply.text, chunks)
        )
    frames.append(chunk({}, _finish_reason(reply)))
    if include_usage:
        frames.append(
            sse_event(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": reply.model,
                    "service_tier": "default",
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": [],
                    "usage": usage,
                }
            )
        )
    frames.append(b"data: [DONE]\n\n")
    return frames


def _embedding_inputs(value: Any) -> list[tuple[str, int]]:
    """Each input as (text to embed, its token count); token arrays count one token per id."""
    if isinstance(value, str):
        return [(value, simtext.count_tokens(value))]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [(simtext.to_json(value), len(value))]
    if isinstance(value, list) and value:
        return [_embedding_inputs(item)[0] for item in value]
    raise openai_error(400, "'$.input' is invalid. Please check the API reference.", None)


async def embeddings(call: Call) -> Response:
    """``POST /openai/v1/embeddings``: deterministic unit vectors; usage has prompt tokens only.

    The official SDK asks for ``encoding_format=base64`` by default (little-endian float32)."""
    require_model(call)
    inputs = _embedding_inputs(call.body.get("input"))
    default = 3072 if call.model.endswith("-large") else 1536
    dimensions = int(call.body.get("dimensions") or default)
    as_base64 = call.body.get("encoding_format") == "base64"
    data = []
    for index, (content, _) in enumerate(inputs):
        vector = simtext.embedding_vector(content, dimensions)
        encoded: Any = (
            base64.b64encode(simtext.pack_float32(vector)).decode() if as_base64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(count for _, count in inputs)
    return reply_json(
        call,
        {
            "object": "list",
            "data": data,
            "model": call.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        headers={"openai-processing-ms": elapsed_ms(call)},
    )


def _model_object(model: str) -> JsonObject:
    return {"id": model, "object": "model", "created": CREATED, "owned_by": "system"}


async def list_models(call: Call) -> Response:
    """``GET /openai/v1/models``."""
    return json_response({"object": "list", "data": [_model_object(m) for m in MODELS]})


async def retrieve_model(call: Call) -> Response:
    """``GET /openai/v1/models/{model}``: any model name exists in the simulator."""
    return json_response(_model_object(call.model))


def chat_usage(usage: Usage, extras: Mapping[str, Any] | None = None) -> JsonObject:
    """Chat Completions usage: cached inside prompt_tokens, reasoning inside completion_tokens;
    ``extras`` (Perplexity's fields, from ``search_usage``) are added at the top level."""
    completion = usage.output_tokens + usage.reasoning_tokens
    data: JsonObject = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": usage.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    data.update(extras or {})
    return data


def routes(prefix: str = "/openai/v1") -> Sequence[Route]:
    """The OpenAI routes (Responses API included) under ``prefix``."""
    return [
        Route(f"{prefix}/chat/completions", endpoint(PROVIDER, chat_completions), methods=["POST"]),
        Route(f"{prefix}/responses", endpoint(PROVIDER, openai_responses.create), methods=["POST"]),
        Route(f"{prefix}/embeddings", endpoint(PROVIDER, embeddings), methods=["POST"]),
        Route(f"{prefix}/models", endpoint(PROVIDER, list_models), methods=["GET"]),
        Route(
            f"{prefix}/models/{{model}}",
            endpoint(PROVIDER, retrieve_model, model_param="model"),
            methods=["GET"],
        ),
    ]
