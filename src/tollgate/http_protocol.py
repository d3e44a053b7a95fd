"""The HTTP server's protocol: uvicorn's httptools protocol, plus what it lacks against clients
that are slow on purpose (slowloris) or send floods of headers.

Measured with uvicorn 0.54 and httptools 0.9: a request with 20 MB of headers is accepted, and a
connection that opens and sends nothing, or trickles its headers a byte at a time, is never closed
(uvicorn's `timeout_keep_alive` only runs between requests, and any byte resets it). Each such
connection holds a socket and memory for as long as the client likes. This subclass adds, per
connection (`ConnectionLimits`, from `[server]`):

- **a deadline for each request's head** (request line and headers): `header_timeout_seconds`
  from the connection's start (for its first request) or from the first read of a later one.
  Past it the connection is closed, with `408 Request Timeout` when part of a request arrived.
- **a cap on the head's size and header count**: a head still incomplete after twice
  `max_header_bytes` (plus 8 KiB for the request line), or with more than twice
  `max_header_count` headers, gets `431` and the connection is closed, before the application
  runs. Requests between the limits and these caps (or whose whole head came in one read, at
  most 256 KiB) reach the data plane, which refuses them in the endpoint's own error format
  (`tollgate.request_limits`).
- **a deadline for the body**: `body_timeout_seconds` plus `BODY_GRACE_SECONDS` after the headers
  (from the read that completed them).
  The data plane answers 408 itself at `body_timeout_seconds`; this closes the connection for
  every other route (the application then sees the client disconnect).

Idle kept-alive connections are still closed by uvicorn after `keep_alive_timeout_seconds`.
`http_options` gives `uvicorn.Config` both, for `tollgate serve` and for tests. The subclass uses
uvicorn's protocol callbacks (`on_header`, `on_headers_complete`, `on_message_complete`,
`send_400_response`) and attributes (`parser`, `pipeline`, `headers`, `transport`, `loop`);
`tests/e2e/test_slow_clients.py` checks it against the pinned uvicorn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tollgate.settings import ServerSettings

BODY_GRACE_SECONDS = 5.0
_REQUEST_LINE_BYTES = 8 * 1024


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    head_bytes: int
    header_count: int
    header_timeout: float
    body_timeout: float

    @classmethod
    def from_settings(cls, server: ServerSettings) -> ConnectionLimits:
        return cls(
            head_bytes=2 * server.max_header_bytes + _REQUEST_LINE_BYTES,
            header_count=2 * server.max_header_count,
            header_timeout=server.header_timeout_seconds,
            body_timeout=server.body_timeout_seconds + BODY_GRACE_SECONDS,
        )


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing; the refusal is already chosen."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's protocol with the deadlines and caps above; `limits` is set by `http_options`.

    Timers are armed only when a read leaves a request's head or body incomplete: a request
    that arrives whole in one read (most do) arms none, so the guard costs the fast path a few
    attribute checks, not a timer (~3 µs each) per request."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._timing: str | None = None  # what the timer waits for: "head" or "body"
        self._head_bytes: int | None = 0  # bytes of the head being read; None past it
        self._in_body = False  # the head is complete, the body is not
        self._refusal: tuple[int, str] | None = None

    # --- the deadlines ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head", self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # a WebSocket: its own protocol takes the connection over
        self._in_body = True

    def on_message_complete(self) -> None:
        self._head_bytes, self._in_body = 0, False
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._head_bytes:  # a head has begun and is incomplete
            # Checked after parsing: a read that completes the head may carry much of the body.
            # The parser holds at most one read (256 KiB) of a head that is too big.
            if self._head_bytes > self.limits.head_bytes:
                self._refuse(431, "Request Header Fields Too Large: the request's head is too big.")
            elif self._timing != "head":
                self._arm("head", self.limits.header_timeout, self._head_timed_out)
        elif self._in_body and not self.pipeline:  # a queued request's body waits its turn
            if self._timing != "body":
                self._arm("body", self.limits.body_timeout, self._body_timed_out)
        elif self._timer is not None:  # the request is complete: the application has it
            self._disarm()

    def _arm(self, timing: str, delay: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer, self._timing = self.loop.call_later(delay, callback), timing

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timing = None

    def _head_timed_out(self) -> None:
        self._timer = self._timing = None
        if self._head_bytes:  # part of a request arrived: say why it is dropped
            self._refuse(408, "Request Timeout: the request's headers did not arrive in time.")
        elif not self.transport.is_closing():
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._timer = self._timing = None
        if not self.transport.is_closing():
            self.transport.close()

    # --- the head's size --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if len(self.headers) > self.limits.header_count:
            self._refusal = (431, "Request Header Fields Too Large: too many headers.")
            raise _HeadRefused  # uvicorn reports the parser error through send_400_response

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._refuse(*self._refusal)
        else:
            super().send_400_response(msg)

    def _refuse(self, status: int, message: str) -> None:
        """Answer with a plain-text error and close: the request never reaches the app."""
        self._disarm()
        self._head_bytes = None
        if self.transport.is_closing():
            return
        body = message.encode("ascii")
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self.transport.close()


def http_options(server: ServerSettings) -> dict[str, Any]:
    """`uvicorn.Config` options for the gateway: the guarded protocol, keep-alive timeout."""
    protocol = type(
        "TollgateHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {"limits": ConnectionLimits.from_settings(server)},
    )
    return {"http": protocol, "timeout_keep_alive": server.keep_alive_timeout_seconds}
