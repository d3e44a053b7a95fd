"""The request lifecycle for provider-native endpoints, as a short function of named steps.

    authenticate -> validate body -> resolve gateway -> rate limit -> cache lookup (a hit is
        replayed here) -> choose credentials -> forward -> relay (a miss is stored)

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
from tollgate.credentials import (
    Chosen,
    CredentialOptions,
    InboundCredentials,
    choose_upstream,
    credential_options,
    split_credentials,
    zdr_response_header,
)
from tollgate.errors import AuthenticationFailed, InvalidRequest, NotFound
from tollgate.features.context import RequestContext
from tollgate.features.headers import gateway_headers
from tollgate.features.logs import native_model
from tollgate.features.ratelimit import gateway_limit
from tollgate.features.response_cache import cache_options, key_parts
from tollgate.features.retry import fall_back, read_retry_headers, retry_policy
from tollgate.providers.registry import PROVIDERS, ProviderRow
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
    # A Universal step with a later step to fall back to: an upstream error answer is not
    # relayed but raised as `FallbackNeeded` (its hold released), so the next step answers.
    fallback: bool = False
    # The request's `cf-*` headers (`features.headers.gateway_headers`), when the data plane
    # already collected them; None (a Universal step's own headers): collected here.
    feature_headers: list[tuple[bytes, bytes]] | None = None


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
    request.ctx.provider, request.ctx.model = request.provider, native_model(request.path, parsed)
    cf = request.feature_headers
    if cf is None:
        cf = gateway_headers(request.headers)
    # Each reader scans only the `cf-*` headers: usually none, so each is next to free.
    options = credential_options(cf)
    retry = read_retry_headers(cf)
    caching = cache_options(cf)
    gateway = await enter_gateway(
        services, request.account_id, request.gateway_id, principal, inbound, request.ctx
    )
    cache = await services.response_cache.open(
        caching, gateway, request.method, lambda: native_cache_parts(request, inbound)
    )
    if await cache.served(send, extra_headers, request.ctx):
        return  # a hit: no hold, no ledger entry, no upstream call
    send, extra_headers = cache.capture(send), extra_headers + cache.headers
    watch: UsageWatch | None = None
    body = request.body
    if request.provider.startswith(CUSTOM_PREFIX):
        base_url, headers = await custom_provider_target(services, request, inbound)
    else:
        row = PROVIDERS[request.provider]
        chosen = await choose_credentials(services, request, gateway, row, inbound, options)
        headers, base_url = [*inbound.headers, *chosen.auth], chosen.base_url
        admitted = await admit(
            services,
            account_id=request.account_id,
            gateway=gateway,
            row=row,
            facts=native_facts(row.wire, request.path, parsed),
            parsed=parsed,
            body=request.body,
            unified=chosen.unified,
            ctx=request.ctx,
        )
        watch, body = admitted.watch, admitted.body
        extra_headers = [*extra_headers, *admitted.headers, zdr_response_header(request.ctx)]
    url = f"{base_url}/{request.path}" + (f"?{inbound.query}" if inbound.query else "")
    response = await send_upstream(
        upstream,
        watch,
        retry_policy(retry, gateway.config),
        provider=request.provider,
        method=request.method,
        url=url,
        headers=headers,
        body=body,
    )
    response = cache.observe(response)
    if request.fallback and response.status >= 400:
        await fall_back(response, watch)
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


def native_cache_parts(request: NativeRequest, inbound: InboundCredentials) -> list[bytes]:
    """What identifies a native request's answer in the response cache."""
    return key_parts(
        endpoint=f"native:{request.provider}/{request.path}",
        method=request.method,
        query=inbound.query,
        credential=inbound.provider_key_value if inbound.provider_key else None,
        headers=request.headers,
        body=request.body,
    )


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


async def enter_gateway(
    services: Services,
    account_id: str,
    gateway_id: str,
    principal: Principal | None,
    inbound: InboundCredentials,
    ctx: RequestContext,
) -> GatewayRecord:
    """The gateway step of every surface: resolve the gateway, mark the request as authorized
    for it (it is logged there from now on), and count it against the gateway's rate limit (a
    429 before the cache and billing). A Universal fallback step is the same request: counted
    once. No await at all when the gateway sets no limit (most requests)."""
    gateway = await resolve_gateway(services, account_id, gateway_id, principal, inbound)
    ctx.gateway = gateway
    if not ctx.step and gateway_limit(gateway) is not None:
        await services.rate_limiter.enforce(gateway)
    return gateway


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


async def choose_credentials(
    services: Services,
    request: NativeRequest,
    gateway: GatewayRecord,
    row: ProviderRow,
    inbound: InboundCredentials,
    options: CredentialOptions,
) -> Chosen:
    """The client's own provider key passes through as sent (BYOK); otherwise the gateway's
    stored key or the operator's managed key is added (`tollgate.credentials`)."""
    return await choose_upstream(
        services, request.ctx, gateway, row, options, byok=inbound.provider_key
    )
