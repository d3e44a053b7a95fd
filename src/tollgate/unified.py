"""The Unified API: one client format in, any provider out (`/compat/...` and the REST surface).

    authenticate -> parse body -> route `provider/model` -> resolve gateway -> credentials
        -> same wire format?  relay the bytes (only `model` is rewritten)
        -> otherwise          canonical -> provider request -> translate the answer back

A translated stream is re-rendered event by event as chunks arrive; nothing is buffered to
the end. A stream that breaks after it started ends with an in-band error event of the
client's format.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode

import orjson
from starlette.types import Receive, Send

from tollgate.admission import admit
from tollgate.billing.requests import RequestFacts, native_facts
from tollgate.billing.watch import cost_headers
from tollgate.canonical import ChatRequest, Usage, image_urls_to_fetch, with_fetched_images
from tollgate.client_formats import ClientFormat
from tollgate.credentials import (
    InboundCredentials,
    choose_upstream,
    credential_options,
    split_credentials,
    zdr_response_header,
)
from tollgate.embeddings import (
    embedding_inputs,
    gemini_embeddings_call,
    openai_embeddings_from_gemini,
)
from tollgate.errors import AuthenticationFailed, GatewayError, InvalidRequest, NotFound
from tollgate.features.context import RequestContext
from tollgate.features.headers import gateway_headers
from tollgate.features.response_cache import NO_CACHE, CacheUse, cache_options, key_parts
from tollgate.features.retry import NO_RETRIES, RetryPolicy, read_retry_headers, retry_policy
from tollgate.ids import CUSTOM_PROVIDER
from tollgate.pipeline import (
    CUSTOM_PREFIX,
    authenticate,
    enter_gateway,
    parse_json_object,
    resolve_gateway,
)
from tollgate.providers.base import NeedsFetch, ProviderAdapter, UpstreamCall
from tollgate.providers.registry import PROVIDERS, ProviderRow, provider_for_model
from tollgate.providers.select import adapter_for
from tollgate.relay import relay, send_upstream
from tollgate.services import Services, UpstreamTarget
from tollgate.store import GatewayRecord
from tollgate.translate_relay import Translated, relay_translated, send_json
from tollgate.upstream import Upstream

# Anthropic requires max_tokens: a translated request that sets none is sent this many (and its
# hold is for this many, not for the model's whole maximum output).
DEFAULT_MAX_TOKENS = 4096
_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
# Paths of the same-format relay, relative to the provider's API root.
_NATIVE_PATHS = {"openai": "chat/completions", "anthropic": "v1/messages"}


@dataclass(slots=True)
class UnifiedRequest:
    account_id: str
    gateway_id: str
    path: str  # what the client called, for messages
    headers: list[tuple[bytes, bytes]]
    query: bytes
    body: bytes
    client: ClientFormat
    # /compat takes the client's provider key in Authorization; the REST surface's
    # Authorization is the tollgate token, so there the managed key always pays.
    surface: Literal["compat", "rest"]
    ctx: RequestContext
    # The request's `cf-*` headers (`features.headers.gateway_headers`); None: collected here.
    feature_headers: list[tuple[bytes, bytes]] | None = None


@dataclass(slots=True)
class Routed:
    """A Unified API request that passed every check and knows where it goes."""

    inbound: InboundCredentials
    payload: dict[str, object]
    row: ProviderRow
    model: str  # the name the provider knows (no `provider/` prefix)
    target: UpstreamTarget
    auth: list[tuple[str, str]]
    account_id: str
    gateway: GatewayRecord
    unified: bool  # the operator's managed key pays (Unified Billing)
    ctx: RequestContext
    retry: RetryPolicy = NO_RETRIES  # set by `route_request` (tollgate.features.retry)
    cache: CacheUse = NO_CACHE  # set by `route_request` (tollgate.features.response_cache)


async def route_request(
    services: Services, request: UnifiedRequest, check: Callable[[ProviderRow], object]
) -> Routed:
    """authenticate -> parse -> route `provider/model` -> `check` -> gateway -> credentials.

    `check` refuses what the target cannot do (and may parse more) before anything is stored
    or sent: a malformed request never creates the `default` gateway.
    """
    inbound = split_credentials(request.headers, request.query)
    principal = await authenticate(services, request.account_id, inbound)
    if principal is None and client_key(inbound, request.surface) is None:
        # An anonymous caller is allowed only with its own provider key, which pays. The REST
        # surface never uses one, so the account's credits would pay for a stranger: refused.
        raise AuthenticationFailed(
            "Missing tollgate API token: this endpoint bills the account's credits, so it needs "
            "one ('Authorization: Bearer tg_...'). A provider key is not used here.",
            code="missing_token",
        )
    payload = parse_json_object(request.headers, request.body, request.path)
    row, model = route_model(payload.get("model"))
    request.ctx.provider, request.ctx.model = row.slug, model
    check(row)
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
        caching, gateway, "POST", lambda: unified_cache_parts(request, inbound)
    )
    if row.slug.startswith(CUSTOM_PREFIX):
        routed = await _custom_route(services, request, inbound, payload, row, model, gateway)
        routed.retry = retry_policy(retry, gateway.config)
        routed.cache = cache
        return routed
    key = client_key(inbound, request.surface)
    chosen = await choose_upstream(
        services, request.ctx, gateway, row, options, byok=key is not None, client_key=key
    )
    return Routed(
        inbound,
        payload,
        row,
        model,
        UpstreamTarget(row.slug, chosen.base_url, None),  # standard or ZDR (credentials.py)
        chosen.auth,
        request.account_id,
        gateway,
        chosen.unified,
        request.ctx,
        retry_policy(retry, gateway.config),
        cache,
    )


def unified_cache_parts(request: UnifiedRequest, inbound: InboundCredentials) -> list[bytes]:
    """What identifies a Unified API request's answer in the response cache."""
    return key_parts(
        endpoint=f"{request.surface}:{request.path}",
        method="POST",
        query=inbound.query,
        credential=client_key(inbound, request.surface),
        headers=request.headers,
        body=request.body,
    )


async def _custom_route(
    services: Services,
    request: UnifiedRequest,
    inbound: InboundCredentials,
    payload: dict[str, object],
    row: ProviderRow,
    model: str,
    gateway: GatewayRecord,
) -> Routed:
    """`custom-{slug}/model`: the account's own OpenAI-compatible provider and its headers
    (its own credentials, so never Unified Billing)."""
    slug = row.slug.removeprefix(CUSTOM_PREFIX)
    provider = await services.custom_providers.resolve(request.account_id, slug)
    if provider is None or not provider.enable:
        raise NotFound(
            f"The custom provider '{slug}' does not exist in this account or is disabled.",
            code="provider_not_found",
        )
    key = client_key(inbound, request.surface)
    auth = [("authorization", f"Bearer {key}")] if key else list(provider.headers)
    target = UpstreamTarget(row.slug, provider.base_url, None)
    return Routed(
        inbound, payload, row, model, target, auth, request.account_id, gateway, False, request.ctx
    )


async def relay_as_is(
    services: Services,
    upstream: Upstream,
    routed: Routed,
    path: str,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """Same wire format both sides: only `model` is rewritten, the answer is relayed as bytes
    (and observed for usage, as on the native endpoints)."""
    routed.payload["model"] = routed.model
    admitted = await admit(
        services,
        account_id=routed.account_id,
        gateway=routed.gateway,
        row=routed.row,
        facts=native_facts(routed.row.wire, path, routed.payload),
        parsed=routed.payload,
        body=orjson.dumps(routed.payload),
        unified=routed.unified,
        ctx=routed.ctx,
    )
    headers = [(k, v) for k, v in routed.inbound.headers if k not in _KEY_HEADERS]
    response = await send_upstream(
        upstream,
        admitted.watch,
        routed.retry,
        provider=routed.row.slug,
        method="POST",
        url=f"{routed.target.base_url}/{routed.row.api_prefix}{path}",
        headers=headers + routed.auth,
        body=admitted.body,
    )
    response = routed.cache.observe(response)
    extra = extra_headers + admitted.headers
    await relay(response, receive, send, extra, watch=admitted.watch)


async def proxy_unified(
    services: Services,
    upstream: Upstream,
    request: UnifiedRequest,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """Chat in the client's format (OpenAI Chat or Anthropic Messages), any provider out."""
    parsed: list[ChatRequest] = []

    def parse_unless_same_format(row: ProviderRow) -> None:
        if row.wire != request.client.wire:
            parsed.append(request.client.parse_request(payload_of(request)))

    routed = await route_request(services, request, parse_unless_same_format)
    extra_headers = [*extra_headers, zdr_response_header(routed.ctx)]
    if await routed.cache.served(send, extra_headers, routed.ctx):
        return  # a hit: no hold, no ledger entry, no upstream call
    send, extra_headers = routed.cache.capture(send), extra_headers + routed.cache.headers
    if not parsed:
        path = _NATIVE_PATHS[routed.row.wire]
        await relay_as_is(services, upstream, routed, path, receive, send, extra_headers)
        return
    chat = dataclasses.replace(parsed[0], model=routed.model)
    facts = RequestFacts(
        "chat",
        routed.model,
        chat.max_tokens,
        chat.stream,
        chat.include_usage,
        default_output_tokens=DEFAULT_MAX_TOKENS if routed.row.wire == "anthropic" else None,
    )
    admission = await services.meter.admit(
        account_id=routed.account_id,
        gateway=routed.gateway,
        provider=routed.row.slug,
        facts=facts,
        body=request.body,
        unified=routed.unified,
        ctx=routed.ctx,
    )
    if admission.capped_tokens is not None:
        chat = dataclasses.replace(chat, max_tokens=admission.capped_tokens)
        capped = str(admission.capped_tokens).encode()
        extra_headers = [*extra_headers, (b"cf-aig-max-tokens-capped", capped)]
    adapter = adapter_for(routed.row)
    translated = Translated(adapter, request.client, chat, services.meter, admission)
    try:
        call = await build_call(adapter, chat, upstream, services)
    except GatewayError:
        await translated.finish(400, None)  # refused before sending: release the hold
        raise
    query = f"?{urlencode(dict(call.query))}" if call.query else ""
    response = await send_upstream(
        upstream,
        translated,
        routed.retry,
        provider=routed.row.slug,
        method=call.method,
        url=f"{routed.target.base_url}/{routed.row.api_prefix}{call.path}{query}",
        headers=[("content-type", "application/json"), *call.headers.items(), *routed.auth],
        body=call.body,
    )
    response = routed.cache.observe(response)
    await relay_translated(translated, response, receive, send, extra_headers)


async def list_models(
    services: Services,
    request: UnifiedRequest,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """`GET /compat/models`: every priced model as `provider/model`, in OpenAI's list format."""
    inbound = split_credentials(request.headers, request.query)
    if await authenticate(services, request.account_id, inbound) is None:
        # A provider key alone, as on every data-plane route: only on an existing gateway with
        # authentication off (else 401 `missing_token`). Never creates the gateway.
        await resolve_gateway(services, request.account_id, request.gateway_id, None, inbound)
    data = [
        {"id": model.id, "object": "model", "created": 0, "owned_by": model.provider}
        for model in services.catalog.models()
    ]
    await send_json(send, 200, orjson.dumps({"object": "list", "data": data}), extra_headers)


def payload_of(request: UnifiedRequest) -> dict[str, object]:
    # Parsed once more for the canonical form; orjson makes this cheaper than sharing a
    # dict that the same-format path later mutates.
    return parse_json_object(request.headers, request.body, request.path)


async def proxy_responses(
    services: Services,
    upstream: Upstream,
    request: UnifiedRequest,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """`/ai/v1/responses`: OpenAI's Responses API, for OpenAI models (relayed as bytes)."""

    def openai_only(row: ProviderRow) -> None:
        if row.slug != "openai":
            raise InvalidRequest(
                f"The Responses API is available for openai/ models only, not {row.slug}. "
                "Use /ai/v1/chat/completions or /ai/v1/messages for other providers.",
                code="unsupported_feature",
                param="model",
            )

    routed = await route_request(services, request, openai_only)
    extra_headers = [*extra_headers, zdr_response_header(routed.ctx)]
    if await routed.cache.served(send, extra_headers, routed.ctx):
        return
    send, extra_headers = routed.cache.capture(send), extra_headers + routed.cache.headers
    await relay_as_is(services, upstream, routed, "responses", receive, send, extra_headers)


async def proxy_embeddings(
    services: Services,
    upstream: Upstream,
    request: UnifiedRequest,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """`/compat/embeddings`: relayed to OpenAI-format providers, translated for Gemini."""

    def has_embeddings(row: ProviderRow) -> None:
        if row.wire == "anthropic":
            raise InvalidRequest(
                f"{row.slug} has no embeddings API; use an openai/ or google-ai-studio/ model.",
                code="unsupported_feature",
                param="model",
            )
        if row.wire == "google":
            embedding_inputs(payload_of(request))  # refuse bad input before the gateway step

    routed = await route_request(services, request, has_embeddings)
    extra_headers = [*extra_headers, zdr_response_header(routed.ctx)]
    if await routed.cache.served(send, extra_headers, routed.ctx):
        return
    send, extra_headers = routed.cache.capture(send), extra_headers + routed.cache.headers
    if routed.row.wire != "google":
        await relay_as_is(services, upstream, routed, "embeddings", receive, send, extra_headers)
        return
    call = gemini_embeddings_call(routed.model, routed.payload)
    facts = RequestFacts("embeddings", routed.model, 0, False, False)
    admission = await services.meter.admit(
        account_id=routed.account_id,
        gateway=routed.gateway,
        provider=routed.row.slug,
        facts=facts,
        body=request.body,
        unified=routed.unified,
        ctx=routed.ctx,
    )
    chat = ChatRequest(model=routed.model, messages=())
    translated = Translated(
        adapter_for(routed.row), request.client, chat, services.meter, admission
    )
    response = await send_upstream(
        upstream,
        translated,
        routed.retry,
        provider=routed.row.slug,
        method=call.method,
        url=f"{routed.target.base_url}/{call.path}",
        headers=[("content-type", "application/json"), *routed.auth],
        body=call.body,
    )
    response = routed.cache.observe(response)
    try:
        body = await response.read()
    except GatewayError:
        await translated.finish(502, None)
        raise
    finally:
        response.release()
    if response.status >= 400:
        await translated.finish(response.status, None)
        info = translated.adapter.parse_error(response.status, body)
        rendered = request.client.render_error_body(info.status, info.type, info.message)
        await send_json(send, info.status, orjson.dumps(rendered), extra_headers)
        return
    result, estimated = openai_embeddings_from_gemini(routed.model, routed.payload, body)
    tokens = result["usage"]["prompt_tokens"]
    settlement = await translated.finish(
        200, Usage(input_tokens=tokens), len(body), estimated=estimated
    )
    extra = extra_headers + cost_headers(settlement)
    await send_json(send, 200, orjson.dumps(result), extra)


_KEY_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key", "api-key"})


def _custom_row(slug: str) -> ProviderRow | None:
    """An account's custom provider speaks OpenAI's format; its row is made on the fly."""
    if not CUSTOM_PROVIDER.fullmatch(slug):
        return None
    return ProviderRow(slug, "openai", "bearer", None, "", "", "", "max_tokens", key_required=False)


def route_model(model: object) -> tuple[ProviderRow, str]:
    """`provider/model` -> the provider's registry row and the model name it knows."""
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "model is required, as '{provider}/{model}', e.g. 'openai/gpt-4o-mini'.",
            param="model",
        )
    routed = provider_for_model(model)
    if routed is None:
        raise InvalidRequest(
            f"model '{model}' has no provider prefix. Use '{{provider}}/{{model}}', e.g. "
            f"'openai/{model}' or 'anthropic/claude-sonnet-4-6'.",
            code="invalid_model",
            param="model",
        )
    slug, name = routed
    row = PROVIDERS.get(slug) or _custom_row(slug)
    if row is None:
        raise NotFound(
            f"Unknown provider '{slug}' in model '{model}'. Known providers: "
            f"{', '.join(PROVIDERS)}.",
            code="provider_not_found",
        )
    return row, name


def client_key(inbound: InboundCredentials, surface: str) -> str | None:
    """/compat takes the client's own provider key; the REST surface never does."""
    return inbound.provider_key_value if surface == "compat" else None


async def build_call(
    adapter: ProviderAdapter, chat: ChatRequest, upstream: Upstream, services: Services
) -> UpstreamCall:
    """The provider request; fetches image URLs first when the provider needs their bytes."""
    try:
        return adapter.build_request(chat, default_max_tokens=DEFAULT_MAX_TOKENS)
    except NeedsFetch:
        allow_private = services.settings.upstream.allow_private_image_urls
        urls = image_urls_to_fetch(chat)
        fetched = await asyncio.gather(
            *(upstream.fetch_image(url, allow_private=allow_private) for url in urls)
        )
        chat = with_fetched_images(chat, dict(zip(urls, fetched, strict=True)))
        return adapter.build_request(chat, default_max_tokens=DEFAULT_MAX_TOKENS)
