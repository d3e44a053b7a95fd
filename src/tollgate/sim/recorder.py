"""What reached the simulated upstream: a bounded, thread-safe ring of recorded requests.

Tests use it to check what the gateway forwarded (headers injected or stripped, bodies rewritten).
The ring keeps the most recent ``maxlen`` requests so a long benchmark cannot grow it without bound.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_MAXLEN = 1000


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator received it. ``headers`` are lower-cased; repeated headers
    are joined with ``", "``. ``query`` is the raw query string (no ``?``)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return orjson.loads(self.body)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form served by ``GET /_sim/requests`` (body as text)."""
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.text,
        }


class SimRecorder:
    """The last ``maxlen`` requests, oldest first. Safe to read from another thread than the
    server's (tests often run the simulator in a background thread)."""

    def __init__(self, maxlen: int = DEFAULT_MAXLEN) -> None:
        self._ring: deque[RecordedRequest] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, oldest first."""
        with self._lock:
            return list(self._ring)

    def record(self, request: RecordedRequest) -> None:
        """Append ``request``, dropping the oldest one when the ring is full."""
        with self._lock:
            self._ring.append(request)

    def clear(self) -> int:
        """Forget every recorded request; returns how many there were."""
        with self._lock:
            count = len(self._ring)
            self._ring.clear()
            return count
