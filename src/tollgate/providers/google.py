"""Google AI Studio (Gemini API) as an upstream: `generateContent` / `streamGenerateContent`.

Docs: https://ai.google.dev/api/generate-content, .../gemini-api/docs/function-calling,
.../gemini-api/docs/thinking, .../gemini-api/docs/thought-signatures,
.../gemini-api/docs/structured-output

Quirks this adapter encodes:

- `POST {version}/models/{model}:generateContent`, or `:streamGenerateContent` with `alt=sse`
  (without it the stream is one JSON array). The model is part of the PATH, so it is checked
  against a strict pattern before it gets there.
- Roles are `user` and `model`; instructions go in `systemInstruction`.
- Function calls have no ids: stable ones are synthesised per response, `call_0`, `call_1`...
  in order of appearance (a `functionCall.id`, when the API sends one, is kept). A function
  RESPONSE is matched by function NAME, so tool results are mapped back through the calls
  earlier in the conversation; parallel responses share one `user` turn.
- Function arguments are objects, not strings, and arrive whole: a streamed call becomes one
  ToolCallStart plus one ToolCallDelta holding all of its arguments.
- Gemini 3 requires the `thoughtSignature` it put on a turn's first functionCall part to come
  back with the history, else 400. A client format cannot carry it, so a call without one gets
  the documented validator-skip value on Gemini 3+ models.
- JSON Schemas go in `parametersJsonSchema` / `responseJsonSchema`, which take full JSON
  Schema (the older `parameters` / `responseSchema` take an OpenAPI subset and reject much).
- Images: `inlineData` only. An http(s) image URL cannot be sent without fetching it, and this
  adapter does no I/O: `build_request` raises `NeedsFetch(urls)`; the caller fetches and
  retries with `tollgate.canonical.with_fetched_images`.
- Reasoning: `thinkingConfig.thinkingBudget` (2.5 models; 0 turns thinking off) or
  `thinkingLevel` (Gemini 3+). `n` is `candidateCount`, and cannot be streamed.
- `parallel_tool_calls: false` has no Gemini equivalent; it is ignored (a hint, not a limit).
- Some models put `finishReason` on EVERY stream chunk, so the finish is only emitted when the
  stream ends; a stream that ends without any `finishReason` was truncated.

Billing semantics (`usage_from_response`, reading `usageMetadata`):

- `promptTokenCount` INCLUDES `cachedContentTokenCount` (cached tokens are a discounted part
  of the prompt). `toolUsePromptTokenCount` (tool results such as grounding) is billed as input
  BESIDE it, so it is added to input.
- `thoughtsTokenCount` is billed as output and reported BESIDE `candidatesTokenCount`:
  canonical output is their sum, reasoning is the thoughts.
- Every stream chunk carries the CUMULATIVE usage so far; the last one is final.
"""

from __future__ import annotations

import base64
import re
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
    image_urls_to_fetch,
)
from tollgate.errors import InvalidRequest
from tollgate.providers.base import (
    JSON,
    TRUNCATED_MESSAGE,
    LastValueUsageObserver,
    NeedsFetch,
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

API_VERSION = "v1beta"
FINISH_REASONS = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": FinishReason.CONTENT_FILTER,
    "RECITATION": FinishReason.CONTENT_FILTER,
    "BLOCKLIST": FinishReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "SPII": FinishReason.CONTENT_FILTER,
    "IMAGE_SAFETY": FinishReason.CONTENT_FILTER,
}
# Gemini's documented value for a functionCall whose signature was lost or never existed.
SKIP_SIGNATURE = "skip_thought_signature_validator"
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAJOR = re.compile(r"gemini-(\d+)")
_EFFORT_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
_EFFORT_LEVELS = {"none": "minimal", "minimal": "minimal", "low": "low", "medium": "medium"}
_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY", "tool": "ANY"}


def usage_from_response(response: Mapping[str, Any]) -> Usage:
    """Gemini `usageMetadata` -> canonical Usage (semantics in the module docstring).

    Accepts a GenerateContentResponse or one stream chunk of it.
    """
    meta = response.get("usageMetadata") or {}
    thoughts = int_field(meta, "thoughtsTokenCount")
    return Usage(
        input_tokens=int_field(meta, "promptTokenCount")
        + int_field(meta, "toolUsePromptTokenCount"),
        output_tokens=int_field(meta, "candidatesTokenCount") + thoughts,
        cached_input_tokens=int_field(meta, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


class GoogleAdapter:
    def __init__(self, name: str = "google-ai-studio", *, api_version: str = API_VERSION) -> None:
        self.name = name
        self.api_version = api_version

    def build_request(
        self, request: ChatRequest, *, default_max_tokens: int | None = None
    ) -> UpstreamCall:
        """Raises NeedsFetch when an image is a URL without bytes (see the module docstring).

        `default_max_tokens` is unused: Gemini does not require `maxOutputTokens`."""
        model = request.model.removeprefix("models/")
        if not _MODEL.fullmatch(model):
            raise InvalidRequest(f"{model!r} is not a valid Gemini model name.", param="model")
        if request.stream and request.n is not None and request.n > 1:
            raise InvalidRequest(
                f"n > 1 cannot be streamed from {self.name}; set stream to false or n to 1.",
                param="n",
            )
        urls = image_urls_to_fetch(request)
        if urls:
            raise NeedsFetch(urls)
        body: JSON = {"contents": _contents(request, _needs_signature(model))}
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": request.system_text()}]}
        if request.tools:
            body["tools"] = [{"functionDeclarations": [_declaration(t) for t in request.tools]}]
        if request.tool_choice is not None:
            config: JSON = {"mode": _MODES[request.tool_choice.mode]}
            if request.tool_choice.mode == "tool":
                config["allowedFunctionNames"] = [request.tool_choice.name]
            body["toolConfig"] = {"functionCallingConfig": config}
        generation = _generation_config(request, model)
        if generation:
            body["generationConfig"] = generation
        method = "streamGenerateContent" if request.stream else "generateContent"
        return UpstreamCall(
            "POST",
            f"{self.api_version}/models/{model}:{method}",
            dumps(body),
            query={"alt": "sse"} if request.stream else {},
            headers={"content-type": "application/json"},
        )

    def parse_response(self, status: int, body: bytes) -> ChatResponse:
        raise_for_status(status, body, self)
        data = load_object(body)
        candidates = data.get("candidates") or ()
        choices = tuple(_choice(i, candidate) for i, candidate in enumerate(candidates))
        if not choices:  # the prompt itself was blocked: promptFeedback.blockReason
            choices = (Choice(0, Message("assistant", ()), FinishReason.CONTENT_FILTER),)
        return ChatResponse(
            id=str(data.get("responseId") or ""),
            model=str(data.get("modelVersion") or ""),
            choices=choices,
            usage=usage_from_response(data) if data.get("usageMetadata") else None,
        )

    def stream_parser(self) -> GoogleStreamParser:
        return GoogleStreamParser()

    def parse_error(self, status: int, body: bytes) -> UpstreamErrorInfo:
        return parse_google_error(status, body)

    def usage_from_response(self, response: Mapping[str, Any]) -> Usage:
        return usage_from_response(response)

    def observe_stream_usage(self) -> LastValueUsageObserver:
        return google_usage_observer()


# Typed as the Protocol so mypy proves the class satisfies the adapter contract.
ADAPTER: ProviderAdapter = GoogleAdapter()


# --- request --------------------------------------------------------------------------------


def _needs_signature(model: str) -> bool:
    major = _MAJOR.match(model)
    return major is not None and int(major.group(1)) >= 3


def _contents(request: ChatRequest, needs_signature: bool) -> list[JSON]:
    names: dict[str, str] = {}  # tool-call id -> function name, for functionResponse
    out: list[JSON] = []
    for i, message in enumerate(request.messages):
        role = "model" if message.role == "assistant" else "user"
        parts: list[JSON] = []
        for j, part in enumerate(message.parts):
            converted = _part(part, names, f"messages[{i}].parts[{j}]")
            if converted is not None:
                parts.append(converted)
        if role == "model" and needs_signature:
            _sign_first_call(parts)
        if not parts:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)  # parallel function responses share one turn
        else:
            out.append({"role": role, "parts": parts})
    return out


def _part(part: Part, names: dict[str, str], where: str) -> JSON | None:
    match part:
        case TextPart(text=text):
            return {"text": text} if text else None
        case ImagePart(data=bytes() as data, media_type=media_type):
            encoded = base64.b64encode(data).decode("ascii")
            return {"inlineData": {"mimeType": media_type or "image/png", "data": encoded}}
        case ToolCall(id=call_id, name=name, arguments=arguments, signature=signature):
            names[call_id] = name
            out: JSON = {
                "functionCall": {
                    "name": name,
                    "args": arguments_object(arguments, f"{where}.arguments"),
                }
            }
            if signature:
                out["thoughtSignature"] = signature
            return out
        case ToolResult(call_id=call_id):
            return _function_response(part, names, where)
    return None  # reasoning summaries are not sent back


def _function_response(result: ToolResult, names: dict[str, str], where: str) -> JSON:
    name = names.get(result.call_id)
    if name is None:
        raise InvalidRequest(
            f"{where}: tool result {result.call_id!r} answers no earlier tool call; Gemini "
            "matches results to calls by function name.",
            param=where,
        )
    try:
        value: Any = orjson.loads(result.content)
    except orjson.JSONDecodeError:
        value = result.content
    # Gemini documents the "output" and "error" keys for a function's result.
    key = "error" if result.is_error else "output"
    return {"functionResponse": {"name": name, "response": {key: value}}}


def _sign_first_call(parts: list[JSON]) -> None:
    for part in parts:
        if "functionCall" in part:
            part.setdefault("thoughtSignature", SKIP_SIGNATURE)
            return


def _declaration(tool: Tool) -> JSON:
    out: JSON = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    if tool.parameters is not None:
        out["parametersJsonSchema"] = tool.parameters
    return out


def _generation_config(request: ChatRequest, model: str) -> JSON:
    config: JSON = {}
    optional = {
        "temperature": request.temperature,
        "topP": request.top_p,
        "topK": request.top_k,
        "maxOutputTokens": request.max_tokens,
        "candidateCount": request.n,
    }
    config.update((key, value) for key, value in optional.items() if value is not None)
    if request.stop:
        config["stopSequences"] = list(request.stop)
    fmt = request.response_format
    if fmt is not None:
        config["responseMimeType"] = "application/json"
        if fmt.schema is not None:
            config["responseJsonSchema"] = fmt.schema
    thinking = _thinking(request, model)
    if thinking:
        config["thinkingConfig"] = thinking
    return config


def _thinking(request: ChatRequest, model: str) -> JSON | None:
    if request.reasoning_budget is not None:
        return {"thinkingBudget": request.reasoning_budget}
    effort = request.reasoning_effort
    if effort is None:
        return None
    if _needs_signature(model):  # Gemini 3+ takes a level, not a budget
        return {"thinkingLevel": _EFFORT_LEVELS.get(effort, "high")}
    return {"thinkingBudget": _EFFORT_BUDGETS.get(effort, 24576)}


# --- response -------------------------------------------------------------------------------


def _choice(position: int, candidate: JSON) -> Choice:
    parts: list[Part] = []
    calls = 0
    for part in (candidate.get("content") or {}).get("parts") or ():
        if "functionCall" in part:
            call = part["functionCall"]
            call_id = call.get("id") or f"call_{calls}"
            arguments = orjson.dumps(call.get("args") or {}).decode()
            parts.append(
                ToolCall(
                    str(call_id), str(call.get("name")), arguments, part.get("thoughtSignature")
                )
            )
            calls += 1
        elif "text" in part:
            if part.get("thought"):
                parts.append(ReasoningPart(str(part["text"]), part.get("thoughtSignature")))
            else:
                parts.append(TextPart(str(part["text"])))
    reason = _finish(candidate.get("finishReason"), calls > 0)
    index = candidate.get("index")
    return Choice(
        index if type(index) is int else position, Message("assistant", tuple(parts)), reason
    )


def _finish(reason: str | None, called: bool) -> FinishReason:
    mapped = FINISH_REASONS.get(reason or "", FinishReason.STOP)
    # Gemini says STOP after function calls; OpenAI and Anthropic clients expect tool_calls.
    return FinishReason.TOOL_CALLS if called and mapped is FinishReason.STOP else mapped


def parse_google_error(status: int, body: bytes) -> UpstreamErrorInfo:
    """`{"error": {"code", "message", "status"}}` (also wrapped in a one-item array)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return UpstreamErrorInfo(status, error_text(body), "UNKNOWN")
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return UpstreamErrorInfo(status, error_text(body), "UNKNOWN")
    message = str(error.get("message") or error_text(body))
    return UpstreamErrorInfo(status, message, str(error.get("status") or "UNKNOWN"))


# --- streaming ------------------------------------------------------------------------------


class GoogleStreamParser(SSEStreamParser):
    """`alt=sse` chunks (each a GenerateContentResponse) -> canonical events."""

    __slots__ = ("_calls", "_called", "_reason", "_started")

    def __init__(self) -> None:
        super().__init__()
        self._started = False
        self._calls = 0
        self._called = False
        self._reason: str | None = None

    def on_event(self, event: Event) -> list[StreamEvent]:
        chunk = orjson.loads(event.data)
        if "error" in chunk:
            info = parse_google_error(502, event.data.encode())
            code = chunk["error"].get("code")
            return [StreamError(info.message, code if type(code) is int else 502, info.type)]
        out: list[StreamEvent] = []
        if not self._started:
            self._started = True
            model = str(chunk.get("modelVersion") or "")
            out.append(StreamStart(str(chunk.get("responseId") or ""), model))
        candidates = chunk.get("candidates") or ()
        if candidates:
            self._candidate(candidates[0], out)
        elif (chunk.get("promptFeedback") or {}).get("blockReason"):
            self._reason = "SAFETY"
        if chunk.get("usageMetadata"):
            out.append(UsageUpdate(usage_from_response(chunk)))
        return out

    def _candidate(self, candidate: JSON, out: list[StreamEvent]) -> None:
        for part in (candidate.get("content") or {}).get("parts") or ():
            if "functionCall" in part:
                call = part["functionCall"]
                index = self._calls
                self._calls += 1
                self._called = True
                call_id = str(call.get("id") or f"call_{index}")
                out.append(ToolCallStart(index, call_id, str(call.get("name"))))
                out.append(ToolCallDelta(index, orjson.dumps(call.get("args") or {}).decode()))
            elif part.get("text"):
                text = str(part["text"])
                out.append(ReasoningDelta(text) if part.get("thought") else TextDelta(text))
        if candidate.get("finishReason"):
            self._reason = candidate["finishReason"]

    def on_close(self) -> list[StreamEvent]:
        if self._reason is None:
            return [StreamError(TRUNCATED_MESSAGE)]
        return [Finish(_finish(self._reason, self._called))]


def google_usage_observer() -> LastValueUsageObserver:
    """Pass-through usage: the last `usageMetadata` object (each one is cumulative), on
    `alt=sse` streams and on the JSON-array stream alike."""
    return LastValueUsageObserver(
        "usageMetadata", lambda meta: usage_from_response({"usageMetadata": meta})
    )
