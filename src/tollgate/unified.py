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
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode

import orjson
from starlette.types import Receive, Send

from tollgate.canonical import ChatRequest, image_urls_to_fetch, with_fetched_images
from tollgate.client_formats import ClientFormat
from tollgate.credentials import InboundCredentials, split_credentials, upstream_auth
from tollgate.embeddings import gemini_embeddings_call, openai_embeddings_from_gemini
from tollgate.errors import InvalidRequest, NotFound
from tollgate.pipeline import (
    authenticate,
    close_on_disconnect,
    parse_json_object,
    relay,
    resolve_gateway,
)
from tollgate.providers.base import NeedsFetch, ProviderAdapter, UpstreamCall
from tollgate.providers.registry import PROVIDERS, ProviderRow, provider_for_model
from tollgate.providers.select import adapter_for
from tollgate.services import Services
from tollgate.upstream import Upstream, UpstreamResponse, UpstreamStreamBroken

# Anthropic requires max_tokens; until the price catalog knows each model's maximum output,
# a request that sets none gets this many.
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


async def proxy_unified(
    services: Services,
    upstream: Upstream,
    request: UnifiedRequest,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    inbound = split_credentials(request.headers, request.query)
    principal = await authenticate(services, request.account_id, inbound)
    payload = parse_json_object(request.headers, request.body, request.path)
    row, model = route_model(payload.get("model"))
    chat = None if row.wire == request.client.wire else request.client.parse_request(payload)
    await resolve_gateway(services, request.account_id, request.gateway_id, principal, inbound)
    target = services.providers.get(row.slug)
    auth = upstream_auth(row, target, client_key(inbound, request.surface))
    assert target is not None  # upstream_auth refuses a provider without one
    if chat is None:
        payload["model"] = model
        headers = [(k, v) for k, v in inbound.headers if k not in _KEY_HEADERS] + auth
        response = await upstream.send(
            provider=row.slug,
            method="POST",
            url=f"{target.base_url}/{row.api_prefix}{_NATIVE_PATHS[row.wire]}",
            headers=headers,
            body=orjson.dumps(payload),
        )
        await relay(response, receive, send, extra_headers)
        return
    chat = dataclasses.replace(chat, model=model)
    adapter = adapter_for(row.slug)
    call = await build_call(adapter, chat, upstream, services)
    query = f"?{urlencode(dict(call.query))}" if call.query else ""
    response = await upstream.send(
        provider=row.slug,
        method=call.method,
        url=f"{target.base_url}/{row.api_prefix}{call.path}{query}",
        headers=[("content-type", "application/json"), *call.headers.items(), *auth],
        body=call.body,
    )
    await relay_translated(adapter, request.client, chat, response, receive, send, extra_headers)


async def proxy_embeddings(
    services: Services,
    upstream: Upstream,
    request: UnifiedRequest,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """`/compat/embeddings`: relayed to OpenAI-format providers, translated for Gemini."""
    inbound = split_credentials(request.headers, request.query)
    principal = await authenticate(services, request.account_id, inbound)
    payload = parse_json_object(request.headers, request.body, request.path)
    row, model = route_model(payload.get("model"))
    if row.wire == "anthropic":
        raise InvalidRequest(
            f"{row.slug} has no embeddings API; use an openai/ or google-ai-studio/ model.",
            code="unsupported_feature",
            param="model",
        )
    call = gemini_embeddings_call(model, payload) if row.wire == "google" else None
    await resolve_gateway(services, request.account_id, request.gateway_id, principal, inbound)
    target = services.providers.get(row.slug)
    auth = upstream_auth(row, target, client_key(inbound, request.surface))
    assert target is not None
    if call is None:
        payload["model"] = model
        response = await upstream.send(
            provider=row.slug,
            method="POST",
            url=f"{target.base_url}/{row.api_prefix}embeddings",
            headers=[("content-type", "application/json"), *auth],
            body=orjson.dumps(payload),
        )
        await relay(response, receive, send, extra_headers)
        return
    response = await upstream.send(
        provider=row.slug,
        method=call.method,
        url=f"{target.base_url}/{call.path}",
        headers=[("content-type", "application/json"), *auth],
        body=call.body,
    )
    try:
        body = await response.read()
    finally:
        response.release()
    if response.status >= 400:
        info = adapter_for(row.slug).parse_error(response.status, body)
        rendered = request.client.render_error_body(info.status, info.type, info.message)
        await _send_json(send, info.status, orjson.dumps(rendered), extra_headers)
        return
    result = openai_embeddings_from_gemini(model, payload, body)
    await _send_json(send, 200, orjson.dumps(result), extra_headers)


_KEY_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key", "api-key"})


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
    row = PROVIDERS.get(slug)
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


async def relay_translated(
    adapter: ProviderAdapter,
    client: ClientFormat,
    chat: ChatRequest,
    response: UpstreamResponse,
    receive: Receive,
    send: Send,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    if response.status >= 400 or not chat.stream:
        try:
            body = await response.read()
        finally:
            response.release()
        if response.status >= 400:
            info = adapter.parse_error(response.status, body)
            rendered = client.render_error_body(info.status, info.type, info.message)
            status = info.status
        else:
            rendered = client.render_response(adapter.parse_response(response.status, body))
            status = 200
        await _send_json(send, status, orjson.dumps(rendered), extra_headers)
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + extra_headers}
    )
    parser = adapter.stream_parser()
    renderer = client.stream_renderer(chat)
    watcher = asyncio.ensure_future(close_on_disconnect(receive, response))
    try:
        async for chunk in response.chunks():
            out = b"".join([renderer.render(event) for event in parser.feed(chunk)])
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
    except UpstreamStreamBroken:
        pass  # the parser sees an unfinished stream and closes it with an error event
    finally:
        watcher.cancel()
        response.release()
    tail = b"".join([renderer.render(event) for event in parser.close()]) + renderer.close()
    await send({"type": "http.response.body", "body": tail})


async def _send_json(
    send: Send, status: int, body: bytes, extra_headers: list[tuple[bytes, bytes]]
) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
