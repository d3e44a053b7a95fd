"""The data plane: `/v1/{account_id}/{gateway_id}/{provider}/{path}`, as raw ASGI.

This module turns ASGI into a `NativeRequest` (route, body within limits) and renders any
`GatewayError` in the format of the provider the client called. `tollgate.pipeline` does the rest.
The request limits (`tollgate.request_limits`: headers 431, body size 413, a body that trickles
in 408, JSON depth and message count 400) are checked here, before the gateway is resolved, so a
refused request holds nothing and is not logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Literal

from starlette.types import Message, Receive, Scope, Send

from tollgate.ai_run import EnvelopeSend, run_body
from tollgate.api.render import ERROR_RENDERERS, dumps, error_headers
from tollgate.client_formats import ANTHROPIC_MESSAGES, OPENAI_CHAT, ClientFormat
from tollgate.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from tollgate.features.context import RequestContext
from tollgate.features.custom_cost import read_custom_cost
from tollgate.features.headers import gateway_headers
from tollgate.features.logs import LogCapture
from tollgate.features.metadata import read_event_id, read_metadata
from tollgate.features.universal import proxy_universal
from tollgate.ids import ACCOUNT_ID, CUSTOM_PROVIDER, GATEWAY_ID
from tollgate.pipeline import NativeRequest, proxy_native
from tollgate.providers.registry import PROVIDERS
from tollgate.request_limits import (
    RequestLimits,
    body_timeout,
    check_headers,
    check_json_shape,
)
from tollgate.services import Services
from tollgate.store.engine import DATABASE_ERRORS, unreachable
from tollgate.unified import (
    UnifiedRequest,
    list_models,
    proxy_embeddings,
    proxy_responses,
    proxy_unified,
)
from tollgate.upstream import Upstream

_ENCODED_TRAVERSAL = re.compile(rb"%2e|%2f|%5c", re.IGNORECASE)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Route:
    account_id: str
    gateway_id: str
    provider: str
    path: str


class DataPlane:
    def __init__(self, services: Services, upstream: Upstream) -> None:
        self.services = services
        self.upstream = upstream
        self.max_body = services.settings.server.max_body_bytes
        self.limits = RequestLimits.from_settings(services.settings.server)
        self.allow_custom_cost_unified = services.settings.billing.allow_custom_cost_unified
        self.logs = services.logs
        self.metrics = services.metrics
        sandbox = services.settings.sandbox_mode
        self.extra_headers: list[tuple[bytes, bytes]] = (
            [(b"x-tollgate-sandbox", b"simulated")] if sandbox else []
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`/v1/{account_id}/{gateway_id}/{provider or compat}/{path}`."""
        wire = "openai"
        extra = self.extra_headers
        capture: LogCapture | None = None
        try:
            route = parse_route(scope)
            wire = PROVIDERS[route.provider].wire if route.provider in PROVIDERS else "openai"
            check_headers(scope["headers"], self.limits)
            ctx = RequestContext(route.account_id, route.gateway_id)
            extra = [*extra, (b"cf-aig-log-id", ctx.log_id.encode())]
            kind = route.provider if route.provider in (COMPAT, UNIVERSAL) else "native"
            cf = gateway_headers(scope["headers"])  # the one pass every feature reads
            capture = self.logs.capture(
                ctx, scope["headers"], send, receive, request_type=kind, path=route.path, cf=cf
            )
            send, receive = capture.send, capture.receive
            self._read_feature_headers(ctx, cf)
            if route.provider == COMPAT:
                await self._unified(scope, receive, send, route, COMPAT_FORMATS, "compat", ctx, cf)
                return
            body = await self._read_body(scope, receive)
            request = NativeRequest(
                account_id=route.account_id,
                gateway_id=route.gateway_id,
                provider=route.provider,
                path=route.path,
                method=scope["method"],
                query=scope["query_string"],
                headers=scope["headers"],
                body=body,
                ctx=ctx,
                feature_headers=cf,
            )
            handler = proxy_universal if route.provider == UNIVERSAL else proxy_native
            await handler(self.services, self.upstream, request, receive, send, extra)
        except GatewayError as error:
            if capture is None:  # refused before it had a context (metrics.py)
                self.metrics.observe_unrouted(error.status)
            await send_error(send, error, wire, extra)
        except DATABASE_ERRORS as down:
            if not unreachable(down) or (capture is not None and capture.status is not None):
                raise  # a bug (a 500), or the answer has started: nothing to render it into
            await send_error(send, database_unreachable(down), wire, extra)
        finally:
            if capture is not None:  # off the hot path: queued for the log writer
                # Metrics for every request, logged or not: a few dict increments, no I/O.
                self.metrics.observe(capture.ctx, capture.status)
                self.logs.submit(capture)

    async def rest(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`/client/v4/accounts/{account_id}/ai/{path}`: the gateway comes from a header."""
        wire = "anthropic" if scope["path"].endswith("/ai/v1/messages") else "openai"
        extra = self.extra_headers
        capture: LogCapture | None = None
        try:
            route = parse_rest_route(scope)
            check_headers(scope["headers"], self.limits)
            ctx = RequestContext(route.account_id, route.gateway_id)
            extra = [*extra, (b"cf-aig-log-id", ctx.log_id.encode())]
            cf = gateway_headers(scope["headers"])  # the one pass every feature reads
            capture = self.logs.capture(
                ctx, scope["headers"], send, receive, request_type="rest", path=route.path, cf=cf
            )
            send, receive = capture.send, capture.receive
            self._read_feature_headers(ctx, cf)
            await self._unified(scope, receive, send, route, REST_FORMATS, "rest", ctx, cf)
        except GatewayError as error:
            if capture is None:  # refused before it had a context (metrics.py)
                self.metrics.observe_unrouted(error.status)
            await send_error(send, error, wire, extra)
        except DATABASE_ERRORS as down:
            if not unreachable(down) or (capture is not None and capture.status is not None):
                raise  # a bug (a 500), or the answer has started: nothing to render it into
            await send_error(send, database_unreachable(down), wire, extra)
        finally:
            if capture is not None:
                # Metrics for every request, logged or not: a few dict increments, no I/O.
                self.metrics.observe(capture.ctx, capture.status)
                self.logs.submit(capture)

    def _read_feature_headers(self, ctx: RequestContext, cf: list[tuple[bytes, bytes]]) -> None:
        """Metadata, event id and custom cost, read once: a bad value is a 400 before anything
        is stored or sent. `cf`: the request's `cf-*` headers (`gateway_headers`)."""
        if not cf:
            return  # none sent (most requests): the context's defaults already say so
        ctx.metadata = read_metadata(cf)
        ctx.event_id = read_event_id(cf)
        allowed = self.allow_custom_cost_unified
        ctx.custom_rates = read_custom_cost(cf, unified_allowed=allowed)
        ctx.custom_cost = ctx.custom_rates is not None

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The body within the size, time and JSON shape limits (`tollgate.request_limits`)."""
        limits = self.limits
        body = await read_body(scope, receive, self.max_body, limits.body_timeout_seconds)
        check_json_shape(scope["headers"], body, limits)
        return body

    async def _unified(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: _Route,
        formats: dict[str, ClientFormat],
        surface: Literal["compat", "rest"],
        ctx: RequestContext,
        cf: list[tuple[bytes, bytes]],
    ) -> None:
        extra = [*self.extra_headers, (b"cf-aig-log-id", ctx.log_id.encode())]
        client = formats.get(route.path)
        if surface == "compat" and route.path == "models" and scope["method"] == "GET":
            request = UnifiedRequest(
                route.account_id,
                route.gateway_id,
                route.path,
                scope["headers"],
                scope["query_string"],
                b"",
                OPENAI_CHAT,
                surface,
                ctx,
                cf,
            )
            await list_models(self.services, request, send, extra)
            return
        if client is None or scope["method"] != "POST":
            known = ", ".join(f"POST {path}" for path in formats)
            raise NotFound(
                f"No such Unified API endpoint: {scope['method']} {route.path}. Known: {known}.",
                code="route_not_found",
            )
        body = await self._read_body(scope, receive)
        path = route.path
        if surface == "rest" and path == "run":
            path, body = run_body(scope["headers"], body)  # chat/completions or embeddings
            send = EnvelopeSend(send)
        request = UnifiedRequest(
            account_id=route.account_id,
            gateway_id=route.gateway_id,
            path=path,
            headers=scope["headers"],
            query=scope["query_string"],
            body=body,
            client=client,
            surface=surface,
            ctx=ctx,
            feature_headers=cf,
        )
        handler = _HANDLERS.get(path, proxy_unified)
        await handler(self.services, self.upstream, request, receive, send, extra)


COMPAT = "compat"
UNIVERSAL = "universal"  # the route of `/v1/{account}/{gateway}`; never a provider segment
COMPAT_FORMATS = {"chat/completions": OPENAI_CHAT, "embeddings": OPENAI_CHAT}
REST_FORMATS = {
    "v1/chat/completions": OPENAI_CHAT,
    "v1/messages": ANTHROPIC_MESSAGES,
    "v1/responses": OPENAI_CHAT,  # errors in OpenAI's format; the body is relayed as is
    "run": OPENAI_CHAT,  # the envelope is unwrapped to a chat or embeddings request (ai_run)
}
_HANDLERS = {"embeddings": proxy_embeddings, "v1/responses": proxy_responses}


def parse_rest_route(scope: Scope) -> _Route:
    parts = scope["path"].split("/", 6)  # ['', 'client', 'v4', 'accounts', account, 'ai', rest]
    account_id, rest = parts[4], parts[6] if len(parts) == 7 else ""
    if not ACCOUNT_ID.fullmatch(account_id):
        raise NotFound(
            f"'{account_id}' is not an account id: ids are 32 lowercase hex characters.",
            code="account_not_found",
        )
    gateway_id = next(
        (v.decode("latin-1") for k, v in scope["headers"] if k == b"cf-aig-gateway-id"),
        "default",
    )
    if not GATEWAY_ID.fullmatch(gateway_id):
        raise InvalidRequest(
            f"cf-aig-gateway-id '{gateway_id}' is not a gateway id: up to 64 characters of "
            "a-z, 0-9, - and _.",
            code="invalid_gateway_id",
        )
    return _Route(account_id, gateway_id, COMPAT, rest)


def parse_route(scope: Scope) -> _Route:
    parts = scope["path"].split("/", 5)  # ['', 'v1', account, gateway, provider, rest]
    # `/v1/{account_id}/{gateway_id}` (a trailing slash allowed) is the Universal endpoint.
    universal = len(parts) == 4 or (len(parts) == 5 and not parts[4])
    if not universal and (len(parts) < 5 or not parts[4]):
        raise NotFound(
            "Unknown route. Use /v1/{account_id}/{gateway_id}/{provider}/{path}, "
            "for example /v1/<account>/default/openai/chat/completions.",
            code="route_not_found",
        )
    account_id, gateway_id = parts[2], parts[3]
    provider = UNIVERSAL if universal else parts[4]
    rest = parts[5] if len(parts) == 6 else ""
    if not ACCOUNT_ID.fullmatch(account_id):
        raise NotFound(
            f"'{account_id}' is not an account id: ids are 32 lowercase hex characters.",
            code="account_not_found",
        )
    if not GATEWAY_ID.fullmatch(gateway_id):
        raise NotFound(
            f"'{gateway_id}' is not a gateway id: up to 64 characters of a-z, 0-9, - and _.",
            code="gateway_not_found",
        )
    if universal:
        return _Route(account_id, gateway_id, UNIVERSAL, "")
    if provider not in PROVIDERS and provider != COMPAT and not CUSTOM_PROVIDER.fullmatch(provider):
        raise NotFound(
            f"Unknown provider '{provider}'. Known providers: {', '.join(PROVIDERS)}.",
            code="provider_not_found",
        )
    segments = rest.split("/")
    raw_path: bytes = scope.get("raw_path") or b""
    if (
        any(s in (".", "..") for s in segments)
        or "\\" in rest
        or _ENCODED_TRAVERSAL.search(raw_path)
    ):
        raise InvalidRequest(
            "The provider path may not contain '.', '..', backslashes or encoded slashes.",
            code="invalid_path",
        )
    return _Route(account_id, gateway_id, provider, rest)


async def read_body(
    scope: Scope, receive: Receive, limit: int, timeout: float | None = None
) -> bytes:
    """The whole request body, refusing (413) anything over `limit` before reading it all, with
    or without content-length, and (408) a body still incomplete `timeout` seconds after the
    request started, however slowly it trickles in.

    The deadline is armed only once the body turns out to come in pieces: most bodies arrive
    with their headers, and a timer for each of them would cost ~5 µs a request. A client that
    sends no byte of its body at all is cut by the server (`tollgate.http_protocol`)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(limit)
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    chunks: list[bytes] = []
    size = _take_chunk(await receive(), chunks, 0, limit)
    if size < 0:
        return chunks[0]
    try:
        async with asyncio.timeout_at(deadline):
            while size >= 0:
                size = _take_chunk(await receive(), chunks, size, limit)
    except TimeoutError:
        assert timeout is not None
        raise body_timeout(timeout) from None
    return b"".join(chunks)


def _take_chunk(message: Message, chunks: list[bytes], size: int, limit: int) -> int:
    """Append the message's piece of the body; the size so far, or -1 after the last piece."""
    if message["type"] == "http.disconnect":
        raise InvalidRequest("The client disconnected while sending the body.")
    chunk = message.get("body", b"")
    size += len(chunk)
    if size > limit:
        raise _too_large(limit)
    chunks.append(chunk)
    return -1 if not message.get("more_body", False) else size


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than this gateway's limit of {limit} bytes. "
        "Send a smaller request, or ask the operator to raise server.max_body_bytes.",
    )


def database_unreachable(down: BaseException) -> ServiceUnavailable:
    """The 503 for a request the gateway could not admit because its database is unreachable:
    nothing was forwarded (the hold comes first), so the client may simply retry."""
    log.warning("database unreachable, request refused with 503: %r", down)
    return ServiceUnavailable(
        "The gateway cannot reach its database, so it cannot bill this request; nothing was "
        "sent to the provider. Retry in a few seconds.",
        code="ledger_unavailable",
    )


async def send_error(
    send: Send, error: GatewayError, wire: str, extra: list[tuple[bytes, bytes]]
) -> None:
    body = dumps(ERROR_RENDERERS[wire](error))
    headers = error_headers(error) + extra
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
