"""Server-sent events: an incremental decoder and an encoder. Pure, no I/O.

The decoder follows the WHATWG "event stream interpretation" rules: lines end in CRLF, LF or
CR (a CR at the end of one chunk and an LF at the start of the next are one line ending);
lines starting with ":" are comments; `data:` lines accumulate, joined with "\\n"; an empty line
dispatches the event; a leading UTF-8 BOM is dropped; one space after the colon is stripped.

It sits on the streaming hot path, so it never loops over bytes in Python: line splitting is
`bytes.splitlines` (which, for bytes, breaks only at CR, LF and CRLF), and a chunk with no line
ending is only appended to a pending list.

One deliberate leniency: at `close()`, an event whose last line was complete but whose
blank-line terminator never came is still dispatched (browsers drop it). Upstreams sometimes
end a stream right after the final `data:` line, and dropping it would turn a complete
Anthropic `message_stop` into a false "truncated stream" error. A line cut mid-way is dropped.
"""

from __future__ import annotations

from typing import NamedTuple

_BOM = b"\xef\xbb\xbf"


class Event(NamedTuple):
    """One dispatched event. `event` is None when no `event:` field was given ("message").

    A NamedTuple rather than a frozen dataclass: one is built per event on the hot path, and
    tuple construction is several times cheaper."""

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed bytes as they arrive; get back the events they complete."""

    __slots__ = ("_data", "_event", "_id", "_pending", "_retry", "_skip_lf", "_started")

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # an incomplete last line, possibly in pieces
        self._skip_lf = False  # the previous chunk ended in CR: a leading LF is its partner
        self._started = False
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        chunk = self._trim(chunk)
        if b"\n" not in chunk and b"\r" not in chunk:
            if chunk:
                self._pending.append(chunk)
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending = []
        lines = chunk.splitlines()
        last = chunk[-1:]
        if last == b"\r":
            self._skip_lf = True
        elif last != b"\n":
            self._pending.append(lines.pop())
        events: list[Event] = []
        data = self._data
        for line in lines:
            if line[:5] == b"data:":  # the hot path, inlined: one `data: {...}` line
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line[:6] == b"event:":
                name = line[7:] if line[6:7] == b" " else line[6:]
                self._event = name.decode("utf-8", "replace")
            elif line:
                self._field(line)
            elif data:
                events.append(self._dispatch())
                data = self._data
            else:
                self._event = None
        return events

    def _trim(self, chunk: bytes) -> bytes:
        """Drop a leading BOM (stream start) and an LF that completes a CR from the last chunk."""
        if not self._started and chunk:
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        return chunk

    def close(self) -> list[Event]:
        """End of stream: the lenient final dispatch described in the module docstring."""
        self._pending = []
        if self._data:
            return [self._dispatch()]
        return []

    def _field(self, line: bytes) -> None:
        # The common case first: a `data: {...}` line.
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
            return
        if line.startswith(b":"):
            return  # a comment (keep-alive)
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"data":
            self._data.append(value)  # `data` with no colon: an empty data line
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)

    def _dispatch(self) -> Event:
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event = Event(data.decode("utf-8", "replace"), self._event, self._id, self._retry)
        self._data = []
        self._event = None
        return event


def encode(data: str | bytes, event: str | None = None, id: str | None = None) -> bytes:
    """One event as bytes. Data containing line breaks becomes several `data:` lines."""
    raw = data.encode() if isinstance(data, str) else data
    head = b""
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    if id is not None:
        head += b"id: " + id.encode() + b"\n"
    if b"\n" in raw or b"\r" in raw:
        body = b"".join(b"data: " + line + b"\n" for line in raw.splitlines())
    else:
        body = b"data: " + raw + b"\n"
    return head + body + b"\n"


def encode_json_data(payload: bytes, event: bytes | None = None) -> bytes:
    """The hot-path encoder for one compact JSON payload (orjson output has no line breaks)."""
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event + b"\ndata: " + payload + b"\n\n"
