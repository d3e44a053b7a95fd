"""The request lifecycle for provider-native endpoints, as a short function of named steps.

    authenticate -> validate body -> resolve gateway -> choose credentials -> forward -> relay

Each step raises a `GatewayError` to refuse; nothing reaches the upstream or the database before
every check that can refuse has passed.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import orjson
from starlette.types import Receive, Send

from tollgate.api.auth import Principal, authorize
from tollgate.credentials import InboundCredentials, split_credentials, upstream_auth
from tollgate.errors import AuthenticationFailed, InvalidRequest, NotFound
from tollgate.providers.registry import PROVIDERS
from tollgate.services import Services
from tollgate.store import GatewayRecord
from tollgate.upstream import Upstream, UpstreamResponse, UpstreamStreamBroken

# Endpoints whose bodies are JSON objects; anything else (uploads, GETs) passes through as bytes.
_JSON_ENDPOINTS = re.compile(
    r"^(v1/)?(chat/completions|completions|responses|embeddings|messages(/count_tokens)?)$"
    r"|^v1(beta)?/models/[^/]+:(generateContent|streamGenerateContent|countTokens|embedContent"
    r"|batchEmbedContents)$"
)
_STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson")
_STREAMED_JSON_ENDPOINT = ":streamGenerateContent"


@dataclass(slots=True)
class NativeRequest:
    account_id: str
    gateway_id: str
    provider: str
    path: str  # after the provider slug, no leading slash
    method: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def proxy_native(
    services: Services,
    upstream: Upstream,
    request: NativeRequest,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    inbound = split_credentials(request.headers, request.query)
    principal = await authenticate(services, request.account_id, inbound)
    validate_body(request)
    gateway = await resolve_gateway(
        services, request.account_id, request.gateway_id, principal, inbound
    )
    if request.provider.startswith(CUSTOM_PREFIX):
        base_url, headers = await custom_provider_target(services, request, inbound)
    else:
        headers = choose_credentials(services, request.provider, inbound)
        base_url = services.providers[request.provider].base_url
    url = f"{base_url}/{request.path}" + (f"?{inbound.query}" if inbound.query else "")
    response = await upstream.send(
        provider=request.provider,
        method=request.method,
        url=url,
        headers=headers,
        body=request.body,
    )
    del gateway  # resolved for its checks; features (logs, limits) use it in later steps
    streamed = request.path.endswith(_STREAMED_JSON_ENDPOINT)
    await relay(response, receive, send, extra_headers, stream_json=streamed)


async def authenticate(
    services: Services, account_id: str, inbound: InboundCredentials
) -> Principal | None:
    """The caller's principal, with `run` on this account; None only for anonymous BYOK."""
    if inbound.token is None:
        if inbound.provider_key:
            return None  # allowed only on a gateway with authentication off; checked next
        raise AuthenticationFailed(
            "Missing tollgate API token. Send it as 'cf-aig-authorization: Bearer tg_...' "
            "or as the SDK's api_key.",
            code="missing_token",
        )
    principal = await services.tokens.verify(inbound.token)
    authorize(principal, account_id, "run")
    return principal


def validate_body(request: NativeRequest) -> None:
    """JSON endpoints must get a JSON object; malformed input never reaches an upstream."""
    if request.method == "POST" and _JSON_ENDPOINTS.match(request.path):
        parse_json_object(request.headers, request.body, request.path)


def parse_json_object(
    headers: list[tuple[bytes, bytes]], body: bytes, path: str
) -> dict[str, object]:
    """The body as a JSON object, or a 400 saying what is wrong with it."""
    content_type = next((v for k, v in headers if k == b"content-type"), b"")
    if not content_type.split(b";")[0].strip().lower() == b"application/json":
        raise InvalidRequest(
            f"Expected 'content-type: application/json' for {path}, got "
            f"'{content_type.decode('latin-1') or 'none'}'.",
            code="invalid_content_type",
        )
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}.", code="invalid_json"
        ) from None
    if not isinstance(parsed, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return parsed


async def resolve_gateway(
    services: Services,
    account_id: str,
    gateway_id: str,
    principal: Principal | None,
    inbound: InboundCredentials,
) -> GatewayRecord:
    if principal is not None:
        return await services.gateways.resolve(account_id, gateway_id)
    gateway = await services.gateways.lookup(account_id, gateway_id)
    if gateway is None or gateway.config.get("authentication", True):
        raise AuthenticationFailed(
            "This gateway requires a tollgate API token. Send it as "
            "'cf-aig-authorization: Bearer tg_...'.",
            code="missing_token",
        )
    return gateway


CUSTOM_PREFIX = "custom-"


async def custom_provider_target(
    services: Services, request: NativeRequest, inbound: InboundCredentials
) -> tuple[str, list[tuple[str, str]]]:
    """An account's own `custom-{slug}` provider: its base URL, and the client's headers plus
    the provider's stored ones (those the client did not send itself). Never Unified Billing:
    the account's stored headers carry its own credentials."""
    slug = request.provider.removeprefix(CUSTOM_PREFIX)
    provider = await services.custom_providers.resolve(request.account_id, slug)
    if provider is None or not provider.enable:
        state = "is disabled" if provider is not None else "does not exist in this account"
        raise NotFound(
            f"The custom provider '{slug}' {state}. Manage it under "
            f"/client/v4/accounts/{request.account_id}/ai-gateway/custom-providers.",
            code="provider_not_found",
        )
    sent = {name for name, _ in inbound.headers}
    return provider.base_url, inbound.headers + [h for h in provider.headers if h[0] not in sent]


def choose_credentials(
    services: Services, provider: str, inbound: InboundCredentials
) -> list[tuple[str, str]]:
    """The client's own provider key passes through; otherwise the managed key is injected."""
    target = services.providers.get(provider)
    if inbound.provider_key:
        return inbound.headers
    return [*inbound.headers, *upstream_auth(PROVIDERS[provider], target)]


async def relay(
    response: UpstreamResponse,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
    *,
    stream_json: bool = False,
) -> None:
    """Send the upstream's status, headers and bytes to the client, unchanged.

    Event streams (and `stream_json` bodies: Gemini's streamed JSON array) are relayed chunk
    by chunk as they arrive. Any other body is read whole first, so an upstream that breaks
    off mid-body is a clean 502 rather than half a JSON document under a 200.
    """
    headers = response.headers + extra_headers
    streaming = response.content_type.startswith(_STREAM_TYPES) or (
        stream_json and response.status < 400
    )
    if not streaming:
        try:
            body = await response.read()
        finally:
            response.release()
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    watcher = asyncio.ensure_future(close_on_disconnect(receive, response))
    try:
        async for chunk in response.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamStreamBroken as exc:
        if not watcher.done():
            await send(
                {
                    "type": "http.response.body",
                    "body": _stream_error_event(str(exc)),
                    "more_body": True,
                }
            )
    finally:
        watcher.cancel()
        response.release()
    await send({"type": "http.response.body", "body": b""})


async def close_on_disconnect(receive: Receive, response: UpstreamResponse) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    response.close()  # stops the relay loop and frees the upstream connection


def _stream_error_event(cause: str) -> bytes:
    error = {
        "error": {
            "message": f"The upstream stream broke before it finished: {cause}",
            "type": "api_error",
            "code": "upstream_stream_broken",
        }
    }
    return b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
