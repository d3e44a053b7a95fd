"""`POST /client/v4/accounts/{account_id}/ai/run`: Cloudflare's model-agnostic envelope.

The body is `{"model": "{provider}/{model}", "input": {...}}`. For chat models the input is the
chat request without its model (`messages`, `max_tokens`, `stream`...), or `{"prompt": "..."}`
for a single user turn. For embedding models it is `{"text": "..." | [...]}` (Workers AI's
embedding input) or OpenAI's `{"input": ...}`, plus any other embedding parameters
(`dimensions`, `encoding_format`). It runs through the Unified API in OpenAI's format (chat
completions or embeddings), and a non-streamed
answer comes back wrapped as Cloudflare wraps third-party models:
`{"state": "Completed", "result": {...}, "gatewayMetadata": {"keySource": "Unified"}}`.
Streams are relayed as OpenAI chunks, unwrapped. The REST surface always bills the operator's
managed key, hence `keySource: "Unified"`.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import Message, Send

from tollgate.errors import InvalidRequest
from tollgate.pipeline import parse_json_object

_ENVELOPE_KEY_SOURCE = {"keySource": "Unified"}


def run_body(headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[str, bytes]:
    """The `/ai/run` envelope as a Unified API request: `("chat/completions", body)` or
    `("embeddings", body)`, in OpenAI's format."""
    envelope = parse_json_object(headers, body, "ai/run")
    model, inputs = envelope.get("model"), envelope.get("input")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model is required, e.g. 'openai/gpt-4o-mini'.", param="model")
    if not isinstance(inputs, dict):
        raise InvalidRequest(
            'input must be an object: the model\'s input, e.g. {"messages": [...]} or '
            '{"prompt": "..."}.',
            param="input",
        )
    if (
        "messages" not in inputs
        and "prompt" not in inputs
        and ("text" in inputs or "input" in inputs)
    ):
        return "embeddings", orjson.dumps(_embeddings_request(model, inputs))
    chat: dict[str, Any] = {key: value for key, value in inputs.items() if key != "prompt"}
    if "messages" not in chat:
        prompt = inputs.get("prompt")
        if not isinstance(prompt, str):
            raise InvalidRequest(
                "input needs either messages or a prompt string.", param="input.messages"
            )
        chat["messages"] = [{"role": "user", "content": prompt}]
    chat["model"] = model
    return "chat/completions", orjson.dumps(chat)


def _embeddings_request(model: str, inputs: dict[str, Any]) -> dict[str, Any]:
    if "text" in inputs and "input" in inputs:
        raise InvalidRequest(
            "input has both text and input: give the texts to embed once, as text.",
            param="input.text",
        )
    request = {key: value for key, value in inputs.items() if key != "text"}
    if "text" in inputs:
        request["input"] = inputs["text"]
    request["model"] = model
    return request


class EnvelopeSend:
    """Wraps a successful JSON answer in the `/ai/run` envelope; passes everything else on."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._start: Message | None = None
        self._chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            if message["status"] == 200 and content_type.startswith(b"application/json"):
                self._start = message
                return
        if self._start is None:
            await self._send(message)
            return
        self._chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        result = orjson.loads(b"".join(self._chunks))
        body = orjson.dumps(
            {"state": "Completed", "result": result, "gatewayMetadata": _ENVELOPE_KEY_SOURCE}
        )
        headers = [(k, v) for k, v in self._start.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})
