"""Request logs: what each data-plane request leaves behind, written off the hot path.

    DataPlane: capture = logs.capture(...)   wraps the request's send/receive, reads the flags
               ... the request runs; capture sees status, content types, sizes, capped bodies
               finally: logs.submit(capture)  builds the record, appends it: no I/O, no await
                        (and queues a span when the gateway has `otel`: features/otel.py)
    LogWriter: every flush_interval_ms (or at batch_size waiting) inserts the batch, after
               applying each gateway's log_management; aclose() flushes everything left

Which requests are logged: those whose caller was authorized for the gateway (`ctx.gateway`,
set once the gateway is resolved), so a stranger cannot write into an account's logs, and
requests refused before that (bad token, unknown gateway, malformed body) are not logged. The
gateway's `collect_logs` decides, unless `cf-aig-collect-log` says otherwise for the request;
`cf-aig-collect-log-payload: false` keeps the log but not the bodies.

log_management (the gateway's maximum number of stored logs): `STOP_INSERTING` (also when the
strategy is unset) drops new logs once the gateway holds that many; `DELETE_OLDEST` deletes the
oldest to make room. The writer counts each gateway's logs once and then keeps the count itself,
re-counting every `COUNT_REFRESH_SECONDS` (other processes, API deletes) or when told to forget.
With several processes the limit is therefore approximate by up to one refresh's worth of logs.

Durability: logs wait in memory for at most one flush interval. A graceful shutdown flushes
them all; a killed process loses at most that interval's logs. If the database is unreachable,
the writer keeps up to `max_pending` logs and retries, then drops the oldest (and says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import Message, Receive, Send

from tollgate.features.context import RequestContext
from tollgate.features.headers import boolean_header
from tollgate.gateway_cache import GatewayCache
from tollgate.settings import LogSettings
from tollgate.store import Store
from tollgate.store import logs as log_repo
from tollgate.store.logs import LogRecord

if TYPE_CHECKING:
    from tollgate.features.otel import SpanExporter

log = logging.getLogger(__name__)

COUNT_REFRESH_SECONDS = 60.0
COLLECT_LOG = b"cf-aig-collect-log"
COLLECT_PAYLOAD = b"cf-aig-collect-log-payload"
_GOOGLE_MODEL = re.compile(r"models/([^/:]+):")
# A Universal request's body carries each step's headers (provider keys, tollgate tokens) and may
# carry a Google key in a step's `endpoint` (`?key=`): its log keeps the body with those values
# replaced. Matched on the bytes rather than parsed: a body cut at `body_max_bytes` is no valid
# JSON, and a value it cuts short (up to the end) must not be kept either.
_CREDENTIAL_FIELD = re.compile(
    rb'("(?:authorization|proxy-authorization|cf-aig-authorization|x-api-key|x-goog-api-key'
    rb'|api-key)"\s*:\s*")(?:[^"\\]|\\.)*(?:"|\\?\Z)',
    re.IGNORECASE,
)
_CREDENTIAL_QUERY = re.compile(rb"([?&](?:key|api_key|api-key)=)[^&#\"\s\\]*", re.IGNORECASE)
_REDACTED = b"REDACTED"


def without_credentials(body: bytes) -> bytes:
    """A Universal request body as its log keeps it: credential header values and `key=` query
    parameters replaced by REDACTED."""
    body = _CREDENTIAL_FIELD.sub(rb"\g<1>" + _REDACTED + b'"', body)
    return _CREDENTIAL_QUERY.sub(rb"\g<1>" + _REDACTED, body)


def native_model(path: str, parsed: dict[str, object] | None) -> str | None:
    """The model a native request names: the body's `model`, or Gemini's `models/{m}:...`."""
    model = parsed.get("model") if parsed is not None else None
    if isinstance(model, str):
        return model[:200]
    found = _GOOGLE_MODEL.search(path)
    return found.group(1)[:200] if found else None


class LogCapture:
    """One request's observations: wraps its ASGI send and receive (one call each per message,
    and no copying: bodies are kept as the chunks they came in, up to the cap)."""

    __slots__ = (
        "ctx",
        "request_type",
        "path",
        "headers",
        "collect",
        "collect_payload",
        "status",
        "response_content_type",
        "request_size",
        "response_size",
        "_cap",
        "_request_parts",
        "_response_parts",
        "_request_room",
        "_response_room",
        "_send",
        "_receive",
    )

    def __init__(
        self,
        ctx: RequestContext,
        headers: list[tuple[bytes, bytes]],
        send: Send,
        receive: Receive,
        *,
        request_type: str,
        path: str,
        cap: int,
        cf: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.ctx = ctx
        self.request_type = request_type
        self.path = path
        self.headers = headers
        # Read first, so a bad value is a 400 naming the header before anything happens.
        # `cf`: the request's `cf-*` headers when the caller already has them (one pass).
        flags = headers if cf is None else cf
        self.collect = boolean_header(flags, COLLECT_LOG)
        self.collect_payload = boolean_header(flags, COLLECT_PAYLOAD) is not False
        self.status: int | None = None
        self.response_content_type: str | None = None
        self.request_size = 0
        self.response_size = 0
        self._cap = cap
        self._request_parts: list[bytes] = []
        self._response_parts: list[bytes] = []
        room = cap if self.collect_payload and self.collect is not False else 0
        self._request_room = self._response_room = room
        self._send = send
        self._receive = receive

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            chunk = message.get("body", b"")
            if chunk:
                self.response_size += len(chunk)
                if self._response_room > 0:
                    part = chunk[: self._response_room]
                    self._response_parts.append(part)
                    self._response_room -= len(part)
        elif kind == "http.response.start":
            self.status = message["status"]
            for name, value in message.get("headers", ()):
                if name == b"content-type":
                    self.response_content_type = value.decode("latin-1")[:200]
                    break
        await self._send(message)

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                self.request_size += len(chunk)
                if self._request_room > 0:
                    part = chunk[: self._request_room]
                    self._request_parts.append(part)
                    self._request_room -= len(part)
        return message

    def record(self) -> LogRecord:
        """The log row, built when the request is over (its usage and cost settled)."""
        ctx = self.ctx
        duration = ctx.elapsed_ms()
        gateway = ctx.gateway
        assert gateway is not None
        status = self.status
        return LogRecord(
            id=ctx.log_id,
            account_id=gateway.account_id,
            gateway_id=gateway.id,
            created_at=datetime.now(UTC) - timedelta(milliseconds=duration),
            provider=(ctx.provider or "")[:64],
            model=(ctx.model or "")[:200],
            path=(ctx.path or self.path)[:2048],
            request_type=self.request_type,
            status_code=status,
            success=status is not None and status < 400,
            cached=ctx.cached,
            duration_ms=duration,
            tokens_in=ctx.tokens_in,
            tokens_out=ctx.tokens_out,
            cost_nanos=ctx.cost_nanos,
            cost_estimated=ctx.cost_estimated,
            custom_cost=ctx.custom_cost,
            credential_source=ctx.credential_source,
            zdr=ctx.zdr,
            metadata=orjson.dumps(ctx.metadata).decode() if ctx.metadata else None,
            event_id=ctx.event_id[:256] if ctx.event_id else None,
            step=ctx.step,
            user_agent=self._header(b"user-agent", 500),
            request_content_type=self._header(b"content-type", 200),
            response_content_type=self.response_content_type,
            request_size=self.request_size,
            response_size=self.response_size,
            payload_collected=self.collect_payload,
            request_body=self._request_body(),
            request_complete=self.request_size <= self._cap,
            response_body=b"".join(self._response_parts) if self.collect_payload else None,
            response_complete=self.response_size <= self._cap,
        )

    def _request_body(self) -> bytes | None:
        if not self.collect_payload:
            return None
        body = b"".join(self._request_parts)
        return without_credentials(body) if self.request_type == "universal" else body

    def _header(self, name: bytes, limit: int) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")[:limit]
        return None


class LogWriter:
    """Collects records from requests and inserts them in batches from a background task."""

    def __init__(self, store: Store, gateways: GatewayCache, settings: LogSettings) -> None:
        self.store = store
        self.gateways = gateways
        self.settings = settings
        self._pending: deque[LogRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._counts: dict[tuple[str, str], tuple[int, float]] = {}
        # The gateways' OpenTelemetry export (features/otel.py), set by the lifespan: it sees
        # every request of a gateway with `otel` exporters, logged or not.
        self.spans: SpanExporter | None = None
        self.written = 0  # observability and tests
        self.dropped = 0  # refused by log_management, or shed while the database was down

    @property
    def pending(self) -> int:
        """Logs waiting to be written (the `/metrics` queue depth)."""
        return len(self._pending)

    # --- the request's side: no I/O ---------------------------------------------------------

    def capture(
        self,
        ctx: RequestContext,
        headers: list[tuple[bytes, bytes]],
        send: Send,
        receive: Receive,
        *,
        request_type: str,
        path: str,
        cf: list[tuple[bytes, bytes]] | None = None,
    ) -> LogCapture:
        return LogCapture(
            ctx,
            headers,
            send,
            receive,
            request_type=request_type,
            path=path,
            cap=self.settings.body_max_bytes,
            cf=cf,
        )

    def submit(self, capture: LogCapture) -> None:
        """Queue the request's log if it is to be kept. Never raises into the request."""
        gateway = capture.ctx.gateway
        if gateway is None:
            return  # the caller never got as far as its gateway: nothing to log into
        exporters = gateway.config.get("otel")
        if exporters and self.spans is not None:  # most gateways: one dict lookup
            self.spans.offer(capture, exporters)
        collect = capture.collect
        if collect is None:
            collect = gateway.config.get("collect_logs", True) is not False
        if not collect:
            return
        try:
            record = capture.record()
        except Exception:  # a log must never break the request it describes
            log.exception("building the request log failed")
            return
        self._pending.append(record)
        if len(self._pending) > self.settings.max_pending:
            self._pending.popleft()
            self.dropped += 1
        if len(self._pending) >= self.settings.batch_size:
            self._wake.set()

    # --- the background side ----------------------------------------------------------------

    def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="tollgate-log-writer")

    async def aclose(self) -> None:
        """Stop the background task and write every log still waiting (graceful shutdown).

        The task is asked to stop, not cancelled: a batch cut off mid-insert could not tell
        whether it was committed."""
        task, self._task = self._task, None
        if task is not None:
            self._closing = True
            self._wake.set()
            await task
        try:
            await self.flush()
        except Exception:
            log.exception("writing %d request logs at shutdown failed", len(self._pending))

    async def _run(self) -> None:
        interval = self.settings.flush_interval_ms / 1000
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # the database may be down for a moment: the logs wait
                log.exception("writing request logs failed; %d waiting", len(self._pending))

    async def flush(self) -> int:
        """Write everything waiting, a batch at a time; returns how many rows were inserted."""
        inserted = 0
        size = self.settings.batch_size
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(size, len(self._pending)))]
            try:
                inserted += await self._write(batch)
            except Exception:
                self._pending.extendleft(reversed(batch))  # retried on the next flush
                raise
        return inserted

    def forget_count(self, account_id: str, gateway_id: str) -> None:
        """The gateway's logs changed elsewhere (the Logs API deleted some): count again."""
        self._counts.pop((account_id, gateway_id), None)

    async def _write(self, batch: list[LogRecord]) -> int:
        by_gateway: dict[tuple[str, str], list[LogRecord]] = {}
        for record in batch:
            by_gateway.setdefault((record.account_id, record.gateway_id), []).append(record)
        kept: list[LogRecord] = []
        for key, records in by_gateway.items():
            kept += await self._within_limit(key, records)
        written = await log_repo.insert_logs(self.store, kept)
        for record in kept:
            key = (record.account_id, record.gateway_id)
            if key in self._counts:
                count, at = self._counts[key]
                self._counts[key] = (count + 1, at)
        self.written += written
        return written

    async def _within_limit(
        self, key: tuple[str, str], records: list[LogRecord]
    ) -> list[LogRecord]:
        """The records log_management lets in, after deleting the oldest if it says so."""
        gateway = await self.gateways.lookup(*key)
        config: dict[str, Any] = gateway.config if gateway is not None else {}
        limit = config.get("log_management")
        if not limit:
            return records
        count = await self._count(key)
        if config.get("log_management_strategy") == "DELETE_OLDEST":
            records = records[-limit:]
            excess = count + len(records) - limit
            if excess > 0:
                deleted = await log_repo.delete_oldest_logs(self.store, *key, excess)
                self._counts[key] = (count - deleted, self._counts[key][1])
            return records
        room = max(limit - count, 0)
        self.dropped += max(len(records) - room, 0)
        return records[:room]

    async def _count(self, key: tuple[str, str]) -> int:
        cached = self._counts.get(key)
        if cached is not None and time.monotonic() - cached[1] < COUNT_REFRESH_SECONDS:
            return cached[0]
        count = await log_repo.count_gateway_logs(self.store, *key)
        self._counts[key] = (count, time.monotonic())
        return count
