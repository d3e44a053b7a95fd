"""OpenTelemetry export: one span per data-plane request of a gateway with `otel` exporters.

    LogWriter.submit (features/logs.py), as the request ends:
        gateway.config["otel"] set? -> SpanExporter.offer(capture, exporters): one append, no I/O
    SpanExporter's task, every [otel] flush_interval_ms (or at BATCH_SIZE waiting):
        build the spans, group them by exporter, POST each group (OTLP/HTTP, JSON or protobuf)

A gateway's `otel` setting is Cloudflare's: a list of `{url, headers, authorization?,
content_type?: "json" | "protobuf"}` (validated in gateway_config.py). `url` is the collector's
full traces endpoint (`https://collector.example/v1/traces`), `authorization` is sent as the
`Authorization` header, `headers` as they are.

The span follows the GenAI semantic conventions: named `{operation} {model}` (`chat gpt-4o-mini`,
`embeddings ...`), kind SERVER, with `gen_ai.operation.name`, `gen_ai.system` (and its newer
name `gen_ai.provider.name`, and Cloudflare's `gen_ai.model.provider`), `gen_ai.request.model`,
`gen_ai.usage.input_tokens` / `output_tokens`, `gen_ai.usage.cost` (USD, Cloudflare's),
`http.response.status_code`, `error.type` for 4xx/5xx, tollgate's own `tollgate.*` (log id,
gateway, account, cached, credential source...) and the request's `cf-aig-metadata` entries as
they are (Cloudflare's; `gen_ai.*` keys and names already used are skipped). Prompts and
completions are not exported: they stay in the request log. The status is ERROR for 5xx or no
response, unset otherwise (the conventions for server spans).

Trace context: `cf-aig-otel-trace-id` (32 hex) and `cf-aig-otel-parent-span-id` (16 hex), as on
Cloudflare, else a W3C `traceparent` header; without them (or when malformed: tracing never
fails a request) each span starts a trace of its own.

Never on the request's path: the queue is bounded (`max_pending`, the oldest dropped and
counted), an export is abandoned after `timeout_seconds` and its collector skipped for
`BACKOFF_SECONDS` (its spans dropped and counted), so a dead collector costs a request nothing.
The account chooses the collector's URL, so exports go through the upstream's guarded pool
(tollgate/netguard.py): public addresses only, plus the operator's `[upstream]
allowed_private_networks` (a collector beside the gateway), checked as each socket opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tollgate.errors import GatewayError
from tollgate.features.context import RequestContext
from tollgate.features.otel_wire import (
    CONTENT_TYPES,
    STATUS_ERROR,
    STATUS_UNSET,
    AttributeValue,
    Span,
    encode,
)
from tollgate.money import to_dollars_float
from tollgate.settings import OtelSettings, UpstreamSettings
from tollgate.upstream import Upstream

if TYPE_CHECKING:
    from tollgate.features.logs import LogCapture

log = logging.getLogger(__name__)

BATCH_SIZE = 512
BACKOFF_SECONDS = 30.0
WARN_EVERY_SECONDS = 60.0  # per collector: a dead one must not flood the process log
POOL_SIZE = 32
_ADDRESS_REFUSED = "upstream_address_refused"  # tollgate.upstream's code for netguard's refusal
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_TRACE_ID = b"cf-aig-otel-trace-id"
_PARENT_SPAN_ID = b"cf-aig-otel-parent-span-id"
_TRACEPARENT = b"traceparent"


@dataclass(frozen=True, slots=True)
class Finished:
    """What `offer` keeps of a request: references and two clock readings, nothing built."""

    ctx: RequestContext
    status: int | None
    request_type: str
    path: str
    headers: list[tuple[bytes, bytes]]
    exporters: list[dict[str, Any]]
    end_ns: int
    elapsed_ns: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One collector as a gateway configures it (two gateways may share one)."""

    url: str
    content_type: str
    headers: tuple[tuple[str, str], ...]

    @classmethod
    def from_config(cls, exporter: dict[str, Any]) -> Endpoint:
        headers = dict(exporter.get("headers") or {})
        if exporter.get("authorization"):
            headers["authorization"] = exporter["authorization"]
        content_type = exporter.get("content_type") or "json"
        headers["content-type"] = CONTENT_TYPES[content_type]
        return cls(exporter["url"], content_type, tuple(sorted(headers.items())))

    @property
    def shown(self) -> str:
        """The URL without credentials or query, for the process log."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class SpanExporter:
    """Queues finished requests and sends them as spans from a background task."""

    def __init__(self, settings: OtelSettings, upstream: UpstreamSettings) -> None:
        self.settings = settings
        # A pool of its own, so spans never wait for (or hold) a provider connection; the
        # operator's upstream settings (its allowed networks) apply to it as they are.
        self._http = Upstream(
            upstream.model_copy(
                update={
                    "connect_timeout_seconds": settings.timeout_seconds,
                    "first_byte_timeout_seconds": settings.timeout_seconds,
                    "pool_size": POOL_SIZE,
                }
            )
        )
        self._pending: deque[Finished] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._backoff_until: dict[Endpoint, float] = {}
        self._warned_at: dict[str, float] = {}
        # Counted in spans (a span sent to two collectors counts twice): observability, tests.
        self.exported = 0
        self.dropped = 0  # the queue was full
        self.failed = 0  # the collector failed, timed out, or was backing off
        self.refused = 0  # the collector's address is not allowed (netguard.py)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # --- the request's side: no I/O --------------------------------------------------------

    def offer(self, capture: LogCapture, exporters: list[dict[str, Any]]) -> None:
        """Queue the request for its gateway's collectors. Never raises into the request."""
        ctx = capture.ctx
        end_ns = time.time_ns()
        elapsed_ns = int((time.monotonic() - ctx.started) * 1e9)
        if len(self._pending) >= self.settings.max_pending:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(
            Finished(
                ctx,
                capture.status,
                capture.request_type,
                capture.path,
                capture.headers,
                exporters,
                end_ns,
                elapsed_ns,
            )
        )
        if len(self._pending) >= BATCH_SIZE:
            self._wake.set()

    # --- the background side ---------------------------------------------------------------

    async def start(self) -> None:
        await self._http.start()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="tollgate-otel-export")

    async def aclose(self) -> None:
        """Send what is waiting (each export bounded by the timeout), then stop."""
        task, self._task = self._task, None
        if task is not None:
            self._closing = True
            self._wake.set()
            await task
        try:
            while self._pending:
                await self.export_batch()
        finally:
            await self._http.close()

    async def _run(self) -> None:
        interval = self.settings.flush_interval_ms / 1000
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            self._wake.clear()
            while self._pending and not self._closing:
                await self.export_batch()

    async def export_batch(self) -> None:
        """Send up to BATCH_SIZE waiting spans, to every collector concurrently."""
        batch = [self._pending.popleft() for _ in range(min(BATCH_SIZE, len(self._pending)))]
        groups: dict[Endpoint, list[Span]] = {}
        for finished in batch:
            try:
                span = build_span(finished)
                endpoints = [Endpoint.from_config(e) for e in finished.exporters]
            except Exception:  # a span must never stop the others
                log.exception("building an OpenTelemetry span failed")
                continue
            for endpoint in endpoints:
                groups.setdefault(endpoint, []).append(span)
        await asyncio.gather(*(self._send(e, spans) for e, spans in groups.items()))

    async def _send(self, endpoint: Endpoint, spans: list[Span]) -> None:
        if self._backoff_until.get(endpoint, 0.0) > time.monotonic():
            self.failed += len(spans)
            return
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                response = await self._http.send(
                    provider="otel",
                    method="POST",
                    url=endpoint.url,
                    headers=endpoint.headers,
                    body=encode(spans, endpoint.content_type),
                    account_chosen=True,
                )
                try:
                    body = await response.read()
                finally:
                    response.release()
        except GatewayError as exc:
            if exc.code == _ADDRESS_REFUSED:
                self.refused += len(spans)
                self._backoff_until[endpoint] = time.monotonic() + BACKOFF_SECONDS
                self._warn(endpoint, f"not sent: {exc}")
            else:
                self._fail(endpoint, len(spans), str(exc))
            return
        except TimeoutError:
            self._fail(endpoint, len(spans), f"no answer within {self.settings.timeout_seconds} s")
            return
        except Exception as exc:  # a header the HTTP client refuses, ...
            self._fail(endpoint, len(spans), f"{type(exc).__name__}: {exc}")
            return
        if 200 <= response.status < 300:
            self.exported += len(spans)
            self._backoff_until.pop(endpoint, None)
        else:
            answer = body[:200].decode("utf-8", "replace")
            self._fail(endpoint, len(spans), f"HTTP {response.status}: {answer}")

    def _fail(self, endpoint: Endpoint, count: int, problem: str) -> None:
        self.failed += count
        self._backoff_until[endpoint] = time.monotonic() + BACKOFF_SECONDS
        self._warn(endpoint, f"{count} spans lost ({problem}); retrying in {BACKOFF_SECONDS:g} s")

    def _warn(self, endpoint: Endpoint, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at.get(endpoint.url, -WARN_EVERY_SECONDS) >= WARN_EVERY_SECONDS:
            self._warned_at[endpoint.url] = now
            log.warning("OpenTelemetry collector %s: %s", endpoint.shown, message)


# --- spans ------------------------------------------------------------------------------------


def build_span(finished: Finished) -> Span:
    ctx, status = finished.ctx, finished.status
    trace_id, parent_span_id = trace_context(finished.headers)
    operation = "embeddings" if "embed" in (ctx.path or finished.path).lower() else "chat"
    error = status is None or status >= 500
    return Span(
        trace_id=trace_id or random.getrandbits(128).to_bytes(16, "big"),
        span_id=random.getrandbits(64).to_bytes(8, "big"),
        parent_span_id=parent_span_id or b"",
        name=f"{operation} {ctx.model}" if ctx.model else operation,
        start_ns=finished.end_ns - finished.elapsed_ns,
        end_ns=finished.end_ns,
        attributes=tuple(_attributes(finished, operation)),
        status_code=STATUS_ERROR if error else STATUS_UNSET,
        status_message=("no response" if status is None else f"HTTP {status}") if error else "",
    )


def _attributes(finished: Finished, operation: str) -> Iterable[tuple[str, AttributeValue]]:
    ctx, status = finished.ctx, finished.status
    optional: list[tuple[str, AttributeValue | None]] = [
        ("gen_ai.operation.name", operation),
        ("gen_ai.system", ctx.provider),
        ("gen_ai.provider.name", ctx.provider),
        ("gen_ai.model.provider", ctx.provider),
        ("gen_ai.request.model", ctx.model),
        ("gen_ai.usage.input_tokens", ctx.tokens_in),
        ("gen_ai.usage.output_tokens", ctx.tokens_out),
        ("gen_ai.usage.cost", None if ctx.cost_nanos is None else to_dollars_float(ctx.cost_nanos)),
        ("http.response.status_code", status),
        ("error.type", str(status) if status is not None and status >= 400 else None),
        ("tollgate.log_id", ctx.log_id),
        ("tollgate.account_id", ctx.account_id),
        ("tollgate.gateway_id", ctx.gateway_id),
        ("tollgate.request_type", finished.request_type),
        ("tollgate.cached", ctx.cached),
        ("tollgate.credential_source", ctx.credential_source),
        ("tollgate.cost_estimated", ctx.cost_estimated or None),
        ("tollgate.zdr", ctx.zdr or None),
        ("tollgate.event_id", ctx.event_id),
    ]
    attributes = {key: value for key, value in optional if value is not None}
    for key, value in ctx.metadata.items():
        if not key.startswith("gen_ai.") and key not in attributes:
            attributes[key] = value
    return attributes.items()


def trace_context(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    """The trace id and parent span id the client sent, as bytes; None for each one missing
    or malformed (then the span starts its own trace)."""
    found: dict[bytes, str] = {}
    for name, value in headers:
        if name in (_TRACE_ID, _PARENT_SPAN_ID, _TRACEPARENT):
            found[name] = value.decode("latin-1").strip().lower()
    trace_id, parent = found.get(_TRACE_ID), found.get(_PARENT_SPAN_ID)
    if trace_id is None and _TRACEPARENT in found:  # W3C: version-traceid-parentid-flags
        fields = found[_TRACEPARENT].split("-")
        if len(fields) >= 4:
            trace_id, parent = fields[1], fields[2]
    valid_trace = trace_id is not None and _HEX32.fullmatch(trace_id) and set(trace_id) != {"0"}
    if not valid_trace:
        return None, None
    assert trace_id is not None
    valid_parent = parent is not None and _HEX16.fullmatch(parent) and set(parent) != {"0"}
    return bytes.fromhex(trace_id), bytes.fromhex(parent) if valid_parent and parent else None
