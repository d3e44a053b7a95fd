"""What billing needs to know about a provider-native request, read from its path and body. Pure.

For each wire format: which endpoints are billed (and how their model, output cap and streaming
are spelled), which are free (model lists, token counting), and how to rewrite a body when the
gateway must cap the output or ask a stream for its usage. Anything else is not available
through Unified Billing: the gateway cannot price it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from tollgate.providers.registry import WireFormat

Kind = Literal["chat", "responses", "messages", "generate", "embeddings", "free", "unknown"]

# Images sent inline as base64 would count as hundreds of thousands of "tokens" by size alone.
_DATA_URL = re.compile(rb"data:[a-z]+/[a-z0-9.+-]+;base64,[A-Za-z0-9+/=]+")
_INLINE_BASE64 = re.compile(rb'"(?:data|bytes)"\s*:\s*"[A-Za-z0-9+/=]{512,}"')
IMAGE_TOKENS = 1600  # a generous per-image prompt estimate (a large image on every provider)
BYTES_PER_TOKEN = 3  # conservative: English averages ~4 bytes a token, JSON framing adds more
_GOOGLE_ACTION = re.compile(r"^v1(?:beta)?/models/([^/:]+):([A-Za-z]+)$")


@dataclass(frozen=True, slots=True)
class RequestFacts:
    kind: Kind
    model: str | None
    max_output_tokens: int | None  # what the client set; None = the model's maximum
    stream: bool
    wants_usage_chunk: bool  # OpenAI chat streams: the client asked for the usage chunk
    # Perplexity: `web_search_options.search_context_size`, which picks the per-request fee,
    # and `web_search_options.search_type` (fast, pro, auto: Sonar Pro's Pro Search).
    search_context: str | None = None
    search_type: str | None = None
    # What the upstream is sent when the client set no cap, if less than the model's maximum: a
    # translated request to a provider that requires one (Anthropic) gets the gateway's default,
    # so the hold is for that, not for the model's whole maximum output.
    default_output_tokens: int | None = None


def native_facts(wire: WireFormat, path: str, body: dict[str, Any] | None) -> RequestFacts:
    body = body or {}
    path = path.removeprefix("v1/") if wire == "openai" else path
    if wire == "openai":
        return _openai_facts(path, body)
    if wire == "anthropic":
        if path == "v1/messages":
            return _facts("messages", body.get("model"), body.get("max_tokens"), body)
        if path in ("v1/messages/count_tokens", "v1/models") or path.startswith("v1/models/"):
            return RequestFacts("free", None, None, False, False)
        return RequestFacts("unknown", None, None, False, False)
    match = _GOOGLE_ACTION.match(path)
    if match is None:
        free = path in ("v1/models", "v1beta/models")
        return RequestFacts("free" if free else "unknown", None, None, False, False)
    model, action = match.groups()
    if action in ("generateContent", "streamGenerateContent"):
        config = body.get("generationConfig")
        cap = config.get("maxOutputTokens") if isinstance(config, dict) else None
        stream = action == "streamGenerateContent"
        return RequestFacts("generate", model, _positive(cap), stream, False)
    if action in ("embedContent", "batchEmbedContents"):
        return RequestFacts("embeddings", model, 0, False, False)
    if action == "countTokens":
        return RequestFacts("free", None, None, False, False)
    return RequestFacts("unknown", None, None, False, False)


def _openai_facts(path: str, body: dict[str, Any]) -> RequestFacts:
    if path == "chat/completions":
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        return _facts("chat", body.get("model"), cap, body)
    if path == "responses":
        return _facts("responses", body.get("model"), body.get("max_output_tokens"), body)
    if path == "embeddings":
        return RequestFacts("embeddings", _text(body.get("model")), 0, False, False)
    if path == "models" or path.startswith("models/"):
        return RequestFacts("free", None, None, False, False)
    return RequestFacts("unknown", None, None, False, False)


def _facts(kind: Kind, model: object, cap: object, body: dict[str, Any]) -> RequestFacts:
    stream = body.get("stream") is True
    options = body.get("stream_options")
    wants = isinstance(options, dict) and options.get("include_usage") is True
    search = body.get("web_search_options")
    search = search if isinstance(search, dict) else {}
    context, kind_of_search = (
        _text(search.get(key)) for key in ("search_context_size", "search_type")
    )
    return RequestFacts(
        kind, _text(model), _positive(cap), stream, stream and wants, context, kind_of_search
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _positive(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def estimate_prompt_tokens(body: bytes) -> int:
    """An upper-leaning estimate of the prompt from the request's size (never parses it).

    Inline images count `IMAGE_TOKENS` each instead of their size.
    """
    images = _DATA_URL.findall(body) + _INLINE_BASE64.findall(body)
    size = len(body) - sum(len(image) for image in images)
    return math.ceil(size / BYTES_PER_TOKEN) + IMAGE_TOKENS * len(images)


def with_output_cap(
    kind: Kind, body: dict[str, Any], tokens: int, chat_field: str = "max_completion_tokens"
) -> None:
    """Set the output cap the provider's way (the gateway caps what the balance affords).
    `chat_field` is the registry row's name for it on Chat Completions."""
    if kind == "chat":
        body.pop("max_tokens", None)
        body.pop("max_completion_tokens", None)
        body[chat_field] = tokens
    elif kind == "responses":
        body["max_output_tokens"] = tokens
    elif kind == "messages":
        body["max_tokens"] = tokens
    elif kind == "generate":
        config = body.get("generationConfig")
        config = config if isinstance(config, dict) else {}
        config["maxOutputTokens"] = tokens
        body["generationConfig"] = config


def with_usage_requested(body: dict[str, Any]) -> None:
    """Ask an OpenAI chat stream for its usage chunk (the gateway strips it again if unasked)."""
    options = body.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    options["include_usage"] = True
    body["stream_options"] = options
