"""The request lifecycle for provider-native endpoints, as a short function of named steps.

    authenticate -> validate body -> resolve gateway -> choose credentials -> forward -> relay

Each step raises a `GatewayError` to refuse; nothing reaches the upstream or the database before
every check that can refuse has passed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson
from starlette.types import Receive, Send

from tollgate.admission import admit
from tollgate.api.auth import Principal, authorize
from tollgate.billing.requests import native_facts
from tollgate.billing.watch import UsageWatch
from tollgate.credentials import InboundCredentials, split_credentials, upstream_auth
from tollgate.errors import AuthenticationFailed, InvalidRequest, NotFound
from tollgate.features.context import RequestContext
from tollgate.providers.registry import PROVIDERS
from tollgate.relay import relay, send_upstream
from tollgate.services import Services
from tollgate.store import GatewayRecord
from tollgate.upstream import Upstream

# Endpoints whose bodies are JSON objects; anything else (uploads, GETs) passes through as bytes.
_JSON_ENDPOINTS = re.compile(
    r"^(v1/)?(chat/completions|completions|responses|embeddings|messages(/count_tokens)?)$"
    r"|^v1(beta)?/models/[^/]+:(generateContent|streamGenerateContent|countTokens|embedContent"
    r"|batchEmbedContents)$"
)
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
    ctx: RequestContext


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
    parsed = validate_body(request)
    gateway = await resolve_gateway(
        services, request.account_id, request.gateway_id, principal, inbound
    )
    watch: UsageWatch | None = None
    body = request.body
    if request.provider.startswith(CUSTOM_PREFIX):
        base_url, headers = await custom_provider_target(services, request, inbound)
    else:
        headers = choose_credentials(services, request.provider, inbound)
        base_url = services.providers[request.provider].base_url
        row = PROVIDERS[request.provider]
        admitted = await admit(
            services,
            account_id=request.account_id,
            gateway=gateway,
            row=row,
            facts=native_facts(row.wire, request.path, parsed),
            parsed=parsed,
            body=request.body,
            unified=not inbound.provider_key,
            ctx=request.ctx,
        )
        watch, body = admitted.watch, admitted.body
        extra_headers = extra_headers + admitted.headers
    url = f"{base_url}/{request.path}" + (f"?{inbound.query}" if inbound.query else "")
    response = await send_upstream(
        upstream,
        watch,
        provider=request.provider,
        method=request.method,
        url=url,
        headers=headers,
        body=body,
    )
    streamed = request.path.endswith(_STREAMED_JSON_ENDPOINT)
    await relay(response, receive, send, extra_headers, stream_json=streamed, watch=watch)


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


def validate_body(request: NativeRequest) -> dict[str, object] | None:
    """JSON endpoints must get a JSON object; malformed input never reaches an upstream."""
    if request.method == "POST" and _JSON_ENDPOINTS.match(request.path):
        return parse_json_object(request.headers, request.body, request.path)
    return None


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
