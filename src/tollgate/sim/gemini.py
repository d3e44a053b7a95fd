"""Google Gemini API (AI Studio), simulated under ``/google``, for ``v1`` and ``v1beta``:
``models/{model}:generateContent``, ``:streamGenerateContent``, ``:countTokens``,
``:embedContent`` and ``:batchEmbedContents``.

Wire facts this module reproduces:

- Auth is ``x-goog-api-key`` or ``?key=``. As the real API does, a missing key is a 403
  ``PERMISSION_DENIED`` ("Method doesn't allow unregistered callers...") and ``sim-invalid-key`` is
  a 400 ``INVALID_ARGUMENT`` with reason ``API_KEY_INVALID`` (Google never answers 401 for keys).
- Errors are ``{"error": {"code", "message", "status"}}`` (gRPC status names); 429s carry a
  ``RetryInfo`` detail and a ``retry-after`` header.
- ``:streamGenerateContent?alt=sse`` streams ``data: {GenerateContentResponse}`` events; without
  ``alt=sse`` the same objects arrive as one JSON array written piece by piece.
- Request fields are accepted in camelCase (what the SDKs send) and snake_case.

Usage semantics (``usageMetadata``, what the gateway must bill):

- ``promptTokenCount`` INCLUDES ``cachedContentTokenCount`` (cached tokens are a discounted part
  of the prompt).
- ``candidatesTokenCount`` is the visible output; ``thoughtsTokenCount`` is reported BESIDE it and
  is billed as output. Thinking models are those whose name contains ``2.5`` or ``gemini-3``
  (except ``lite`` ones); ``thinkingConfig.thinkingBudget: 0`` turns thinking off, a positive
  budget caps it. ``maxOutputTokens`` caps thoughts plus visible output.
- ``totalTokenCount = promptTokenCount + candidatesTokenCount + thoughtsTokenCount``.
- Every stream chunk carries the CUMULATIVE ``usageMetadata`` so far; the last one is final.
- Embedding responses carry ``usageMetadata.promptTokenCount`` (the texts' tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollgate.sim import text as simtext
from tollgate.sim.controls import Controls
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
    stream_response,
)

VERSIONS = ("v1", "v1beta")
JSON_TYPE = "application/json; charset=UTF-8"
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "The request timed out. Please try again.",
}
_MISSING_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). Please use "
    "API Key or other form of API consumer identity to call this API."
)


def gemini_error(status: int, message: str, reason: str | None = None) -> SimError:
    """An error in Google's shape; ``reason`` adds a ``google.rpc.ErrorInfo`` detail."""
    error: JsonObject = {
        "code": status,
        "message": message,
        "status": _STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"),
    }
    if reason:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ]
    return SimError(status, {"error": error})


class _GeminiProvider(Provider):
    """Gemini's 429 also says when to retry, in a ``google.rpc.RetryInfo`` detail."""

    def simulated_error(self, status: int, controls: Controls) -> SimError:
        error = super().simulated_error(status, controls)
        if status == 429:
            error.body["error"]["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{controls.retry_after}s",
                }
            ]
        return error


def _check_auth(request: Request) -> None:
    key = header_key(request, "x-goog-api-key") or (request.query_params.get("key") or None)
    if key is None:
        raise gemini_error(403, _MISSING_KEY)
    if key == INVALID_KEY:
        raise gemini_error(
            400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"
        )


def _headers() -> dict[str, str]:
    return {"x-goog-request-id": new_id("", 32), "server-timing": "gfet4t7; dur=1"}


def _get(data: Any, camel: str, snake: str, default: Any = None) -> Any:
    """A field in camelCase or snake_case (the REST API accepts both)."""
    if not isinstance(data, dict):
        return default
    if camel in data:
        return data[camel]
    return data.get(snake, default)


def _parts_text(parts: Any) -> tuple[str, int]:
    texts: list[str] = []
    media = 0
    for part in parts or []:
        if "text" in part:
            texts.append(str(part["text"]))
        elif call := _get(part, "functionCall", "function_call"):
            texts.append(str(call.get("name", "")) + simtext.to_json(call.get("args", {})))
        elif result := _get(part, "functionResponse", "function_response"):
            texts.append(simtext.to_json(result.get("response", {})))
        else:
            media += 1
    return "\n".join(texts), media


def _last_user_text(body: JsonObject) -> str:
    contents = body.get("contents") or _get(
        body.get("generateContentRequest"), "contents", "contents"
    )
    if not isinstance(contents, list):
        return ""
    for content in reversed(contents):
        if isinstance(content, dict) and content.get("role", "user") == "user":
            parts = content.get("parts")
            if isinstance(parts, list):
                return "\n".join(
                    str(p["text"]) for p in parts if isinstance(p, dict) and "text" in p
                )
    return ""


PROVIDER = _GeminiProvider(
    name="google-ai-studio",
    error=gemini_error,
    check_auth=_check_auth,
    headers=_headers,
    prompt_of=_last_user_text,
    bad_json_message="Invalid JSON payload received. Unexpected token.",
    default_messages=_MESSAGES,
)


def is_thinking_model(model: str) -> bool:
    """Gemini 2.5 and 3 models think by default; the lite ones do not."""
    return ("2.5" in model or "gemini-3" in model) and "lite" not in model


def _check_version(call: Call) -> None:
    version = call.path_params.get("version")
    if version not in VERSIONS:
        raise gemini_error(404, f"API version {version} is not supported.")


def _turn(call: Call, body: JsonObject) -> Turn:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise gemini_error(400, "* GenerateContentRequest.contents: contents is not specified\n")
    texts: list[str] = []
    media = 0
    system = _get(body, "systemInstruction", "system_instruction")
    if system:
        texts.append(system if isinstance(system, str) else _parts_text(system.get("parts"))[0])
    for content in contents:
        text, parts = _parts_text(content.get("parts"))
        texts.append(text)
        media += parts
    last_parts = contents[-1].get("parts") or []
    results = [_get(p, "functionResponse", "function_response") for p in last_parts]
    results = [r for r in results if r]
    declarations = [
        declaration
        for tool in body.get("tools") or []
        for declaration in _get(tool, "functionDeclarations", "function_declarations", [])
    ]
    config = _get(body, "generationConfig", "generation_config", {})
    thinking = _get(config, "thinkingConfig", "thinking_config", {})
    budget = _get(thinking, "thinkingBudget", "thinking_budget")
    max_tokens = _get(config, "maxOutputTokens", "max_output_tokens")
    return Turn(
        model=call.model,
        prompt_tokens=simtext.prompt_tokens(texts, media_parts=media, tools=declarations),
        last_user_text=_last_user_text(body),
        last_is_tool_result=bool(results),
        tool_result_text=simtext.to_json(results[-1].get("response", {})) if results else "",
        tools=[ToolSpec(str(d["name"]), _schema_of(d)) for d in declarations],
        tool_choice=_tool_choice(body),
        max_output_tokens=int(max_tokens) if max_tokens is not None else None,
        reasoning=is_thinking_model(call.model) and budget != 0,
        reasoning_budget=int(budget) if budget is not None and int(budget) > 0 else None,
    )


def _schema_of(declaration: JsonObject) -> Any:
    return declaration.get("parameters") or _get(
        declaration, "parametersJsonSchema", "parameters_json_schema"
    )


def _tool_choice(body: JsonObject) -> str:
    config = _get(
        _get(body, "toolConfig", "tool_config", {}),
        "functionCallingConfig",
        "function_calling_config",
        {},
    )
    if str(config.get("mode", "")).upper() == "NONE":
        return "none"
    allowed = _get(config, "allowedFunctionNames", "allowed_function_names") or []
    return str(allowed[0]) if allowed else "auto"


def usage_metadata(usage: Usage, *, candidates: int | None = None) -> JsonObject:
    """``usageMetadata``: cached inside the prompt count, thoughts beside the candidates."""
    shown = usage.output_tokens if candidates is None else candidates
    data: JsonObject = {
        "promptTokenCount": usage.prompt_tokens,
        "candidatesTokenCount": shown,
        "totalTokenCount": usage.prompt_tokens + shown + usage.reasoning_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage.prompt_tokens}],
    }
    if usage.reasoning_tokens:
        data["thoughtsTokenCount"] = usage.reasoning_tokens
    if usage.cached_tokens:
        data["cachedContentTokenCount"] = usage.cached_tokens
        data["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": usage.cached_tokens}]
    return data


def _finish_reason(reply: Reply) -> str:
    return "MAX_TOKENS" if reply.truncated else "STOP"


def _chunk(
    reply: Reply,
    response_id: str,
    parts: list[JsonObject],
    *,
    final: bool,
    candidates: int | None = None,
) -> JsonObject:
    content: JsonObject = {"role": "model"}
    if parts:
        content = {"parts": parts, "role": "model"}
    candidate: JsonObject = {"content": content, "index": 0}
    if final:
        candidate["finishReason"] = _finish_reason(reply)
    return {
        "candidates": [candidate],
        "usageMetadata": usage_metadata(reply.usage, candidates=candidates),
        "modelVersion": reply.model,
        "responseId": response_id,
    }


def _reply_parts(reply: Reply) -> list[JsonObject]:
    if reply.tool_calls:
        return [{"functionCall": {"name": c.name, "args": c.input}} for c in reply.tool_calls]
    return [{"text": reply.text}] if reply.text else []


async def generate_content(call: Call) -> Response:
    """``POST /google/{version}/models/{model}:generateContent``."""
    _check_version(call)
    reply = generate(_turn(call, call.body), call.controls)
    response_id = new_id("", 22)
    return reply_json(
        call,
        _chunk(reply, response_id, _reply_parts(reply), final=True),
        headers={"content-type": JSON_TYPE},
    )


def _stream_chunks(reply: Reply, response_id: str, chunks: int | None) -> list[JsonObject]:
    if reply.tool_calls or not reply.text:
        return [_chunk(reply, response_id, _reply_parts(reply), final=True)]
    pieces = simtext.split_chunks(reply.text, chunks)
    out = []
    sent = ""
    for index, piece in enumerate(pieces):
        sent += piece
        final = index == len(pieces) - 1
        out.append(
            _chunk(
                reply,
                response_id,
                [{"text": piece}],
                final=final,
                candidates=reply.usage.output_tokens if final else simtext.count_tokens(sent),
            )
        )
    return out


async def stream_generate_content(call: Call) -> Response:
    """``POST .../models/{model}:streamGenerateContent``: SSE with ``?alt=sse``, else a JSON
    array streamed element by element."""
    _check_version(call)
    reply = generate(_turn(call, call.body), call.controls)
    chunks = _stream_chunks(reply, new_id("", 22), call.controls.chunks)
    if call.request.query_params.get("alt") == "sse":
        frames = [b"data: " + simtext.to_json(c).encode() + b"\r\n\r\n" for c in chunks]
        return stream_response(call, frames)
    frames = []
    for index, chunk in enumerate(chunks):
        prefix = b"[" if index == 0 else b",\r\n"
        suffix = b"]" if index == len(chunks) - 1 else b"\n"
        frames.append(prefix + simtext.to_json(chunk).encode() + suffix)
    return stream_response(call, frames, media_type=JSON_TYPE)


async def count_tokens(call: Call) -> Response:
    """``POST .../models/{model}:countTokens`` with ``contents`` or a ``generateContentRequest``."""
    _check_version(call)
    body = _get(call.body, "generateContentRequest", "generate_content_request") or call.body
    total = _turn(call, body).prompt_tokens
    return json_response(
        {"totalTokens": total, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]},
        headers={"content-type": JSON_TYPE},
    )


def _embedding(model: str, request: JsonObject) -> tuple[JsonObject, int]:
    text, _ = _parts_text((request.get("content") or {}).get("parts"))
    default = 3072 if "gemini-embedding" in model else 768
    dimensions = int(_get(request, "outputDimensionality", "output_dimensionality") or default)
    return {"values": simtext.embedding_vector(text, dimensions)}, simtext.count_tokens(text)


async def embed_content(call: Call) -> Response:
    """``POST .../models/{model}:embedContent`` -> ``{"embedding": {"values": [...]}}``."""
    _check_version(call)
    if not call.body.get("content"):
        raise gemini_error(400, "* EmbedContentRequest.content: content is not specified\n")
    embedding, tokens = _embedding(call.model, call.body)
    return reply_json(
        call,
        {"embedding": embedding, "usageMetadata": _embed_usage(tokens)},
        headers={"content-type": JSON_TYPE},
    )


async def batch_embed_contents(call: Call) -> Response:
    """``POST .../models/{model}:batchEmbedContents`` -> ``{"embeddings": [{"values"}...]}``."""
    _check_version(call)
    requests = call.body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise gemini_error(400, "* BatchEmbedContentsRequest.requests: requests is not specified\n")
    results = [_embedding(call.model, request) for request in requests]
    tokens = sum(count for _, count in results)
    return reply_json(
        call,
        {"embeddings": [e for e, _ in results], "usageMetadata": _embed_usage(tokens)},
        headers={"content-type": JSON_TYPE},
    )


def _embed_usage(tokens: int) -> JsonObject:
    return {"promptTokenCount": tokens, "totalTokenCount": tokens}


def routes(prefix: str = "/google") -> Sequence[Route]:
    """The Gemini routes under ``prefix`` (``{version}`` is ``v1`` or ``v1beta``)."""
    methods = {
        "generateContent": generate_content,
        "streamGenerateContent": stream_generate_content,
        "countTokens": count_tokens,
        "embedContent": embed_content,
        "batchEmbedContents": batch_embed_contents,
    }
    return [
        Route(
            f"{prefix}/{{version}}/models/{{model}}:{name}",
            endpoint(PROVIDER, handler, model_param="model"),
            methods=["POST"],
        )
        for name, handler in methods.items()
    ]
