"""The data plane's request limits: headers (431), a slow body (408), JSON shape (400).

Checked by `api/dataplane.py` before the gateway is resolved: a refused request creates nothing,
holds nothing and is not logged, and its error is rendered in the format of the endpoint called.
The body's size (413) is `read_body`'s own check, for bodies with and without content-length.

- **Headers**: at most `[server] max_header_count` headers, and at most `max_header_bytes` bytes
  of names and values together. The HTTP server (`http_protocol.py`) closes a connection whose
  headers go far past these (twice as many), so that a flood never reaches the application.
- **Body deadline**: the whole body must arrive within `body_timeout_seconds` of the request's
  start, however it trickles (slowloris); then 408 and the connection is closed (`read_body`).
  A client that sends no byte of its body is cut by the server 5 s later (`http_protocol.py`).
- **JSON shape** (bodies sent as `application/json`, or without a content type): nesting at most
  `max_json_depth` levels deep (the top-level object is level 1), and at most `max_messages`
  items in a `messages` (OpenAI, Anthropic) or `contents` (Gemini) list, wherever a request keeps
  it: at the top, in a Universal step's `query`, in `/ai/run`'s `input`. Deeper JSON would also
  break the gateway itself: orjson cannot write objects nested past ~250 levels.

Cost: the JSON check counts brackets and commas first (C speed), which settles most bodies. The
depth of a body with more brackets than the limit is read from its bytes (`_nests_deeper`,
about as long as parsing it); only a body with more commas than the message limit is parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from tollgate.errors import GatewayError, InvalidRequest
from tollgate.settings import ServerSettings

# Keys whose list is a chat request's messages, and how deep (top = 1) a request keeps them:
# a Universal body's steps are level 2, their `query` level 3.
MESSAGE_KEYS = ("messages", "contents")
_MESSAGES_MAX_LEVEL = 3
# For `_nests_deeper`: every byte but quotes and brackets; brackets as parentheses; a string.
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b'"[]{}')
_PARENS = bytes.maketrans(b"[]{}", b"()()")
_STRING = re.compile(rb'"[^"]*"')


class RequestHeaderFieldsTooLarge(GatewayError):
    status = 431
    default_code = "request_headers_too_large"


class RequestTimeout(GatewayError):
    status = 408
    default_code = "request_timeout"


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_header_count: int = 100
    max_header_bytes: int = 32 * 1024
    max_json_depth: int = 64
    max_messages: int = 10_000
    body_timeout_seconds: float = 60.0

    @classmethod
    def from_settings(cls, server: ServerSettings) -> RequestLimits:
        return cls(
            max_header_count=server.max_header_count,
            max_header_bytes=server.max_header_bytes,
            max_json_depth=server.max_json_depth,
            max_messages=server.max_messages,
            body_timeout_seconds=server.body_timeout_seconds,
        )


def check_headers(headers: list[tuple[bytes, bytes]], limits: RequestLimits) -> None:
    """431 when the request has too many headers, or too many bytes of them."""
    if len(headers) > limits.max_header_count:
        raise RequestHeaderFieldsTooLarge(
            f"The request has {len(headers)} headers; this gateway accepts at most "
            f"{limits.max_header_count}. Send fewer headers, or ask the operator to raise "
            "server.max_header_count.",
        )
    size = sum(len(name) + len(value) for name, value in headers)
    if size > limits.max_header_bytes:
        raise RequestHeaderFieldsTooLarge(
            f"The request's headers are {size} bytes (names and values); this gateway accepts "
            f"at most {limits.max_header_bytes}. Send smaller headers, or ask the operator to "
            "raise server.max_header_bytes.",
        )


def body_timeout(seconds: float) -> RequestTimeout:
    """The 408 for a body that did not arrive in time; the connection is closed after it."""
    return RequestTimeout(
        f"The request body did not arrive within {seconds:g} s. Send the whole body at once, "
        "or ask the operator to raise server.body_timeout_seconds.",
        headers={"connection": "close"},
    )


def check_json_shape(
    headers: list[tuple[bytes, bytes]], body: bytes, limits: RequestLimits
) -> None:
    """400 when a JSON body nests too deep or carries too many messages. Bodies that are not
    JSON, or not valid JSON, pass: the endpoint's own parsing answers for them."""
    if not _may_be_json(headers):
        return
    # Nesting is no deeper than the number of brackets: most bodies stop here.
    if body.count(b"{") + body.count(b"[") > limits.max_json_depth and _nests_deeper(
        body, limits.max_json_depth
    ):
        raise InvalidRequest(
            f"The request body nests JSON more than {limits.max_json_depth} levels deep. "
            "Flatten the request, or ask the operator to raise server.max_json_depth.",
            code="json_too_deep",
        )
    # A list is no longer than its commas + 1: only very large bodies are parsed here.
    if body.count(b",") >= limits.max_messages:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        _check_message_lists(parsed, limits)


def _may_be_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return True  # no content type: the Universal endpoint and some clients send none


def _nests_deeper(body: bytes, limit: int) -> bool:
    """Whether JSON `body` nests more than `limit` levels, from its bytes alone (C-speed bytes
    operations: about as long as parsing it, and no Python object per value).

    Escaped backslashes and quotes are dropped first, so every remaining `"` opens or closes a
    string; then everything but quotes and brackets; then strings (with any brackets in them);
    what remains is the brackets' structure. Each pass of removing `()` pairs peels one level."""
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Adjacent quotes enclose no bracket (or lie between two strings): dropping them keeps
    # every remaining bracket on its side of the strings.
    skeleton = body.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in skeleton:
        skeleton = _STRING.sub(b"", skeleton)
    skeleton = skeleton.translate(_PARENS)
    for _ in range(limit):
        if not skeleton:
            return False
        peeled = skeleton.replace(b"()", b"")
        if len(peeled) == len(skeleton):
            return False  # unbalanced: not JSON, and the endpoint's parser says so
        skeleton = peeled
    return bool(skeleton)


def _check_message_lists(parsed: object, limits: RequestLimits) -> None:
    """Message lists in the top `_MESSAGES_MAX_LEVEL` levels, where requests keep them."""
    level: list[tuple[object, str]] = [(parsed, "")]
    for _ in range(_MESSAGES_MAX_LEVEL):
        following: list[tuple[object, str]] = []
        for node, path in level:
            if isinstance(node, dict):
                _check_messages(node, path, limits)
                following += [(v, _child_path(path, k)) for k, v in node.items()]
            elif isinstance(node, list):
                following += [(v, _child_path(path, i)) for i, v in enumerate(node)]
        level = following


def _check_messages(node: dict[str, Any], path: str, limits: RequestLimits) -> None:
    for key in MESSAGE_KEYS:
        value = node.get(key)
        if isinstance(value, list) and len(value) > limits.max_messages:
            where = _child_path(path, key)
            raise InvalidRequest(
                f"{where} has {len(value)} items; this gateway accepts at most "
                f"{limits.max_messages} per request. Send a shorter conversation (trim or "
                "summarize the history), or ask the operator to raise server.max_messages.",
                code="too_many_messages",
                param=where,
            )


def _child_path(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)
