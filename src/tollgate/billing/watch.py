"""Watching a provider-native response for its usage, and settling the hold once it is done.

The bytes are relayed unchanged: the watcher only observes them (the adapters' usage observers
skip, with one `bytes.find`, every chunk that cannot hold usage). The single exception: an OpenAI
chat stream whose client did not ask for usage was asked for it by the gateway, so the usage
chunk (`choices: []`) is taken out of the relay again.
"""

from __future__ import annotations

from typing import Any

import orjson

from tollgate.billing.meter import Admission, Meter
from tollgate.billing.requests import RequestFacts
from tollgate.canonical import Usage
from tollgate.money import header_dollars
from tollgate.providers.base import ProviderAdapter, UsageObserver
from tollgate.providers.openai import responses_usage, responses_usage_observer
from tollgate.store.holds import Settlement


class UsageWatch:
    def __init__(
        self,
        meter: Meter,
        admission: Admission,
        adapter: ProviderAdapter,
        facts: RequestFacts,
        *,
        strip_usage_chunk: bool,
    ) -> None:
        self.meter = meter
        self.admission = admission
        self.facts = facts
        self.observer: UsageObserver = (
            responses_usage_observer()
            if facts.kind == "responses"
            else adapter.observe_stream_usage()
        )
        self.adapter = adapter
        self.strip = strip_usage_chunk
        # SSE comments are ignored by the OpenAI and Anthropic SDKs but break google-genai's.
        self.cost_comment = adapter.name not in _NO_COMMENT_PROVIDERS
        self._pending = b""
        self.produced = 0
        self.settlement: Settlement | None = None
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        """Observe a streamed chunk; returns the bytes to relay."""
        self.observer.feed(chunk)
        self.produced += len(chunk)
        return self._strip(chunk) if self.strip else chunk

    def _strip(self, chunk: bytes) -> bytes:
        # Whole SSE events only: the usage chunk is dropped, everything else passes as it came.
        data = self._pending + chunk
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self._pending = data
            return b""
        self._pending = data[cut + 2 :]
        events = data[: cut + 2].split(b"\n\n")
        kept = [e for e in events[:-1] if not _is_usage_chunk(e)]
        return b"".join(e + b"\n\n" for e in kept)

    def tail(self) -> bytes:
        """Whatever the stripper still holds once the upstream is done."""
        pending, self._pending = self._pending, b""
        return pending

    def usage_from_body(self, body: bytes) -> Usage | None:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(parsed, dict):
            return None
        # OpenAI and Anthropic report `usage`; Gemini reports `usageMetadata`.
        if not any(isinstance(parsed.get(key), dict) for key in _USAGE_KEYS):
            return None
        if self.facts.kind == "responses":
            usage = parsed.get("usage")
            return responses_usage(usage) if isinstance(usage, dict) else None
        return self.adapter.usage_from_response(parsed)

    async def finish(
        self, status: int, usage: Usage | None, *, complete: bool = True
    ) -> Settlement | None:
        """Settle exactly once: measured usage, an estimate, or a release for a failure.
        `complete=False`: the stream broke off, so `usage` may be partial (see the meter)."""
        if self._done:
            return self.settlement
        self._done = True
        produced = self.produced if status < 400 else 0
        if status >= 400:
            usage = None
        self.settlement = await self.meter.settle(
            self.admission, usage, produced_bytes=produced, complete=complete
        )
        return self.settlement


_NO_COMMENT_PROVIDERS = frozenset({"google-ai-studio"})
_USAGE_KEYS = ("usage", "usageMetadata")


def _is_usage_chunk(event: bytes) -> bool:
    if b'"usage"' not in event or not event.startswith(b"data: {"):
        return False
    try:
        payload: Any = orjson.loads(event[6:])
    except orjson.JSONDecodeError:
        return False
    return isinstance(payload, dict) and payload.get("choices") == [] and "usage" in payload


def cost_headers(settlement: Settlement | None) -> list[tuple[bytes, bytes]]:
    """`cf-aig-cost` and `cf-aig-credits-remaining` (USD), for a billed response."""
    if settlement is None or settlement.balance_after_nanos is None:
        return []
    return [
        (b"cf-aig-cost", header_dollars(settlement.charged_nanos).encode()),
        (b"cf-aig-credits-remaining", header_dollars(settlement.balance_after_nanos).encode()),
    ]


def sse_cost_comment(settlement: Settlement | None) -> bytes:
    """The same figures at the end of a stream, as an SSE comment every client ignores."""
    if settlement is None or settlement.balance_after_nanos is None:
        return b""
    cost = header_dollars(settlement.charged_nanos)
    remaining = header_dollars(settlement.balance_after_nanos)
    estimated = " estimated" if settlement.estimated else ""
    return f": cf-aig-cost={cost} cf-aig-credits-remaining={remaining}{estimated}\n\n".encode()
