"""The upstream adapter contract, and the small pieces every adapter shares.

An adapter is the pure half of talking to one wire format (ARCHITECTURE.md principle 1): it
turns a `ChatRequest` into an `UpstreamCall` value and turns the upstream's bytes back into
canonical values. It does no I/O, reads no settings, takes no logger and never sees a key:
`tollgate.upstream` sends the call, with the credentials the pipeline chose.

    adapter.build_request(request)          -> UpstreamCall   (may raise InvalidRequest, NeedsFetch)
    adapter.parse_response(status, body)    -> ChatResponse   (usage included)
    adapter.stream_parser()                 -> StreamParser   (feed(bytes) / close() -> events)
    adapter.parse_error(status, body)       -> UpstreamErrorInfo (status, message, type)
    adapter.usage_from_response(json)       -> Usage          (the provider's billing semantics)
    adapter.observe_stream_usage()          -> UsageObserver  (pass-through streams, bytes only)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson

from tollgate.canonical import ChatRequest, ChatResponse, StreamError, StreamEvent, Usage
from tollgate.errors import InvalidRequest, UpstreamUnavailable
from tollgate.sse import Event, SSEDecoder

JSON = dict[str, Any]
TRUNCATED_MESSAGE = "The upstream stream ended before it was complete; retry the request."


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """What to send upstream. `path` is relative to the provider's base URL (no leading /).

    `headers` holds only wire-format headers (content type, API version); the caller adds
    the credential header the registry row names.
    """

    method: str
    path: str
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


class UpstreamErrorInfo(NamedTuple):
    """An upstream error, read out of its body so it can be re-rendered in the client's format.

    `status` is the upstream's own HTTP status; `message` its message verbatim; `type` its
    error type (OpenAI `type`, Anthropic `error.type`, Google `status`).
    """

    status: int
    message: str
    type: str


class NeedsFetch(Exception):
    """The adapter needs these URLs' bytes inlined before it can build the request.

    Not a GatewayError: it never reaches a client. The caller fetches each URL and retries
    with `tollgate.canonical.with_fetched_images` (see that function for the whole seam).
    """

    def __init__(self, urls: tuple[str, ...]) -> None:
        super().__init__(f"fetch these image URLs first: {', '.join(urls)}")
        self.urls = urls


class StreamParser(Protocol):
    """Holds only parse state. Events follow the order documented in `tollgate.canonical`."""

    def feed(self, chunk: bytes) -> list[StreamEvent]: ...

    def close(self) -> list[StreamEvent]:
        """End of input. A stream that did not complete yields a `StreamError`, never silence."""
        ...


class UsageObserver(Protocol):
    """Watches a pass-through stream's native bytes for usage, without re-serialising them."""

    def feed(self, chunk: bytes) -> None: ...

    @property
    def usage(self) -> Usage | None:
        """The usage seen so far (None until the stream reported any)."""
        ...

    @property
    def finished(self) -> bool | None:
        """Whether the answer's end was seen (OpenAI's finish chunk, Anthropic's
        `message_delta`): what follows it is the final usage or nothing, so a break after it
        lost nothing billable, and a stream that ends without it was cut short. None when the
        format has no such event in its bytes (Gemini: a clean end is the end)."""
        ...


class ProviderAdapter(Protocol):
    name: str

    def build_request(
        self, request: ChatRequest, *, default_max_tokens: int | None = None
    ) -> UpstreamCall:
        """`default_max_tokens` fills `max_tokens` where the provider requires one."""
        ...

    def parse_response(self, status: int, body: bytes) -> ChatResponse: ...

    def stream_parser(self) -> StreamParser: ...

    def parse_error(self, status: int, body: bytes) -> UpstreamErrorInfo: ...

    def usage_from_response(self, response: Mapping[str, Any]) -> Usage: ...

    def observe_stream_usage(self) -> UsageObserver: ...


# --- shared helpers -------------------------------------------------------------------------


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def load_object(body: bytes, what: str = "response") -> JSON:
    """Parse an upstream JSON object; anything else is the upstream's fault (502)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamUnavailable(
            f"The upstream sent a {what} that is not valid JSON.", code="upstream_error"
        ) from None
    if not isinstance(value, dict):
        raise UpstreamUnavailable(
            f"The upstream sent a {what} that is not a JSON object.", code="upstream_error"
        )
    return value


def arguments_object(arguments: str, where: str) -> JSON:
    """A tool call's JSON-text arguments as the object Anthropic and Gemini require."""
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            f"{where} must be a JSON object encoded as a string.", param=where
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must encode a JSON object.", param=where)
    return value


def int_field(data: Mapping[str, Any], key: str) -> int:
    """A token count, tolerating absence and null (providers omit zero counts)."""
    value = data.get(key)
    return value if type(value) is int else 0


def error_text(body: bytes, limit: int = 500) -> str:
    """A non-JSON error body as a message (HTML error pages, proxies), kept short."""
    text = body.decode("utf-8", "replace").strip()
    return text[:limit] if text else "The upstream returned an error with an empty body."


def raise_for_status(status: int, body: bytes, adapter: ProviderAdapter) -> None:
    """parse_response is for 2xx bodies; anything else becomes a 502 naming the upstream's."""
    if status < 400:
        return
    info = adapter.parse_error(status, body)
    raise UpstreamUnavailable(
        f"The upstream answered {info.status} ({info.type}): {info.message}",
        code="upstream_error",
    )


class SSEStreamParser:
    """The shared skeleton of an SSE stream parser: decode, dispatch, stop after an error.

    Subclasses implement `on_event` (one SSE event -> canonical events) and `on_close` (end of
    input -> the final events, or a StreamError when the stream was not complete).
    """

    __slots__ = ("_decoder", "_stopped")

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._stopped = False

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        if self._stopped:
            return []
        out: list[StreamEvent] = []
        for event in self._decoder.feed(chunk):
            out.extend(self._guarded(event))
            if self._stopped:
                break
        return out

    def close(self) -> list[StreamEvent]:
        if self._stopped:
            return []
        out: list[StreamEvent] = []
        for event in self._decoder.close():
            out.extend(self._guarded(event))
            if self._stopped:
                return out
        self._stopped = True
        out.extend(self.on_close())
        return out

    def stop(self) -> None:
        """Called by a subclass once the stream is complete or failed: ignore what follows."""
        self._stopped = True

    def _guarded(self, event: Event) -> list[StreamEvent]:
        try:
            events = self.on_event(event)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            self._stopped = True
            return [StreamError("The upstream sent a stream event that could not be parsed.")]
        if events and type(events[-1]) is StreamError:
            self._stopped = True
        return events

    def on_event(self, event: Event) -> list[StreamEvent]:
        raise NotImplementedError

    def on_close(self) -> list[StreamEvent]:
        raise NotImplementedError


class LastValueUsageObserver:
    """Pass-through usage: the last non-null `key` object in the raw stream, converted by
    `convert` (for providers whose every usage object is cumulative: OpenAI chat and Responses,
    Gemini). Works on SSE and JSON-array streams alike: it scans bytes, not events.
    `finish_markers`: bytes that only the answer's end contains (see `UsageObserver.finished`);
    none: `finished` is None."""

    __slots__ = ("_convert", "_finish", "_last", "_scanner")

    def __init__(
        self,
        key: str,
        convert: Callable[[JSON], Usage],
        finish_markers: tuple[bytes, ...] = (),
    ) -> None:
        self._scanner = JSONValueScanner(key)
        self._convert = convert
        self._last: JSON | None = None
        self._finish = MarkerScanner(finish_markers) if finish_markers else None

    def feed(self, chunk: bytes) -> None:
        found = self._scanner.feed(chunk)
        if found:
            self._last = found[-1]
        if self._finish is not None:
            self._finish.feed(chunk)

    @property
    def usage(self) -> Usage | None:
        return None if self._last is None else self._convert(self._last)

    @property
    def finished(self) -> bool | None:
        return None if self._finish is None else self._finish.found


class MarkerScanner:
    """Whether any of `markers` occurred in a byte stream, across chunk boundaries: a
    `bytes.find` per marker per chunk until one is found, then nothing."""

    __slots__ = ("_keep", "_markers", "_tail", "found")

    def __init__(self, markers: tuple[bytes, ...]) -> None:
        self._markers = markers
        self._keep = max(len(marker) for marker in markers) - 1
        self._tail = b""
        self.found = False

    def feed(self, chunk: bytes) -> None:
        if self.found:
            return
        seam = self._tail + chunk[: self._keep]  # a marker split between two chunks
        self.found = any(marker in chunk or marker in seam for marker in self._markers)
        self._tail = chunk[-self._keep :] if len(chunk) >= self._keep else seam[-self._keep :]


class JSONValueScanner:
    """Finds `"<key>": {...}` objects in raw JSON bytes, across chunk boundaries.

    The pass-through usage observers use it so they never decode a whole stream: a chunk
    without the key costs one `bytes.find`. A match whose opening quote is escaped (the key
    text inside a JSON string, e.g. a model writing about "usage") is skipped, and a `null`
    value is skipped. The object is cut out by brace counting, which is exact for usage
    objects because they hold only numbers, arrays, objects and brace-free strings.
    """

    __slots__ = ("_buffer", "_key")

    def __init__(self, key: str) -> None:
        self._key = b'"' + key.encode() + b'"'
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[JSON]:
        buffer = self._buffer + chunk if self._buffer else chunk
        found: list[JSON] = []
        start = 0
        while True:
            at = buffer.find(self._key, start)
            if at < 0:
                # Keep a tail long enough to hold a key split across two chunks.
                self._buffer = buffer[max(start, len(buffer) - len(self._key) + 1) :]
                return found
            if _escaped(buffer, at):
                start = at + 1
                continue
            end, value = _object_after(buffer, at + len(self._key))
            if end < 0:
                self._buffer = buffer[at:]  # incomplete: wait for more bytes
                return found
            if value is not None:
                found.append(value)
            start = end


def _escaped(buffer: bytes, quote_at: int) -> bool:
    backslashes = 0
    i = quote_at - 1
    while i >= 0 and buffer[i] == 0x5C:  # runs of backslashes are short; bounded loop
        backslashes += 1
        i -= 1
    return backslashes % 2 == 1


def _object_after(buffer: bytes, pos: int) -> tuple[int, JSON | None]:
    """(end offset, object) for the value after a key; (-1, None) if not complete yet."""
    after = buffer[pos : pos + 64].lstrip()
    if not after:
        return -1, None
    if after[:1] != b":":
        return pos, None  # the key text used as a value, not as a key
    colon = buffer.index(b":", pos)
    rest = buffer[colon + 1 : colon + 64].lstrip()
    if not rest:
        return -1, None
    if rest[:1] != b"{":
        return colon + 1, None  # null or a non-object value: not usage
    open_at = buffer.index(b"{", colon)
    depth = 0
    i = open_at
    while True:
        nxt_open = buffer.find(b"{", i)
        nxt_close = buffer.find(b"}", i)
        if nxt_close < 0:
            return -1, None
        if 0 <= nxt_open < nxt_close:
            depth += 1
            i = nxt_open + 1
            continue
        depth -= 1
        i = nxt_close + 1
        if depth == 0:
            break
    try:
        value = orjson.loads(buffer[open_at:i])
    except orjson.JSONDecodeError:
        return i, None
    return i, value if isinstance(value, dict) else None
