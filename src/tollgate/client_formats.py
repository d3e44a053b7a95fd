"""The client-facing formats the Unified API speaks, behind one small interface.

`tollgate.formats.*` differ in small ways (OpenAI chunks carry a `created` stamp and end with
`[DONE]`, Anthropic's do not); this module gives the pipeline one shape for both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tollgate.canonical import ChatRequest, ChatResponse, StreamEvent
from tollgate.formats import anthropic_messages, openai_chat
from tollgate.providers.registry import WireFormat


class Renderer(Protocol):
    def render(self, event: StreamEvent) -> bytes: ...
    def close(self) -> bytes: ...
    def render_error(self, status: int, code: str, message: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ClientFormat:
    wire: WireFormat  # a request in this format can be relayed as bytes to an upstream of it
    parse_request: Callable[[Mapping[str, Any]], ChatRequest]
    render_response: Callable[[ChatResponse], dict[str, Any]]
    stream_renderer: Callable[[ChatRequest], Renderer]
    render_error_body: Callable[[int, str, str], dict[str, Any]]


OPENAI_CHAT = ClientFormat(
    wire="openai",
    parse_request=openai_chat.parse_request,
    render_response=lambda response: openai_chat.render_response(
        response, created=int(time.time())
    ),
    stream_renderer=lambda request: openai_chat.StreamRenderer(
        include_usage=request.include_usage, created=int(time.time())
    ),
    render_error_body=openai_chat.render_error_body,
)

ANTHROPIC_MESSAGES = ClientFormat(
    wire="anthropic",
    parse_request=anthropic_messages.parse_request,
    render_response=anthropic_messages.render_response,
    stream_renderer=lambda request: anthropic_messages.StreamRenderer(),
    render_error_body=anthropic_messages.render_error_body,
)
